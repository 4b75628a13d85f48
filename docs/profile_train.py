"""Where one training step of a preset spends its time: forward, backward and the optimizer, by torch.profiler.

    python docs/profile_train.py --steps 60 > docs/results/speedrun/profile_laptop_train.json

Trains the preset (default `laptop`, on the shipped laptop tokenizer, a 4,000-image pool and no quick evaluations)
into a temporary folder, times every step by the wall clock, and profiles steps `--skip` to `--steps`. The profiled
steps' top-level events are split into the optimizer's step (Optimizer.step#..., Muon's Newton-Schulz iterations
included), the backward pass (autograd::engine...) and the rest (the forward pass, the batch, the loop); the
operators with the most self time are listed too. The profiler's own cost slows the profiled steps, so the shares
are the thing to read, and the unprofiled step time is printed beside them. Last, it times Muon's Newton-Schulz
orthogonalisation (transformer_setup.orthogonalize) in bf16, torch.optim.Muon's precision, against fp32, on every
Muon matrix of the model, interleaved in one loop: where the CPU has no bf16 instructions, bf16 products are
emulated. `--set FIELD=VALUE` overrides the preset as `minimuse train --set` does (train.mixed_precision=no: fp32).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from minimuse import get_config
from minimuse.runs import resolve_precision
from minimuse.train import train_transformer
from minimuse.transformer_setup import muon_matrices, newton_schulz_dtype, orthogonalize


def part(name: str) -> str:
    return "optimizer" if name.startswith("Optimizer.step") else "backward" if name.startswith("autograd::") else "rest"


def cpu_has(flag: str):
    """Whether /proc/cpuinfo lists `flag`; None where there is no /proc/cpuinfo (not Linux)."""
    info = Path("/proc/cpuinfo")
    return flag in info.read_text().split() if info.exists() else None


def time_newton_schulz(shapes, reps=10):
    """ms per optimizer step for all `shapes`, bf16 (torch.optim.Muon's precision) and fp32, timed interleaved."""
    gs = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    ms = {"bf16": 0.0, "fp32": 0.0}
    for _ in range(reps + 1):  # the first round warms up and is not counted
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            t = time.perf_counter()
            for g in gs:
                orthogonalize(g, dtype=dtype)
            ms[name] += (time.perf_counter() - t) * 1e3 if _ else 0.0
    return {k: round(v / reps, 1) for k, v in ms.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=20, help="steps left unprofiled first (warmup, allocator)")
    ap.add_argument("--tokenizer", default="data/checkpoints/laptop/tokenizer")
    ap.add_argument("--pool", type=int, default=4000)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a config override, as for train")
    args = ap.parse_args()
    sets = dict(item.split("=", 1) for item in args.set)
    cfg = get_config(args.preset, **{"train.eval_every": 0, "data.pool_size": args.pool, **sets,
                                     "train.steps": args.steps})
    prof, stamps, shapes = profile(activities=[ProfilerActivity.CPU]), {}, []

    def on_step(step, record, model=None):
        stamps[step] = time.perf_counter()
        if model is not None and not shapes:
            shapes.extend(tuple(p.shape) for _, p in muon_matrices(model))
        if step == args.skip:
            prof.start()
        if step == args.steps:
            prof.stop()

    with tempfile.TemporaryDirectory() as out:
        train_transformer(cfg, out + "/run", tokenizer_dir=args.tokenizer, on_step=on_step)
    n, half = args.steps - args.skip, args.skip // 2
    top = [e for e in prof.events() if e.cpu_parent is None]
    totals = {}
    for e in top:
        totals[part(e.name)] = totals.get(part(e.name), 0.0) + e.cpu_time_total / 1e3  # ms
    whole = sum(totals.values())
    precision = resolve_precision(cfg.train.mixed_precision)
    ops = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:15]
    print(json.dumps({
        "command": f"python docs/profile_train.py --preset {args.preset} --steps {args.steps} --skip {args.skip}"
                   + "".join(f" --set {item}" for item in args.set),
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "precision": precision, "optimizer": cfg.train.optimizer,
        "newton_schulz_dtype": {torch.float32: "fp32", torch.bfloat16: "bf16"}[newton_schulz_dtype(precision)]
                               if cfg.train.optimizer == "muon" else None,
        "batch_size": cfg.train.batch_size, "width": cfg.transformer.width, "depth": cfg.transformer.depth,
        "ms_per_step_unprofiled": round((stamps[args.skip] - stamps[half]) / (args.skip - half) * 1e3, 1),
        "ms_per_step_profiled": round((stamps[args.steps] - stamps[args.skip]) / n * 1e3, 1),
        "profiled_steps": n,
        "newton_schulz_ms_per_step": time_newton_schulz(shapes),
        "muon_matrices": len(shapes), "cpu_has_avx512_bf16": cpu_has("avx512_bf16"),
        "share_of_profiled_time": {k: round(v / whole, 3) for k, v in sorted(totals.items())},
        "ms_per_step_by_part": {k: round(v / n, 1) for k, v in sorted(totals.items())},
        "top_ops_by_self_time": [{"op": a.key, "calls_per_step": round(a.count / n, 1),
                                  "self_ms_per_step": round(a.self_cpu_time_total / 1e3 / n, 2)} for a in ops],
    }, indent=1))


if __name__ == "__main__":
    main()
