"""Speed: ms per image, tokens/s and achieved GFLOP/s of the sampler, against this machine's matmul peak.

Muse's case for parallel decoding (§1, Table 5: 0.5 s per image against Parti's 6.4 s) is speed, so minimuse
measures it rather than assuming it: the fp32 matmul peak is measured in the same run, FLOPs of a sampling call
are counted by torch's FlopCounterMode (not estimated), and the same transformer decoding one token per forward
pass gives the autoregressive contrast. `minimuse bench` prints the JSON; docs/BENCHMARKS.md records it.
"""
from __future__ import annotations

import os
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Config
from .sampler import sample
from .transformer import MaskedTransformer


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, dtype=torch.float32) -> float:
    """Best-of-`repeats` GFLOP/s of one (n x n) @ (n x n) matmul: the ceiling the transformer is measured against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _timed(fn, repeats: int) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def autoregressive(transformer, text, text_mask):
    """The contrast: the same bidirectional transformer filling one token per forward pass in raster order, greedily."""
    B = text.shape[0]
    h, w = transformer.grid
    ids = torch.full((B, h * w), transformer.mask_id, dtype=torch.long)
    with torch.inference_mode():
        ctx = transformer.encode_text(text, text_mask)
        for i in range(h * w):
            logits = transformer(ids, ctx=ctx, head_index=torch.full((B, 1), i))  # (B, 1, K)
            ids[:, i] = logits[:, 0].argmax(-1)
    return ids


def run_bench(cfg: Config, checkpoint=None, batch_sizes=(1, 16), steps=(8, 12, 24), repeats: int = 3,
              threads: int | None = None, text_tokens: int = 16) -> dict:
    """Time the sampler of `cfg` (random-initialised, or the trained one in `checkpoint`) at every batch size and step
    count, with and without guidance. Text is random (B, text_tokens, E): the encoder runs once per prompt and is not
    part of the decoding loop being compared."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if checkpoint is not None:
        transformer = MaskedTransformer.from_pretrained(os.path.join(checkpoint, "transformer"))
    else:
        transformer = MaskedTransformer.from_config(cfg)
    transformer.eval()
    E, L = transformer.text_dim, transformer.grid[0] * transformer.grid[1]
    peak = matmul_peak_gflops()
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "fp32_matmul_peak_gflops": round(peak, 1)},
        "model": {"preset": cfg.name, "params": transformer.num_params(), "width": transformer.cfg.width,
                  "depth": transformer.cfg.depth, "heads": transformer.cfg.heads, "grid": list(transformer.grid),
                  "codebook_size": transformer.codebook_size, "text_tokens": text_tokens,
                  "checkpoint": str(checkpoint) if checkpoint else None},
        "runs": []}
    for B in batch_sizes:
        text = torch.randn(B, text_tokens, E)
        text_mask = torch.ones(B, text_tokens, dtype=torch.bool)
        uncond, uncond_mask = torch.randn(1, text_tokens, E).expand(B, -1, -1), text_mask
        for T in steps:
            for guidance in (0.0, cfg.sample.guidance_scale or 1.5):
                def call():
                    g = torch.Generator().manual_seed(0)
                    return sample(transformer, text, text_mask, uncond, uncond_mask, num_steps=T,
                                  guidance_scale=guidance, guidance_schedule=cfg.sample.guidance_schedule,
                                  choice_temperature=cfg.sample.choice_temperature, generator=g)
                sec = _timed(call, repeats)
                flops = count_flops(call)
                result["runs"].append({
                    "batch": B, "steps": T, "guidance": guidance, "ms_per_image": round(1000 * sec / B, 2),
                    "tokens_per_s": round(B * L / sec, 1), "gflop_per_image": round(flops / B / 1e9, 4),
                    "achieved_gflops": round(flops / sec / 1e9, 1), "fraction_of_peak": round(flops / sec / 1e9 / peak, 3)})
        sec = _timed(lambda: autoregressive(transformer, text, text_mask), 1)
        result["runs"].append({"batch": B, "steps": L, "guidance": 0.0, "autoregressive": True,
                               "ms_per_image": round(1000 * sec / B, 2), "tokens_per_s": round(B * L / sec, 1)})
    return result
