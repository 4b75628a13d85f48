"""The named presets, from a seconds-long `ci` to the Muse paper's sizes, and field overrides.

`get_config(name, **overrides)` returns a preset (default: $MINIMUSE_PRESET, else `laptop`) with fields replaced as
`width=256` or `tokenizer.lr=1e-4`; CLI strings are read as the field's type and then checked by the dataclasses of
config.py. Paper-sized fields cite Muse (Chang et al. 2023, arXiv 2301.00704): §2 Model, §3 and Appendix A for
training; the unstated sizes are derived in docs/MODEL_SIZES.md. Taught in notebooks/00_overview.ipynb.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys

from .config import (Config, ConfigError, DataConfig, DecoderConfig, EditConfig, SampleConfig, SuperResConfig, TextConfig, TokenizerConfig,
                     TrainConfig, TransformerConfig)

# ---------------------------------------------------------------------------------------------------------------------
# Presets. Paper-sized fields cite their source; "derived" marks a value the paper does not state.

_T5XXL = TextConfig(encoder="google/t5-v1_1-xxl", text_dim=4096, max_length=64)  # Muse §2.1: frozen T5-XXL, 4096-d; T derived
_MUSE_TOK = TokenizerConfig(channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,  # f=16 (Muse §2.2); widths derived
                            codebook_size=8192, code_dim=256, commitment=0.25,           # K=8192 (Muse §2.2); code_dim derived
                            disc_weight=0.1, perceptual_weight=0.05, disc_start=20_000,   # Muse App. A
                            lr=1e-4, betas=(0.9, 0.99), batch_size=256, steps=1_000_000, warmup_steps=5000)  # lr, betas: Muse App. A
_MUSE_TRAIN = TrainConfig(steps=1_500_000, batch_size=512, optimizer="adafactor", lr=1e-4,  # Muse Table 4 (1.5M steps), App. A: Adafactor, lr 1e-4, batch 512
                          warmup_steps=5000, min_lr_ratio=0.0, label_smoothing=0.1,         # warmup derived; smoothing from MaskGIT
                          mixed_precision="bf16", log_every=100, ckpt_every=5000, eval_every=20_000)
_MUSE_SAMPLE = SampleConfig(num_steps=24, guidance_schedule="linear", guidance_scale=3.0,   # 24 steps, linear ramp: Muse §2.7-2.8; scale derived
                            choice_temperature=4.5)                                          # MaskGIT's tau

_MUSE_SR = SuperResConfig(
    image_size=512,                                                                     # Muse §2.4: 256 -> 512 px
    tokenizer=dataclasses.replace(_MUSE_TOK, channel_mult=(1, 1, 2, 4)),                # f=8: 64x64 tokens (Muse §2.2)
    transformer=TransformerConfig(width=1024, depth=4, heads=16, mlp_ratio=4.0),         # hidden 1024, MLP 4096 (Muse App. A); depth derived: 268M in blocks, docs/MODEL_SIZES.md
    lowres_depth=16,                                                                    # Muse §2.4: 16-layer low-res encoder
    sample=dataclasses.replace(_MUSE_SAMPLE, num_steps=8, guidance_scale=0.0, temperature=0.0))  # 8 steps: Muse §2.8

# The laptop super-res stage: 8x8 base tokens -> 16x16 high-res tokens, width 128 and depth 4 as the base model; a
# 2-layer low-res encoder learned faster than a 4-layer one at equal steps (docs/SUPERRES.md)
_LAPTOP_SR = SuperResConfig(
    image_size=64,
    tokenizer=TokenizerConfig(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, codebook_size=256, code_dim=32,
                              recon_loss="mse", batch_size=8, steps=3000, lr=2e-3, log_every=50, ckpt_every=500),  # f=4: 64 px -> 16x16 tokens
    transformer=TransformerConfig(width=128, depth=4, heads=4), lowres_depth=2,
    lowres_noise=0.03,  # conditioning augmentation: closes the cascade's count gap, keeps +3.5 dB (docs/SUPERRES.md)
    train=TrainConfig(steps=10_000, batch_size=32, lr=2e-3, warmup_steps=300, min_lr_ratio=0.05, label_smoothing=0.1,
                      mixed_precision="auto", log_every=50, ckpt_every=500, eval_every=1000, eval_prompts=64),
    decoder=DecoderConfig(channels=64, res_blocks=2, steps=3000, batch_size=16, lr=1e-3))  # twice the width and blocks

# The laptop model's sampling (docs/SAMPLING.md): 24 steps (Muse's), guidance 1.0, and the remask rule (ReMDM): each
# step, a committed token competes with the masked ones with probability 0.35. In the empty single shapes the speedrun
# traced, confidence decoding had committed the background first and never revisited it (docs/SPEEDRUN.md); remask
# is ahead on judged faithfulness and behind on FID. The presets whose shipped models and documented results used confidence
# decoding keep it (_LAPTOP_CONFIDENCE).
_LAPTOP_CONFIDENCE = SampleConfig(num_steps=24, guidance_scale=1.0, choice_temperature=1.0)
_LAPTOP_SAMPLE = dataclasses.replace(_LAPTOP_CONFIDENCE, sampler="remask", remask_prob=0.35)

# The previous laptop recipe (AdamW, cosine decay, 9,000 steps: 15 minutes on 2 idle cores, docs/TRAINING.md): the
# `laptop-adamw` preset. The shipped autoregressive baseline, critic and digits models were trained with it.
_LAPTOP_ADAMW = TrainConfig(steps=9_000, batch_size=64, lr=3e-3, warmup_steps=300, min_lr_ratio=0.05, label_smoothing=0.1,
                            mixed_precision="auto", kind_weights=(1, 1, 1, 2, 1.5),
                            log_every=50, ckpt_every=500, eval_every=1000, eval_prompts=160)

PRESETS: dict[str, Config] = {
    "ci": Config(
        name="ci",
        data=DataConfig(image_size=16, pool_size=512),
        tokenizer=TokenizerConfig(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, codebook_size=32, code_dim=8,
                                  fsq_levels=(4, 4, 2), steps=30, batch_size=16, warmup_steps=5, log_every=10, ckpt_every=20),
        transformer=TransformerConfig(width=64, depth=2, heads=2),
        train=TrainConfig(steps=30, batch_size=16, warmup_steps=5, log_every=10, ckpt_every=20, eval_every=0, eval_prompts=8),
        sample=SampleConfig(num_steps=4),
        superres=SuperResConfig(image_size=32,
                                tokenizer=TokenizerConfig(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, codebook_size=32,
                                                          code_dim=8, fsq_levels=(4, 4, 2), steps=30, batch_size=16, warmup_steps=5),
                                transformer=TransformerConfig(width=64, depth=2, heads=2), lowres_depth=1,
                                sample=SampleConfig(num_steps=4, guidance_scale=0.0, temperature=0.0),
                                train=TrainConfig(steps=30, batch_size=16, warmup_steps=5, log_every=10, ckpt_every=20,
                                                  eval_every=0, eval_prompts=8))),
    "laptop": Config(
        name="laptop",
        tokenizer=TokenizerConfig(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, codebook_size=256, code_dim=32,
                                  recon_loss="mse", batch_size=16, steps=3500, lr=2e-3, log_every=50, ckpt_every=500),  # ~12 min on a 2-core CPU (docs/TOKENIZER.md)
        # ~1.2M parameters: on 2 cores small and fast beats big and slow. The speedrun's recipe (docs/SPEEDRUN.md):
        # Muon on the blocks' matrices, warmup-stable-decay at twice the AdamW recipe's peak, 5,000 steps; bf16 where
        # the CPU has it, pairs and mixed captions drawn more often
        transformer=TransformerConfig(width=128, depth=4, heads=4),
        train=dataclasses.replace(_LAPTOP_ADAMW, steps=5_000, optimizer="muon", lr_schedule="wsd", lr=6e-3),
        sample=_LAPTOP_SAMPLE,
        edit=EditConfig(guidance_scale=1.0),  # Muse's 4 (top-k 3) overshoots at this size: 30.5% success after 100 iterations (docs/EDITING.md)
        superres=_LAPTOP_SR),
    # One GPU, about 10 minutes: a 64 px base model on the shipped 64 px tokenizer (laptop's super-res tokenizer,
    # 16x16 tokens), trained with `--tokenizer data/checkpoints/laptop/superres_tokenizer` (docs/GPU.md)
    "gpu": Config(
        name="gpu",
        data=DataConfig(image_size=64, pool_size=50_000),
        tokenizer=_LAPTOP_SR.tokenizer,
        transformer=TransformerConfig(width=512, depth=8, heads=8, qk_norm=True),
        train=TrainConfig(steps=4000, batch_size=256, lr=1e-3, warmup_steps=300, min_lr_ratio=0.05, label_smoothing=0.1,
                          mixed_precision="auto", torch_compile=True, kind_weights=(1, 1, 1, 2, 1.5),
                          log_every=50, ckpt_every=1000, eval_every=1000, eval_prompts=160),
        sample=SampleConfig(num_steps=24, guidance_scale=1.0, choice_temperature=1.0)),
    "gpu-small": Config(
        name="gpu-small",
        data=DataConfig(image_size=128, pool_size=200_000),
        tokenizer=TokenizerConfig(channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=2, codebook_size=1024, code_dim=64,
                                  fsq_levels=(8, 8, 4, 4), disc_weight=0.1, disc_start=10_000, lr=2e-4, steps=50_000,
                                  batch_size=64, ckpt_every=2000),
        transformer=TransformerConfig(width=768, depth=12, heads=12, qk_norm=True),  # 115M parameters (docs/MODEL_SIZES.md)
        train=TrainConfig(steps=100_000, batch_size=256, lr=3e-4, warmup_steps=2000, mixed_precision="bf16",
                          ema_decay=0.9999, ckpt_every=2000, eval_every=5000, eval_prompts=256),
        sample=SampleConfig(num_steps=12, guidance_scale=2.0)),
    "muse-632m": Config(
        name="muse-632m",
        data=DataConfig(image_size=256, pool_size=0),                                    # Muse §2.3: 256 px base
        tokenizer=_MUSE_TOK, text=_T5XXL,
        transformer=TransformerConfig(width=1280, depth=24, heads=20, mlp_ratio=4.0, qk_norm=True),  # derived: 656M total, 630M in blocks; docs/MODEL_SIZES.md
        train=_MUSE_TRAIN, sample=_MUSE_SAMPLE),
    "muse-3b": Config(
        name="muse-3b",
        data=DataConfig(image_size=256, pool_size=0),
        tokenizer=_MUSE_TOK, text=_T5XXL,
        transformer=TransformerConfig(width=2048, depth=48, heads=32, mlp_ratio=4.0, qk_norm=True),  # Muse App. A: 48 layers, 2048, MLP 8192; heads derived
        train=_MUSE_TRAIN, sample=_MUSE_SAMPLE),
    "muse-superres-268m": Config(
        name="muse-superres-268m",
        data=DataConfig(image_size=256, pool_size=0),
        tokenizer=_MUSE_TOK, text=_T5XXL,
        transformer=TransformerConfig(width=1280, depth=24, heads=20, qk_norm=True),      # the 632M base it upsamples
        train=_MUSE_TRAIN, sample=_MUSE_SAMPLE, superres=_MUSE_SR),
}


PRESETS["laptop-adamw"] = dataclasses.replace(PRESETS["laptop"], name="laptop-adamw", train=_LAPTOP_ADAMW,
                                              sample=_LAPTOP_CONFIDENCE)

# The autoregressive baseline (autoregressive.py) at the laptop model's width and depth, trained by the same loop on
# the same batches, steps and learning rate: equal compute (docs/AUTOREGRESSIVE.md). No super-res stage.
# Its sampling defaults were chosen on a selection set of held-out prompts apart from the reported one (guidance 0/1/2 x
# top-k 0..20 x temperature 1/0.7, docs/AUTOREGRESSIVE.md): at temperature 1 over the full softmax it draws 22%.
PRESETS["laptop-ar"] = dataclasses.replace(
    PRESETS["laptop"], name="laptop-ar", superres=None,
    transformer=dataclasses.replace(PRESETS["laptop"].transformer, kind="autoregressive"), train=_LAPTOP_ADAMW,
    sample=SampleConfig(guidance_scale=2.0, top_k=5, temperature=0.7))

# Token-Critic (critic.py) for the laptop model: half its depth; trained on the shipped generator's samples with the
# same batches (`minimuse train-critic --generator data/checkpoints/laptop`). BCE has no label smoothing.
PRESETS["laptop-critic"] = dataclasses.replace(
    PRESETS["laptop"], name="laptop-critic", superres=None,
    transformer=TransformerConfig(width=128, depth=2, heads=4, kind="critic"),
    train=dataclasses.replace(_LAPTOP_ADAMW, steps=3000, warmup_steps=200, label_smoothing=0.0, eval_every=0),
    sample=_LAPTOP_CONFIDENCE)

# Nouns pixel characters (nouns.py), trained from scratch through the real-data path: `dataset --source nouns`,
# `train-tokenizer --data`, `pretokenize`, `train --data` (docs/NOUNS.md). 4x4 px per token loses the accessories
# whatever the codebook size, so 2x2 px: a 16x16 grid of 1,024 codes (measured in docs/NOUNS.md). 256 image tokens
# make a step dearer, so 2,000 steps: what fits 45 minutes with the tokenizer. The training recipe is laptop's
# (Muon, warmup-stable-decay at 6e-3), which beat the AdamW recipe at the same 2,000 steps on the body, the accessory
# and the head (docs/NOUNS.md). The longest canonical caption is 39 MiniLM tokens, [CLS] and [SEP] included.
# A caption names exactly one character, so sampling wants the likeliest tokens: temperature 0.3, chosen on held-out
# characters apart from the reported ones (all five parts right 58.2% at 1.0, 68.4% at 0.3; docs/NOUNS.md).
PRESETS["nouns"] = dataclasses.replace(
    PRESETS["laptop"], name="nouns", superres=None, text=TextConfig(max_length=40),
    tokenizer=dataclasses.replace(PRESETS["laptop"].tokenizer, channel_mult=(1, 2), codebook_size=1024),
    train=dataclasses.replace(PRESETS["laptop"].train, steps=2000, kind_weights=(), eval_every=0),
    sample=dataclasses.replace(_LAPTOP_CONFIDENCE, temperature=0.3))


def get_config(name: str | None = None, **overrides) -> Config:
    """Return the preset `name` (default: $MINIMUSE_PRESET, else 'laptop') with overrides applied.

    Overrides name a field as `section.field` (`tokenizer.lr=1e-4`) or, where unambiguous, by its bare name
    (`width=256`). Unknown presets and fields raise ConfigError listing the valid names.
    """
    name = name or os.environ.get("MINIMUSE_PRESET") or "laptop"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    for key, value in overrides.items():
        cfg = apply_override(cfg, key, value)
    return cfg


# old spellings of fields that moved, still accepted with a one-line notice: the new path of each
RENAMED = {f"superres.{name}": f"superres.sample.{name}" for name in ("num_steps", "guidance_scale", "temperature")}


def apply_override(cfg: Config, key: str, value) -> Config:
    """Set one field, `section.field` or a bare field name that exists in exactly one section."""
    if key in RENAMED:
        print(f"minimuse: warning: {key} is deprecated; use {RENAMED[key]}", file=sys.stderr)
        key = RENAMED[key]
    path = key.split(".") if "." in key else _resolve_bare(cfg, key)
    try:
        return _replace_path(cfg, path, value, key)
    except ConfigError as e:  # a nested section's check names it as its own ('sample.num_steps'): name it as set
        short, full = ".".join(path[-2:]), ".".join(path)
        if full != short and f"'{short}'" in str(e):
            raise ConfigError(str(e).replace(f"'{short}'", f"'{full}'")) from None
        raise


def _resolve_bare(cfg: Config, key: str) -> list[str]:
    if key in {f.name for f in dataclasses.fields(Config)} and key != "name":
        raise ConfigError(f"'{key}' is a section; override one of its fields as '{key}.FIELD'")
    hits = [s for s in ("data", "tokenizer", "text", "transformer", "train", "sample")
            if key in {f.name for f in dataclasses.fields(getattr(cfg, s))}]
    if key == "name":
        return ["name"]
    if not hits:
        raise ConfigError(f"unknown config field '{key}'; valid fields: {', '.join(all_fields())}")
    if len(hits) > 1:
        raise ConfigError(f"field '{key}' is ambiguous; write one of: {', '.join(f'{s}.{key}' for s in hits)}")
    return [hits[0], key]


def _replace_path(obj, path: list[str], value, key: str):
    names = {f.name: f for f in dataclasses.fields(obj)}
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config field '{key}'; valid fields here: {', '.join(names)}")
    if len(path) == 1:
        return dataclasses.replace(obj, **{head: _coerce(getattr(obj, head), value, key)})
    child = getattr(obj, head)
    if child is None or not dataclasses.is_dataclass(child):
        raise ConfigError(f"config field '{key}': '{head}' has no sub-fields in this preset")
    return dataclasses.replace(obj, **{head: _replace_path(child, path[1:], value, key)})


def _coerce(current, value, key: str):
    """Turn CLI strings ('256', '1e-4', 'true', '8,8,4') into the type of the current value."""
    if not isinstance(value, str) or isinstance(current, str) or current is None:
        return tuple(value) if isinstance(value, list) else value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            v = float(value)
            if not math.isfinite(v):
                raise ConfigError(f"config field '{key}': must be a finite number, got {value!r}")
            return v
        if isinstance(current, tuple):
            kind = type(current[0]) if current else float  # an empty default (train.kind_weights) holds numbers
            return tuple(kind(v) for v in value.split(",") if v)
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"config field '{key}': cannot read {value!r} as {type(current).__name__}") from None
    return value


def all_fields() -> list[str]:
    """Every overridable field as section.field."""
    return [f"{s}.{f.name}" for s, cls in (("data", DataConfig), ("tokenizer", TokenizerConfig), ("text", TextConfig),
                                          ("transformer", TransformerConfig), ("train", TrainConfig), ("sample", SampleConfig))
            for f in dataclasses.fields(cls)]
