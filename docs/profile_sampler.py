"""Where one sampling call spends its time: linear layers against attention against everything else, by torch.profiler.

    python docs/profile_sampler.py --set width=256 --set depth=6 > docs/results/profile_w256_b16.json
    python docs/profile_sampler.py --checkpoint data/checkpoints/laptop --batch 1 --steps 24 --guidance 1.0 \
        > docs/results/profile_laptop_b1.json

Prints each kernel family's share of the profiled CPU time and of the FLOPs (FlopCounterMode, per op), the GFLOP/s the
linear layers and attention reach inside the call, the number of operator calls the profiler recorded, and the
accuracy of the oneDNN and MKL fp32 GEMMs against a float64 product at the model's largest linear shape.
"""
import argparse
import json
import time

import torch
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from minimuse import sampler
from minimuse.config import SampleConfig
from minimuse import bench  # noqa: F401  (registers the FLOP formulas of oneDNN's linear and CPU attention)
from minimuse.commands import _config
from minimuse.transformer import _ONEDNN_LINEAR, MaskedTransformer

FAMILIES = {"linear": ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm"),
            "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",)}


def family(op: str) -> str:
    return "attention" if "attention" in op else "linear" if "linear" in op or "mm" in op else "other"


def gemm_error(m: int, k: int, n: int) -> dict:
    """Max relative error of each fp32 backend's (m, k) @ (k, n) against the float64 product."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    ref = x.double() @ w.double().t()
    rel = lambda y: float((y.double() - ref).abs().max() / ref.abs().max())  # noqa: E731
    out = {"mkl (torch.mm)": rel(torch.mm(x, w.t().contiguous()))}
    if _ONEDNN_LINEAR is not None:
        out["onednn"] = rel(_ONEDNN_LINEAR(x, w, None, "none", [], ""))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--checkpoint")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--guidance", type=float, default=1.5)
    args = ap.parse_args()
    cfg = _config(args)
    torch.manual_seed(0)
    model = (MaskedTransformer.from_pretrained(f"{args.checkpoint}/transformer") if args.checkpoint
             else MaskedTransformer.from_config(cfg)).eval()
    B, E = args.batch, model.text_dim
    text, mask, uncond = torch.randn(B, 16, E), torch.ones(B, 16, dtype=torch.bool), torch.randn(1, 2, E)

    def call():
        return sampler.sample(model, (text, mask), SampleConfig(num_steps=args.steps, guidance_scale=args.guidance),
                              uncond=(uncond, None), generator=torch.Generator().manual_seed(0))

    call()  # warm-up
    with FlopCounterMode(display=False) as counter:
        call()
    flops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    t = time.perf_counter()
    call()
    wall = time.perf_counter() - t
    with profile() as prof:
        call()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    out = {"batch": B, "steps": args.steps, "guidance": args.guidance, "threads": torch.get_num_threads(),
           "wall_ms_per_image_unprofiled": round(1000 * wall / B, 2),
           "operator_calls_per_image": round(sum(e.count for e in events) / B),
           "families": {}, "gemm_error_vs_float64": gemm_error(2 * B * model.grid[0] * model.grid[1],
                                                                model.cfg.width, int(model.cfg.mlp_ratio * model.cfg.width))}
    total_flops = sum(flops.values())
    for fam, names in FAMILIES.items():
        us = sum(e.self_cpu_time_total for e in events if e.key in names)
        f = sum(n for op, n in flops.items() if family(op) == fam)
        out["families"][fam] = {"time_share": round(us / total_us, 3), "flop_share": round(f / total_flops, 3),
                                "gflops": round(f / (us / 1e6) / 1e9, 1) if us else None}
    rest = 1 - sum(v["time_share"] for v in out["families"].values())
    out["families"]["everything else"] = {"time_share": round(rest, 3)}
    out["flops_by_op"] = flops
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
