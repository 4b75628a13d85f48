"""minimuse: a small, readable reference implementation of Muse (Chang et al. 2023).

Text-to-image with a masked generative transformer: a VQ/FSQ image tokenizer, a frozen pretrained
text encoder, a bidirectional transformer trained to predict masked image tokens, and MaskGIT's
parallel decoding. Start with notebooks/00_overview.ipynb.
"""
from .config import Config, ConfigError
from .presets import PRESETS, get_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "PRESETS", "get_config", "load_pipeline"]


def load_pipeline(checkpoint=None, **kwargs):
    """Load the text-to-image pipeline (pipeline.load_pipeline); defaults to the checkpoints shipped in data/."""
    from .pipeline import load_pipeline as _load  # local: `import minimuse` stays free of torch until a model is asked for
    return _load(checkpoint, **kwargs)
