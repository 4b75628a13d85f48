"""The text-to-image pipeline: prompt -> frozen LM -> sampler -> tokenizer.decode -> uint8 images.

Glue only (DESIGN §4): it loads the three trained parts from a checkpoint directory (`tokenizer/`,
`transformer/`), encodes the prompts, calls the written-out loop in sampler.py, and decodes. Every sampling
feature is a named argument whose default is the checkpoint's measured best (its SampleConfig).
Taught in notebooks/06_sampling.ipynb.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, read_config
from .config import Config, SampleConfig
from .sampler import sample
from .text_encoder import TextEncoder
from .tokenizer import Tokenizer
from .transformer import MaskedTransformer
from .viz import history_strip, to_uint8, upscale

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "laptop"


class MusePipeline:
    def __init__(self, config: Config, tokenizer: Tokenizer, text_encoder: TextEncoder, transformer: MaskedTransformer):
        self.config, self.tokenizer, self.text_encoder, self.transformer = config, tokenizer.eval(), text_encoder, transformer.eval()

    @property
    def mask_id(self) -> int:
        return self.transformer.mask_id

    def __call__(self, prompts, num_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                 return_history: bool = False, sampler: str | None = None, negative_prompt: str | None = None,
                 schedule: str | None = None, guidance_schedule: str | None = None, choice_temperature: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, generator: torch.Generator | None = None,
                 precision: str = "fp32"):
        """Draw one image per prompt. Returns uint8 (B, H, W, 3), and the per-step history if asked.

        precision="bf16" runs the transformer under bf16 autocast: 1.3x faster for the laptop model on a CPU with
        AVX-512 bf16, 1.7x at width 256, with faithfulness within noise (docs/BENCHMARKS.md); fp32 is the default
        because it is bit-reproducible across machines."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}; choose one of: fp32, bf16")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("empty prompt; write what to draw, e.g. 'two red circles' (the empty string is the model's unconditional input)")
        s = self.settings(num_steps=num_steps, guidance_scale=guidance_scale, sampler=sampler, schedule=schedule,
                          guidance_schedule=guidance_schedule, choice_temperature=choice_temperature,
                          temperature=temperature, top_k=top_k)
        B = len(prompts)
        text, text_mask = self.text_encoder(prompts)                                       # (B, T, E), (B, T)
        uncond = self.text_encoder([""] * B) if s.guidance_scale != 0 else (None, None)
        negative = self.text_encoder([negative_prompt] * B) if negative_prompt else (None, None)
        generator = generator or torch.Generator().manual_seed(seed)
        with torch.autocast(text.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = sample(self.transformer, text, text_mask, uncond[0], uncond[1],
                         negative_emb=negative[0], negative_mask=negative[1],
                         num_steps=s.num_steps, schedule=s.schedule, sampler=s.sampler,
                         guidance_scale=s.guidance_scale, guidance_schedule=s.guidance_schedule,
                         choice_temperature=s.choice_temperature, temperature=s.temperature, top_k=s.top_k,
                         generator=generator, return_history=return_history)
        ids, history = out if return_history else (out, None)
        with torch.inference_mode():
            images = to_uint8(self.tokenizer.decode(ids))                                  # (B, H, W, 3)
        return (images, history) if return_history else images

    def settings(self, **overrides) -> SampleConfig:
        """The checkpoint's sampling defaults with any non-None override applied (validated by SampleConfig)."""
        import dataclasses
        return dataclasses.replace(self.config.sample, **{k: v for k, v in overrides.items() if v is not None})


def load_pipeline(checkpoint=None, config: Config | None = None) -> MusePipeline:
    """Load `checkpoint` (a directory with tokenizer/ and transformer/), default: the shipped laptop model."""
    root = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if not (root / "transformer").is_dir() or not (root / "tokenizer").is_dir():
        raise CheckpointError(f"no pipeline checkpoint at {root}: expected the folders tokenizer/ and transformer/ "
                              "(train one with `minimuse train --preset laptop`)")
    saved = Config.from_dict(read_config(root / "transformer", "transformer")["config"])
    transformer = MaskedTransformer.from_pretrained(root / "transformer", config)
    tokenizer = Tokenizer.from_pretrained(root / "tokenizer", saved)
    if tokenizer.codebook_size != transformer.codebook_size:
        raise CheckpointError(f"{root}: tokenizer has K={tokenizer.codebook_size} codes but the transformer predicts {transformer.codebook_size}")
    return MusePipeline(config or saved, tokenizer, TextEncoder(saved.text), transformer)


def generate_cli(prompts: list[str], checkpoint, out=None, out_dir=None, history=None, batch_size: int = 64,
                 upscale_factor: int = 1, **sampling) -> list[Path]:
    """What `minimuse generate` does: one PNG per prompt, in order, plus an optional per-step strip."""
    from PIL import Image
    pipe = load_pipeline(checkpoint)
    limit = pipe.config.text.max_length
    tok = pipe.text_encoder.tokenizer
    for p in prompts:
        n = len(tok(p)["input_ids"])
        if n > limit:
            import warnings
            warnings.warn(f"prompt is {n} tokens, longer than the encoder's limit of {limit}; it is truncated", stacklevel=2)
    paths, seed = [], sampling.pop("seed", 0)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        want = bool(history) and start == 0
        images, hist = pipe(chunk, seed=seed + start, return_history=True, **sampling) if want else (pipe(chunk, seed=seed + start, **sampling), None)
        for i, img in enumerate(images):
            path = Path(out_dir) / f"{start + i:03d}.png" if out_dir else Path(out or "out.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(upscale(img, upscale_factor)).save(path, format="PNG")
            paths.append(path)
        if want:
            Path(history).parent.mkdir(parents=True, exist_ok=True)
            history_strip(hist, pipe.tokenizer, pipe.mask_id, index=0).save(history, format="PNG")
    for p in paths[:3]:
        print(f"wrote {p}")
    if len(paths) > 3:
        print(f"... and {len(paths) - 3} more")
    if history:
        print(f"wrote {history}")
    return paths

