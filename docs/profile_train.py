"""Where one training step of a preset spends its time: forward, backward and the optimizer, by torch.profiler.

    python docs/profile_train.py --steps 60 > docs/results/speedrun/profile_laptop_train.json

Trains the preset (default `laptop`, on the shipped laptop tokenizer, a 4,000-image pool and no quick evaluations)
into a temporary folder, times every step by the wall clock, and profiles steps `--skip` to `--steps`. The profiled
steps' top-level events are split into the optimizer's step (Optimizer.step#..., Muon's Newton-Schulz iterations
included), the backward pass (autograd::engine...) and the rest (the forward pass, the batch, the loop); the
operators with the most self time are listed too. The profiler's own cost slows the profiled steps, so the shares
are the thing to read, and the unprofiled step time is printed beside them. Last, it times torch.optim.Muon's
Newton-Schulz orthogonalisation, which runs in bf16, against the same iterations in fp32 on every Muon matrix of the
model, interleaved in one loop: where the CPU has no bf16 instructions, bf16 matrix products are emulated.
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


def part(name: str) -> str:
    return "optimizer" if name.startswith("Optimizer.step") else "backward" if name.startswith("autograd::") else "rest"


def cpu_has(flag: str):
    """Whether /proc/cpuinfo lists `flag`; None where there is no /proc/cpuinfo (not Linux)."""
    info = Path("/proc/cpuinfo")
    return flag in info.read_text().split() if info.exists() else None


def newton_schulz_fp32(G, a, b, c, steps, eps=1e-7):
    """torch.optim._muon._zeropower_via_newtonschulz with the bf16 cast left out: the same iterations in fp32."""
    X = G.T if G.size(0) > G.size(1) else G
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.T if G.size(0) > G.size(1) else X


def time_newton_schulz(shapes, reps=10):
    """ms per optimizer step for all `shapes`, bf16 (torch's) and fp32, timed interleaved."""
    from torch.optim import _muon
    abc, steps = (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C), _muon.DEFAULT_NS_STEPS
    gs = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    ms = {"bf16": 0.0, "fp32": 0.0}
    for _ in range(reps + 1):  # the first round warms up and is not counted
        for name, fn in (("bf16", lambda g: _muon._zeropower_via_newtonschulz(g, abc, steps, 1e-7)),
                         ("fp32", lambda g: newton_schulz_fp32(g, *abc, steps))):
            t = time.perf_counter()
            for g in gs:
                fn(g)
            ms[name] += (time.perf_counter() - t) * 1e3 if _ else 0.0
    return {k: round(v / reps, 1) for k, v in ms.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=20, help="steps left unprofiled first (warmup, allocator)")
    ap.add_argument("--tokenizer", default="data/checkpoints/laptop/tokenizer")
    ap.add_argument("--pool", type=int, default=4000)
    args = ap.parse_args()
    cfg = get_config(args.preset, **{"train.steps": args.steps, "train.eval_every": 0, "data.pool_size": args.pool})
    prof, stamps, shapes = profile(activities=[ProfilerActivity.CPU]), {}, []

    def on_step(step, record, model=None):
        stamps[step] = time.perf_counter()
        if model is not None and not shapes:  # the matrices make_optimizer gives Muon
            shapes.extend(tuple(p.shape) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2)
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
    ops = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:15]
    print(json.dumps({
        "command": f"python docs/profile_train.py --preset {args.preset} --steps {args.steps} --skip {args.skip}",
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "precision": resolve_precision(cfg.train.mixed_precision), "optimizer": cfg.train.optimizer,
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
