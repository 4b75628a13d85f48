"""Upper bounds on config fields, and the parameter memory a config's models need, known before they are built.

A config.json (a downloaded checkpoint's, a training state's) or a `--set` is read before anything is allocated, so a
tampered or mistyped `mlp_ratio=1e9` or `tokenizer.channels=2**34` must fail there in one line, not in the kernel's
OOM killer. Two guards:
- `FIELD_MAX`: every numeric field's largest plausible value, checked by config.py's dataclasses as they are built.
  The bounds are generous (the Muse paper's presets, muse-3b and muse-superres-268m, sit far inside them);
- `check_param_memory`: the fp32 parameters (and buffers) of the transformer(s) and tokenizer(s) a config describes,
  counted from the config with the formulas of transformer.py, superres.py and tokenizer.py (the test suite holds
  them equal to the built models), refused above the machine's total memory with both numbers in the message.
Nothing here imports torch: the count is arithmetic on the config.
"""
from __future__ import annotations

import dataclasses
import math
import os


class ConfigError(ValueError):
    """A preset name, an override or a combination of fields that cannot work."""


# Ceilings on the CLI's counts that no config check would stop: far above them is a typo that runs for days
MAX_DATASET_N = 1_000_000   # images per `minimuse dataset`; more is a typo, not a plan
MAX_DATASET_SIZE = 1024     # pixels; shapes are drawn at 4x supersampling, so 1024 px is already 16M sub-pixels
MAX_EVAL_N = 100_000        # eval --n (per caption kind), --tokenizer-n, sweep --n, finetune-decoder --eval-n
MAX_SWEEP_SEEDS = 1_000     # sweep --seeds: prompt seeds per point, each n prompts per kind
MAX_BENCH_STEPS = 1_000     # bench --steps: Muse samples in 24; the sampler config allows 4096 on any grid
MAX_BENCH_REPEATS = 1_000   # bench --repeats: timings per point; the median settles long before
MAX_BENCH_BATCH = 4_096     # bench --batch-sizes: images per timed call
MAX_BENCH_TOKENS = 4_096    # bench --tokens: a 64x64 grid, 4x the 1024 tokens of Muse's 256 px base model
MAX_ENLARGE = 32            # generate --enlarge: a 32 px image becomes a 1024 px PNG

STEPS_MAX = 100_000_000  # steps and intervals: 100M steps is 65 times the paper's 1.5M
SEED_MAX = 2**32 - 1     # numpy's seeds are 32-bit
BATCH_MAX = 65_536
LR_MAX = 10.0

# section.field -> largest value (inclusive). For a tuple field the bound holds for each of its entries.
FIELD_MAX = {
    "data.image_size": 4096, "data.train_seed": SEED_MAX, "data.eval_seed": SEED_MAX,
    "data.pool_size": 10_000_000,            # pre-tokenized images held in memory (gpu-small: 200k)
    "tokenizer.channels": 2048, "tokenizer.channel_mult": 64, "tokenizer.num_res_blocks": 32,
    "tokenizer.decoder_channels": 4096, "tokenizer.decoder_res_blocks": 32,
    "tokenizer.codebook_size": 2**20,        # Muse: 8192; shard ids are int32 beyond 2**15
    "tokenizer.code_dim": 4096, "tokenizer.fsq_levels": 2**16, "tokenizer.commitment": 100.0,
    "tokenizer.dead_code_threshold": 1e6, "tokenizer.disc_weight": 100.0, "tokenizer.disc_start": STEPS_MAX,
    "tokenizer.perceptual_weight": 100.0, "tokenizer.steps": STEPS_MAX, "tokenizer.batch_size": BATCH_MAX,
    "tokenizer.lr": LR_MAX, "tokenizer.warmup_steps": STEPS_MAX, "tokenizer.log_every": STEPS_MAX,
    "tokenizer.ckpt_every": STEPS_MAX,
    "text.text_dim": 16_384, "text.max_length": 8192,  # T5-XXL: 4096-d
    "transformer.width": 16_384, "transformer.depth": 512, "transformer.heads": 512, "transformer.mlp_ratio": 64.0,
    "train.steps": STEPS_MAX, "train.batch_size": BATCH_MAX, "train.lr": LR_MAX, "train.warmup_steps": STEPS_MAX,
    "train.weight_decay": 10.0, "train.grad_clip": 1e6, "train.kind_weights": 1e6, "train.grad_accum": BATCH_MAX,
    "train.seed": SEED_MAX, "train.log_every": STEPS_MAX, "train.ckpt_every": STEPS_MAX,
    "train.eval_every": STEPS_MAX, "train.eval_prompts": 100_000,
    "edit.num_iters": 100_000,
    "superres.decoder.channels": 4096, "superres.decoder.res_blocks": 32, "superres.decoder.steps": STEPS_MAX,
    "superres.decoder.batch_size": BATCH_MAX, "superres.decoder.lr": LR_MAX,
    "superres.image_size": 8192, "superres.lowres_depth": 512,
}
# Numeric fields with no upper bound, on purpose: bounded in [0, 1] or by MAX_STEPS in config.py already, or
# sampling strengths that cost no memory and draw (or report a non-finite overflow) at any finite value
# (tests/test_properties.py holds guidance 1e300 and top_k 2**62 as valid).
UNBOUNDED = {"data.paraphrase_prob", "tokenizer.ema_decay", "tokenizer.betas", "transformer.dropout", "train.min_lr_ratio", "train.decay_fraction",
             "train.betas", "train.ema_decay", "train.ema_start", "train.label_smoothing", "train.min_mask_rate", "train.rect_mask_prob",
             "train.cond_drop_prob", "sample.num_steps", "sample.guidance_scale", "sample.choice_temperature",
             "sample.temperature", "sample.top_k", "sample.remask_prob", "edit.resample_frac", "edit.guidance_scale",
             "edit.top_k", "superres.lowres_noise"}

BYTES_PER_VALUE = 4  # every model is built in fp32; bf16 autocast keeps fp32 master weights


def total_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ---------------------------------------------------------------------------------------- counts, as the models
def _linear(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def block_numel(t, cross: bool = True) -> int:
    """transformer.Block: self-attention, cross-attention (if `cross`), MLP and their LayerNorms."""
    D, Dh = t.width, t.width // t.heads
    qk = 4 * Dh if t.qk_norm else 0
    n = (6 if cross else 4) * D + _linear(D, 3 * D) + _linear(D, D) + qk
    if cross:
        n += _linear(D, D) + _linear(D, 2 * D) + _linear(D, D) + qk
    hidden = int(t.mlp_ratio * D)
    return n + _linear(D, hidden) + _linear(hidden, D)


def transformer_numel(t, codebook_size: int, grid, text_dim: int) -> int:
    """transformer.MaskedTransformer (the autoregressive one is the same; the critic's head is smaller)."""
    D, (h, w) = t.width, grid
    return ((codebook_size + 1) * D + (h + w) * D + _linear(text_dim, D) + 2 * D + t.depth * block_numel(t)
            + 2 * D + _linear(D, codebook_size))


def superres_numel(cfg) -> int:
    """superres.SuperResTransformer: a transformer over the high-res grid plus the low-res encoder."""
    sr = cfg.superres
    t, D = sr.transformer, sr.transformer.width
    s = sr.image_size // sr.tokenizer.downsample
    h, w = cfg.grid
    return (transformer_numel(t, sr.tokenizer.codebook_size, (s, s), cfg.text.text_dim)
            + cfg.tokenizer.codebook_size * D + (h + w) * D + sr.lowres_depth * block_numel(t, cross=False)
            + _linear(D, D) + 2 * D)


def _resblock(c_in: int, c_out: int) -> int:
    return 2 * c_in + _conv(c_in, c_out, 3) + 2 * c_out + _conv(c_out, c_out, 3) + (_conv(c_in, c_out, 1) if c_in != c_out else 0)


def tokenizer_numel(tok) -> int:
    """tokenizer.Tokenizer: encoder, decoder and quantizer, buffers included (the VQ codebook's EMA)."""
    dim = tok.code_dim if tok.quantizer == "vq" else len(tok.fsq_levels)
    n = tok.codebook_size * dim * (2 if tok.ema_decay > 0 else 1) + tok.codebook_size if tok.quantizer == "vq" else dim
    ch = [tok.channels * m for m in tok.channel_mult]
    n += _conv(3, ch[0], 3)
    c_in = ch[0]
    for i, c in enumerate(ch):
        for _ in range(tok.num_res_blocks):
            n, c_in = n + _resblock(c_in, c), c
        n += _conv(c, c, 3) if i < len(ch) - 1 else 0
    n += _resblock(c_in, c_in) + 2 * c_in + _conv(c_in, dim, 1)
    ch = [(tok.decoder_channels or tok.channels) * m for m in tok.channel_mult]
    c_in = ch[-1]
    n += _conv(dim, c_in, 3) + _resblock(c_in, c_in)
    for i in reversed(range(len(ch))):
        for _ in range(tok.decoder_res_blocks or tok.num_res_blocks):
            n, c_in = n + _resblock(c_in, ch[i]), ch[i]
        n += _conv(c_in, c_in, 3) if i > 0 else 0
    return n + 2 * c_in + _conv(c_in, 3, 3)


def config_numel(cfg, parts) -> dict[str, int]:
    """{part: parameter count} for the named parts of a Config: tokenizer, transformer, superres, superres_tokenizer."""
    count = {"tokenizer": lambda: tokenizer_numel(cfg.tokenizer),
             "transformer": lambda: transformer_numel(cfg.transformer, cfg.tokenizer.codebook_size, cfg.grid, cfg.text.text_dim),
             "superres": lambda: superres_numel(cfg),
             "superres_tokenizer": lambda: tokenizer_numel(cfg.superres.tokenizer)}
    return {p: count[p]() for p in parts if cfg.superres is not None or not p.startswith("superres")}


def _size(n: float) -> str:
    unit = 0
    while n >= 1024 and unit < 5:
        n, unit = n / 1024, unit + 1
    return f"{n:.1f} {('bytes', 'KB', 'MB', 'GB', 'TB', 'PB')[unit]}"


def check_param_memory(counts: dict[str, int], source: str) -> None:
    """Refuse models whose fp32 parameters alone exceed this machine's memory: building them would only end in the
    OOM killer (or a swap storm) after minutes. `source` names the config (a checkpoint's file, a preset)."""
    need, have = sum(counts.values()) * BYTES_PER_VALUE, total_memory()
    if need > have:
        parts = ", ".join(f"{k} {v:,}" for k, v in counts.items())
        raise ConfigError(f"{source}: its models need {_size(need)} for their fp32 parameters alone ({parts} values), "
                          f"more than this machine's {_size(have)} of memory; lower transformer.width, "
                          "transformer.depth, transformer.mlp_ratio, tokenizer.channels or tokenizer.codebook_size")


def check_config_memory(cfg, parts, source: str) -> None:
    """check_param_memory for the named parts of a Config (see config_numel)."""
    check_param_memory(config_numel(cfg, parts), source)


def within_bound(name: str, value) -> bool:
    """Whether `value` (each entry of a tuple) lies at or below the bound of field `name`; types are checked apart."""
    hi = FIELD_MAX.get(name)
    if hi is None or isinstance(value, bool):
        return True
    values = value if isinstance(value, tuple) else (value,)
    return all(not isinstance(v, (int, float)) or (math.isfinite(v) and v <= hi) for v in values)


# ------------------------------------------------------------------------- the checks config.py's dataclasses run
def check_field(ok: bool, name: str, msg: str):
    if not ok:
        raise ConfigError(f"invalid config field '{name}': {msg}")


# Error messages name a field as section.field; the section of a dataclass is known by its class name.
_SECTIONS = {"DataConfig": "data.", "TokenizerConfig": "tokenizer.", "TextConfig": "text.", "TransformerConfig": "transformer.",
             "TrainConfig": "train.", "SampleConfig": "sample.", "EditConfig": "edit.", "SuperResConfig": "superres.",
             "DecoderConfig": "superres.decoder."}


def is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_types(obj) -> None:
    """Every field holds the type of its default (an int where a float is expected is fine): a string or None
    where a number belongs fails here, naming the field, not deep inside torch. Numbers also stay below their
    upper bound in FIELD_MAX."""
    section = _SECTIONS.get(type(obj).__name__, "")
    for f in dataclasses.fields(obj):
        v, default = getattr(obj, f.name), f.default
        name = f"{section}{f.name}"
        if isinstance(default, bool):
            check_field(isinstance(v, bool), name, f"must be true or false, got {v!r}")
        elif isinstance(default, int):
            check_field(isinstance(v, int) and not isinstance(v, bool), name, f"must be an integer, got {v!r}")
        elif isinstance(default, float):
            check_field(is_finite_number(v), name, f"must be a finite number, got {v!r}")
        elif isinstance(default, str):
            check_field(isinstance(v, str), name, f"must be a string, got {v!r}")
        elif isinstance(default, tuple):
            check_field(isinstance(v, tuple), name, f"must be a list, got {v!r}")
        if name in FIELD_MAX:  # before any model is built from it: a tampered 2**34 fails here, not in the allocator
            check_field(within_bound(name, v), name, f"must be at most {FIELD_MAX[name]:,}, got {v!r} (a larger value is a "
                                                "typo or a tampered config)")


def check_positive(obj, *names: str) -> None:
    for n in names:
        check_field(getattr(obj, n) >= 1, f"{_SECTIONS.get(type(obj).__name__, '')}{n}", f"must be at least 1, got {getattr(obj, n)}")


def check_within(obj, name: str, lo: float, hi: float, hi_open: bool = False) -> None:
    v = getattr(obj, name)
    ok = lo <= v < hi if hi_open else lo <= v <= hi
    check_field(ok, f"{_SECTIONS.get(type(obj).__name__, '')}{name}", f"must lie in [{lo}, {hi}{')' if hi_open else ']'}, got {v}")
