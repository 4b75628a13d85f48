"""Training-step and sampling throughput on one CUDA GPU, measured side by side in one process (docs/GPU.md).

Training: for the presets `laptop`, `gpu` and `gpu-small`, the real step of train.train_transformer (train_step_inputs
on a random token pool, forward, masked cross-entropy, backward, clipping, fused AdamW) under fp32, TF32, bf16
autocast and bf16 autocast + torch.compile. Each variant's steps are timed one by one with the GPU synchronised, in
interleaved rounds; the FLOPs of a step are counted by FlopCounterMode, and MFU is achieved FLOP/s over the matmul peak
of the same number format measured in this process (peak.matmul_peak: the best over 1024^3 to 8192^3 and
repeats). The host's share of a step (train_step_inputs alone) is timed too. Text states are random (B, 16, 384), the shape of MiniLM's for shapes captions.

Sampling: images/s of sampler.sample at batch 64 and 256 with 24 steps and guidance (two forward passes per step),
fp32 and bf16, with the sampler's random draws from a CPU generator (bit-identical to the CPU's draws) or a CUDA one.

Usage: python docs/gpu_bench.py OUT.json [--presets ...] [--precisions ...] [--rounds R] [--steps S] [--no-sampling]
(on a CUDA device; all presets and precisions took over 5 minutes on one H100). --device cpu runs the same code on the
CPU, which only checks that it runs (benchmarks/gpu_check.sh --dry-run).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

from minimuse.peak import CUDA_SIZES, train_step_flops
from minimuse.peak import matmul_peak as matmul_peak_gflops
from minimuse.presets import get_config
from minimuse.pool import train_step_inputs
from minimuse.config import SampleConfig
from minimuse.sampler import sample
from minimuse.scheduler import masked_ce
from minimuse.transformer import MaskedTransformer

T, E = 16, 384
DEVICE = "cuda"


def sync_time() -> float:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def matmul_peak(dtype, tf32: bool = False) -> float:
    """Best TFLOP/s of cuBLAS over square sizes and repeats (peak.matmul_peak): the ceiling MFU is measured against."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        sizes = CUDA_SIZES if DEVICE == "cuda" else (256, 512)
        return matmul_peak_gflops(dtype, sizes, repeats=5, device=DEVICE)["gflops"] / 1e3
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def synthetic_data(cfg, n_rows: int = 100_000, n_captions: int = 4096):
    """A token pool and text table of the right shapes: the step's cost does not depend on what the tokens mean."""
    g = torch.Generator().manual_seed(0)
    h, w = cfg.grid
    kinds = list(cfg.data.kinds)
    pool = {"ids": torch.randint(0, cfg.tokenizer.codebook_size, (n_rows, h, w), generator=g).short(),
            "caption_idx": torch.randint(1, n_captions, (n_rows,), generator=g),
            "kinds": [kinds[i % len(kinds)] for i in range(n_rows)]}
    lengths = torch.randint(6, T + 1, (n_captions,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]                                   # (U, T)
    table = (torch.randn(n_captions, T, E, generator=g) * mask[..., None], mask)       # (U, T, E), (U, T)
    return pool, table


class Variant:
    """One (preset, precision) training step, with its own model and optimizer on the GPU."""

    def __init__(self, cfg, precision: str):
        torch.manual_seed(0)
        self.cfg, self.precision = cfg, precision
        self.model = MaskedTransformer.from_config(cfg).to(DEVICE).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        self.fwd = torch.compile(self.model) if precision == "bf16+compile" else self.model
        self.pool, self.table = synthetic_data(cfg)
        self.i, self.times = 0, []

    def batch(self):
        self.i += 1
        return [x.to(DEVICE, non_blocking=True) for x in train_step_inputs(self.pool, self.table, self.cfg, self.i,
                                                                      self.cfg.train.batch_size, self.model.mask_id)]

    def step(self):
        torch.backends.cuda.matmul.allow_tf32 = self.precision == "tf32"
        inputs, labels, text, text_mask = self.batch()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=self.precision.startswith("bf16")):
            loss = masked_ce(self.fwd(inputs, text, text_mask), labels, self.cfg.train.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        torch.backends.cuda.matmul.allow_tf32 = False

    def flops(self) -> int:
        inputs, labels, text, text_mask = self.batch()
        return train_step_flops(self.model, inputs, labels, text, text_mask, {}, self.cfg.train.label_smoothing,
                                "bf16" if self.precision.startswith("bf16") else "no")


def bench_training(presets, precisions, peaks, rounds: int = 4, steps: int = 10, overrides=None) -> list[dict]:
    rows = []
    for name in presets:
        cfg = get_config(name, **(overrides or {}))
        variants = []
        for p in precisions:
            v = Variant(cfg, p)
            t = sync_time()
            v.step()                                     # first step: CUDA context, cuBLAS plans, and compilation
            v.first_s = sync_time() - t
            for _ in range(3):
                v.step()
            variants.append(v)
        for _ in range(rounds):                          # interleaved: drift hits every variant alike
            for v in variants:
                for _ in range(steps):
                    t = sync_time()
                    v.step()
                    v.times.append(sync_time() - t)
        pool, table = variants[0].pool, variants[0].table
        host = []
        for i in range(50):
            t = time.perf_counter()
            train_step_inputs(pool, table, cfg, i, cfg.train.batch_size, cfg.tokenizer.codebook_size)
            host.append(time.perf_counter() - t)
        for v in variants:
            flops = v.flops()
            ms = statistics.median(v.times) * 1e3
            peak = peaks["bf16" if v.precision.startswith("bf16") else v.precision]
            rows.append({"preset": name, "precision": v.precision, "batch": cfg.train.batch_size, "tokens": cfg.grid[0] * cfg.grid[1],
                         "params_M": round(sum(p.numel() for p in v.model.parameters()) / 1e6, 2),
                         "step_ms_median": round(ms, 2), "step_ms_min": round(min(v.times) * 1e3, 2),
                         "step_ms_max": round(max(v.times) * 1e3, 2), "n_steps": len(v.times),
                         "first_step_s": round(v.first_s, 2), "tflop_per_step": round(flops / 1e12, 4),
                         "tflops": round(flops / ms / 1e9, 1), "mfu": round(flops / ms / 1e9 / peak, 3),
                         "host_batch_ms_median": round(statistics.median(host) * 1e3, 2)})
            print(json.dumps(rows[-1]), flush=True)
        del variants
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_sampling(presets, batches=(64, 256), num_steps: int = 24, repeats: int = 3) -> list[dict]:
    rows = []
    for name in presets:
        cfg = get_config(name)
        torch.manual_seed(0)
        model = MaskedTransformer.from_config(cfg).cuda().eval()
        for B in batches:
            text = torch.randn(B, T, E, device="cuda")
            mask = torch.ones(B, T, dtype=torch.bool, device="cuda")
            uncond, umask = torch.randn(1, 2, E, device="cuda"), torch.ones(1, 2, dtype=torch.bool, device="cuda")
            runs = {}
            for precision in ("fp32", "bf16"):
                for gen in ("cpu", "cuda"):
                    runs[(precision, gen)] = []
            for _ in range(repeats + 1):                  # interleaved; the first round warms up and is dropped
                for (precision, gen), times in runs.items():
                    g = torch.Generator(gen).manual_seed(0)
                    t = sync_time()
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        sample(model, (text, mask), SampleConfig(num_steps=num_steps, guidance_scale=2.0),
                               uncond=(uncond, umask), generator=g)
                    times.append(sync_time() - t)
            for (precision, gen), times in runs.items():
                s = statistics.median(times[1:])
                rows.append({"preset": name, "batch": B, "steps": num_steps, "precision": precision, "generator": gen,
                             "s_median": round(s, 4), "s_min": round(min(times[1:]), 4), "s_max": round(max(times[1:]), 4),
                             "n": len(times) - 1, "images_per_s": round(B / s, 1)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--presets", nargs="+", default=["laptop", "gpu", "gpu-small"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16", "bf16+compile"])
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds of --steps timed steps per variant")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-sampling", action="store_true", help="time training only")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides for every preset")
    args = ap.parse_args(argv)
    DEVICE = args.device
    assert DEVICE == "cpu" or torch.cuda.is_available(), "gpu_bench.py needs a CUDA device (or --device cpu)"
    overrides = dict(kv.split("=", 1) for kv in args.set)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    if "tf32" in args.precisions:
        peaks["tf32"] = matmul_peak(torch.float32, tf32=True)
    print("peaks TFLOP/s", peaks, flush=True)
    result = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
              "peak_tflops": peaks, "argv": sys.argv[1:],
              "training": bench_training(args.presets, args.precisions, peaks, args.rounds, args.steps, overrides)}
    if not args.no_sampling:
        result["sampling"] = bench_sampling(args.presets)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
