"""A tiny pipeline checkpoint of random-initialised `ci` models, for tests that need something to load."""
from pathlib import Path

import torch

from minimuse.presets import get_config
from minimuse.tokenizer import Tokenizer
from minimuse.transformer import MaskedTransformer


def make_tiny_pipeline(root: Path, cfg=None) -> Path:
    """root/tokenizer + root/transformer, random-initialised from seed 0: loads like a trained checkpoint, in a second."""
    cfg = cfg or get_config("ci")
    torch.manual_seed(0)
    Tokenizer(cfg.tokenizer).save_pretrained(root / "tokenizer", cfg)
    MaskedTransformer.from_config(cfg).save_pretrained(root / "transformer", cfg)
    return root
