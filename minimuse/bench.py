"""Speed: ms per image, tokens/s and achieved GFLOP/s of the sampler, against this machine's matmul peak.

Muse's case for parallel decoding (§1, Table 5: 0.5 s per image against Parti's 6.4 s) is speed, so minimuse
measures it rather than assuming it: the matmul peak (fp32 and bf16: the best over square sizes, torch's two CPU GEMM
backends and the model's own GEMM shapes, `peak.honest_peak`) is measured in the same run, FLOPs of a sampling call are
counted by torch's FlopCounterMode (not estimated). `compare_ar` times parallel decoding against the cached
autoregressive baseline of equal size (autoregressive.py) at 64, 256 and 1024 tokens. `minimuse bench` prints the
JSON; docs/BENCHMARKS.md and docs/AUTOREGRESSIVE.md record it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import time

import torch

from .autoregressive import ARTransformer, generate
from .checkpoint import read_config
from .config import Config, SampleConfig
from .limits import check_config_memory
from .peak import count_flops, honest_peak
from .sampler import sample
from .superres import SuperResTransformer
from .transformer import MaskedTransformer


def _timed(fn, repeats: int) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def run_bench(cfg: Config, checkpoint=None, batch_sizes=(1, 16), steps=(8, 12, 24), repeats: int = 3,
              threads: int | None = None, text_tokens: int = 16, precision: str = "fp32",
              peak_repeats: int = 5, peak_sizes=(256, 512, 1024, 2048, 3072)) -> dict:
    """Time the sampler of `cfg` (random-initialised, or the trained one in `checkpoint`) at every batch size and step
    count, with and without guidance. Text is random (B, text_tokens, E) and the unconditional text one row of 2
    tokens, the length of the empty prompt: the encoder runs once per prompt and is not part of the decoding loop.
    Every fraction of peak is against `honest_peak` of the precision timed, measured in the same run."""
    if threads:
        torch.set_num_threads(threads)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    torch.manual_seed(0)
    if checkpoint is not None:
        transformer = MaskedTransformer.from_pretrained(os.path.join(checkpoint, "transformer"))
    else:
        check_config_memory(cfg, ("transformer",), f"config '{cfg.name}'")
        transformer = MaskedTransformer.from_config(cfg)
    transformer.eval()
    E, L = transformer.text_dim, transformer.grid[0] * transformer.grid[1]
    rows = 2 * max(batch_sizes) * L  # the largest forward timed: the biggest batch, doubled by guidance
    peaks = {name: honest_peak(transformer, rows, dtype, peak_repeats, peak_sizes)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    peak = peaks[precision]["gflops"]
    result = {
        "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "peak": peaks},
        "model": {"preset": cfg.name, "params": transformer.num_params(), "width": transformer.cfg.width,
                  "depth": transformer.cfg.depth, "heads": transformer.cfg.heads, "grid": list(transformer.grid),
                  "codebook_size": transformer.codebook_size, "text_tokens": text_tokens,
                  "checkpoint": str(checkpoint) if checkpoint else None},
        "precision": precision, "peak_gflops": peak, "runs": []}
    for B in batch_sizes:
        text = torch.randn(B, text_tokens, E)
        text_mask = torch.ones(B, text_tokens, dtype=torch.bool)
        uncond = torch.randn(1, 2, E)  # "" is [CLS][SEP]
        for T in steps:
            for guidance in (0.0, cfg.sample.guidance_scale or 1.5):
                settings = SampleConfig(num_steps=T, guidance_scale=guidance, guidance_schedule=cfg.sample.guidance_schedule,
                                        choice_temperature=cfg.sample.choice_temperature)
                def call():
                    g = torch.Generator().manual_seed(0)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        return sample(transformer, (text, text_mask), settings, uncond=(uncond, None),
                                      generator=g)
                sec = _timed(call, repeats)
                flops = count_flops(call)
                result["runs"].append({
                    "batch": B, "steps": T, "guidance": guidance, "ms_per_image": round(1000 * sec / B, 2),
                    "tokens_per_s": round(B * L / sec, 1), "gflop_per_image": round(flops / B / 1e9, 4),
                    # 4 significant figures, not decimals: a tiny model under load runs well under 1 GFLOP/s
                    "achieved_gflops": float(f"{flops / sec / 1e9:.4g}"), "fraction_of_peak": float(f"{flops / sec / 1e9 / peak:.4g}")})
    if cfg.superres is not None:
        result["cascade"] = cascade_bench(cfg, transformer, checkpoint, batch_sizes, repeats, text_tokens, precision)
    return result


def compare_ar(cfg: Config, tokens=(64, 256, 1024), batch_sizes=(1, 16), repeats: int = 3, text_tokens: int = 16,
               checkpoints: dict | None = None, device="cpu") -> list[dict]:
    """Latency of Muse's parallel decoding (cfg.sample's steps, schedule and guidance) against the cached
    autoregressive model of the same width and depth (L passes, the same guidance), per image, at every token count
    (a square grid) and batch size, interleaved: each repetition times both, and the medians are kept. Random weights
    (the time does not depend on them) unless `checkpoints` {"masked": dir, "autoregressive": dir} gives trained
    models of that grid. A pass is one forward of the guided batch (2B rows): parallel_passes = steps,
    autoregressive_passes = L; each parallel pass runs all L tokens, each autoregressive pass one token per row.
    On a CUDA `device` every timed call ends with a synchronize, so the clock sees the kernels, not their launch."""
    s, E, out, ckpts = cfg.sample, cfg.text.text_dim, [], checkpoints or {}
    w = s.guidance_scale or 1.0  # both with guidance, as the paper's samplers run
    for L in tokens:
        side = math.isqrt(L)
        if side * side != L:
            raise ValueError(f"compare_ar times square grids: {L} tokens is not a square")
        models = {}
        for kind, cls in (("masked", MaskedTransformer), ("autoregressive", ARTransformer)):
            ckpt = (checkpoints or {}).get(kind)
            torch.manual_seed(0)
            m = (cls.from_pretrained(os.path.join(ckpt, "transformer")) if ckpt and L == cfg.num_tokens else
                 cls(dataclasses.replace(cfg.transformer, kind=cls.MODEL_KIND), cfg.tokenizer.codebook_size, (side, side), E))
            models[kind] = m.eval().to(device)
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        for B in batch_sizes:
            text = torch.randn(B, text_tokens, E).to(device)
            text_mask = torch.ones(B, text_tokens, dtype=torch.bool, device=device)
            uncond = torch.randn(1, 2, E).to(device)  # "" is [CLS][SEP]
            same = SampleConfig(num_steps=min(s.num_steps, L), schedule=s.schedule, guidance_scale=w,
                                guidance_schedule=s.guidance_schedule, choice_temperature=s.choice_temperature)
            loops = {"masked": sample, "autoregressive": generate}  # each model's own loop, one contract
            calls = {kind: (lambda m=m, kind=kind: (loops[kind](m, (text, text_mask), same, uncond=(uncond, None),
                                                                generator=torch.Generator(device).manual_seed(0)), sync()))
                     for kind, m in models.items()}
            times = {kind: [] for kind in calls}
            for fn in calls.values():
                fn()  # warm-up
            for _ in range(repeats):
                for kind, fn in calls.items():
                    t = time.perf_counter()
                    fn()
                    times[kind].append(time.perf_counter() - t)
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            out.append({"tokens": L, "batch": B, "parallel_steps": min(s.num_steps, L), "guidance": w,
                        "parallel_ms": round(1000 * med["masked"] / B, 2),
                        "autoregressive_ms": round(1000 * med["autoregressive"] / B, 2),
                        "speedup": round(med["autoregressive"] / med["masked"], 2),
                        "parallel_ms_range": [round(1000 * min(times["masked"]) / B, 2), round(1000 * max(times["masked"]) / B, 2)],
                        "autoregressive_ms_range": [round(1000 * min(times["autoregressive"]) / B, 2),
                                                    round(1000 * max(times["autoregressive"]) / B, 2)],
                        "parallel_passes": min(s.num_steps, L), "autoregressive_passes": L,
                        "parallel_gflop": round(count_flops(calls["masked"]) / B / 1e9, 4),
                        "autoregressive_gflop": round(count_flops(calls["autoregressive"]) / B / 1e9, 4),
                        "repeats": repeats, "trained": bool(checkpoints) and all(ckpts.get(k) for k in models)
                        and L == cfg.num_tokens})
    return out


def cascade_bench(cfg: Config, transformer, checkpoint, batch_sizes, repeats: int, text_tokens: int, precision: str) -> list:
    """ms/image of Muse's cascade: the base stage (cfg.sample's steps and guidance) then the super-res stage (its own
    steps, guidance and temperature) on the base grid, timed separately at each batch size; `superres_share` is the
    super-res stage's fraction of the total. The trained super-res model when `checkpoint` holds one."""
    sr = cfg.superres
    if checkpoint is not None and os.path.isdir(os.path.join(checkpoint, "superres")):
        model = SuperResTransformer.from_pretrained(os.path.join(checkpoint, "superres"))
        sr = Config.from_dict(read_config(os.path.join(checkpoint, "superres"), "superres")["config"]).superres
    else:
        torch.manual_seed(0)
        check_config_memory(cfg, ("superres",), f"config '{cfg.name}'")
        model = SuperResTransformer.from_config(cfg).eval()
    E, s = transformer.text_dim, cfg.sample
    rows = []
    for B in batch_sizes:
        text, text_mask = torch.randn(B, text_tokens, E), torch.ones(B, text_tokens, dtype=torch.bool)
        uncond = torch.randn(1, 2, E)
        lowres = torch.randint(0, model.lowres_codebook_size, (B, *model.lowres_grid))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            base_s = SampleConfig(num_steps=s.num_steps, guidance_scale=s.guidance_scale,
                                  guidance_schedule=s.guidance_schedule, choice_temperature=s.choice_temperature)
            base = _timed(lambda: sample(transformer, (text, text_mask), base_s, uncond=(uncond, None),
                                         generator=torch.Generator().manual_seed(0)), repeats)
            up = _timed(lambda: sample(model, (text, text_mask), sr.sample, uncond=(uncond, None), lowres_ids=lowres,
                                       generator=torch.Generator().manual_seed(0)), repeats)
        rows.append({"batch": B, "base_ms_per_image": round(1000 * base / B, 2), "superres_ms_per_image": round(1000 * up / B, 2),
                     "cascade_ms_per_image": round(1000 * (base + up) / B, 2), "superres_share": round(up / (base + up), 3),
                     "base_steps": s.num_steps, "superres_steps": sr.sample.num_steps})
    return rows


def _cpu_name() -> str:
    try:  # platform.processor() is empty on most Linux builds
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
