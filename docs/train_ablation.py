"""What each throughput change bought in the laptop training step, measured side by side.

Usage: python docs/train_ablation.py [--rounds 5] [--steps 8] [--out docs/results/train_ablation.json [--overwrite]]

One process builds one model and optimizer per variant and times them in interleaved rounds (A B C D, A B C D, ...),
so machine drift hits every variant alike; each round times `steps` consecutive full steps (forward, masked
cross-entropy, backward, clipping, AdamW) at the laptop-adamw preset's sizes (the AdamW laptop recipe; `laptop` itself
now trains with Muon): batch 64, 8x8 tokens, 14 text tokens. The allocator setting is process-wide, so it is measured
apart: the final variant in fresh processes with and without runs.keep_freed_memory, alternating. Reported: median
ms per step, and the speed-up over the first variant with the range over rounds of the per-round ratio.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minimuse import transformer as T
from minimuse.presets import get_config
from minimuse.scheduler import add_noise, make_labels, masked_ce, random_mask

_explicit = T.attention


def _fused(q, k, v, mask=None, dropout_p=0.0, weights=False):
    """The previous training path: torch's fused attention kernel, forward and backward."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None


VARIANTS = {  # name: (attention, bf16 autocast, fused AdamW); cumulative from the shipped run's step to this round's
    "fp32, fused attention kernel, foreach AdamW (the shipped run's step)": (_fused, False, False),
    "+ explicit attention in training": (_explicit, False, False),
    "+ bf16 autocast": (_explicit, True, False),
    "bf16 autocast with the fused attention kernel instead": (_fused, True, False),
    "+ fused AdamW (this round's step)": (_explicit, True, True),
}


def make_step(attention, bf16: bool, fused: bool, cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = T.MaskedTransformer.from_config(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=fused, foreach=None if fused else True)
    B, L, E, Tt = cfg.train.batch_size, cfg.num_tokens, cfg.text.text_dim, 14
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.tokenizer.codebook_size, (B, L), generator=g)
    mask = random_mask(B, cfg.grid, g)
    inputs, labels = add_noise(ids, mask, model.mask_id), make_labels(ids, mask)
    text, text_mask = torch.randn(B, Tt, E, generator=g), torch.ones(B, Tt, dtype=torch.bool)

    def step():
        T.attention = attention
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = masked_ce(model(inputs, text, text_mask), labels, cfg.train.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        T.attention = _explicit
    return step


def timed(step, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def interleaved(steps: dict, rounds: int, n: int) -> dict:
    for s in steps.values():
        timed(s, 3)  # warm-up: oneDNN kernel generation, allocator
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, s in steps.items():
            times[k].append(timed(s, n))
    return times


def summarise(times: dict) -> list[dict]:
    base = next(iter(times.values()))
    rows = []
    for k, ts in times.items():
        ratios = sorted(b / t for b, t in zip(base, ts))
        rows.append({"variant": k, "ms_per_step": round(1000 * sorted(ts)[len(ts) // 2], 1),
                     "speedup": round(ratios[len(ratios) // 2], 2), "speedup_range": [round(ratios[0], 2), round(ratios[-1], 2)]})
    return rows


def one_process(keep: bool, n: int) -> float:
    """In a fresh process: the final variant's ms per step, with or without keep_freed_memory."""
    root = str(Path(__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); import docs.train_ablation as a, torch; torch.set_num_threads(2)\n"
            f"from minimuse.runs import keep_freed_memory\n{'keep_freed_memory()' if keep else ''}\n"
            "cfg=a.get_config('laptop-adamw'); s=a.make_step(a._explicit, True, True, cfg); a.timed(s, 3)\n"
            f"print(a.timed(s, {n}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=None)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = ap.parse_args()
    if args.out and Path(args.out).exists() and not args.overwrite:
        sys.exit(f"{args.out} exists; pass --overwrite to replace it")
    torch.set_num_threads(2)
    cfg = get_config("laptop-adamw")
    steps = {k: make_step(*v, cfg) for k, v in VARIANTS.items()}
    rows = summarise(interleaved(steps, args.rounds, args.steps))
    alloc = {"default allocator": [], "+ keep_freed_memory": []}
    for _ in range(args.rounds):
        alloc["default allocator"].append(one_process(False, 4 * args.steps))
        alloc["+ keep_freed_memory"].append(one_process(True, 4 * args.steps))
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds,
              "steps_per_round": args.steps, "in_process": rows, "allocator": summarise(alloc)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from minimuse.checkpoint import atomic_write_text
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
