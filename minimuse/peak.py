"""The matmul peak every "% of peak" in minimuse is measured against, FLOPs counted by torch's FlopCounterMode, and
the report `train --report` writes: where a run's time went and its steps' GFLOP/s against the peak measured in the
same run. Machinery that training and `minimuse bench` (bench.py) both use; docs/BENCHMARKS.md records the numbers.
"""
from __future__ import annotations

import functools
import math
import os
import time

import torch

from . import transformer as transformer_mod
from .checkpoint import atomic_write_json
from .config import Config
from .scheduler import masked_ce


@functools.cache
def _flop_counter():
    """torch's FlopCounterMode, taught two kernels it does not know: oneDNN's fused linear that the transformer's
    inference path calls, and the CPU kernel behind scaled_dot_product_attention (without them a sampling call would
    count too few FLOPs). Imported here, not at the top: torch.utils.flop_counter loads triton (about 75 MB resident),
    which only the FLOP counts need."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula
    sdpa_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if sdpa_cpu.default not in flop_registry:
        @register_flop_formula(sdpa_cpu)
        def _sdpa_cpu_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
            B, H, L, Dh = q_shape
            return 2 * 2 * B * H * L * k_shape[2] * Dh  # Q K^T and attn V, one multiply-add per term each
    if transformer_mod._ONEDNN_LINEAR is not None:
        @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
        def _onednn_linear_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
            return 2 * math.prod(out_shape) * x_shape[-1]  # (..., K) @ (K, N) -> (..., N): one multiply-add per term
    return FlopCounterMode


def _gemm(m: int, k: int, n: int, dtype, backend: str):
    """A function computing one (m, k) @ (k, n) product through `backend`: "torch.mm" (aten: MKL for fp32 on
    this build), "onednn" (the fused linear the transformer's inference path uses) or "cuda" (cuBLAS)."""
    device = "cuda" if backend == "cuda" else "cpu"
    a, w = torch.randn(m, k, dtype=dtype, device=device), torch.randn(n, k, dtype=dtype, device=device)
    if backend == "onednn":
        return lambda: transformer_mod._ONEDNN_LINEAR(a, w, None, "none", [], "")
    wt = w.t().contiguous()  # (k, n)
    return lambda: torch.mm(a, wt)


def _best_gflops(m: int, k: int, n: int, dtype, backend: str, repeats: int, min_s: float = 0.02) -> float:
    """Best of `repeats` timings, each of enough back-to-back calls to last `min_s` (a small GEMM takes microseconds,
    below the timer's resolution and Python's overhead if timed alone)."""
    fn = _gemm(m, k, n, dtype, backend)
    sync = torch.cuda.synchronize if backend == "cuda" else (lambda: None)  # a GPU runs ahead of the host's clock
    fn()  # warm-up: thread pool, caches, oneDNN's kernel generation, cuBLAS's plan
    sync()
    t = time.perf_counter()
    fn()
    sync()
    calls = max(1, int(min_s / max(time.perf_counter() - t, 1e-7)))
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t) / calls)
    return 2 * m * k * n / best / 1e9


def onednn_serves(dtype) -> bool:
    """Whether oneDNN's fused linear can run in `dtype` here: its bf16 kernels need AVX-512 or AMX (a CPU with AVX2
    only cannot create the primitive), while torch.mm emulates bf16 anywhere."""
    if transformer_mod._ONEDNN_LINEAR is None:
        return False
    return dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def backends(device="cpu", dtype=torch.float32) -> list[str]:
    if torch.device(device).type == "cuda":
        return ["cuda"]
    return ["torch.mm"] + (["onednn"] if onednn_serves(dtype) else [])


CUDA_SIZES = (1024, 2048, 4096, 8192)  # a GPU needs large products to reach its peak


def matmul_peak(dtype=torch.float32, sizes=(256, 512, 1024, 2048, 3072), repeats: int = 5, device="cpu") -> dict:
    """The machine's matmul peak through torch: the best GFLOP/s over square sizes, backends and repetitions.

    One short 2048^2 product is not a peak: it varies by 20% between calls, and on AMD CPUs MKL (torch.mm's fp32
    backend) runs its AVX2 path at half of what oneDNN reaches. Every candidate is returned as well as the best."""
    cands = [{"m": n, "k": n, "n": n, "backend": be, "gflops": round(_best_gflops(n, n, n, dtype, be, repeats), 1)}
             for n in sizes for be in backends(device, dtype)]
    return {"gflops": max(c["gflops"] for c in cands), "candidates": cands}


def model_gemms(transformer, rows: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) products of one forward pass over `rows` = B*L image tokens (the batch doubled under guidance):
    per block qkv, self-attention out, cross-attention q and out, MLP in and out; then the output head."""
    D, hidden = transformer.cfg.width, int(transformer.cfg.mlp_ratio * transformer.cfg.width)
    block = [(rows, D, 3 * D), (rows, D, D), (rows, D, D), (rows, D, D), (rows, D, hidden), (rows, hidden, D)]
    return block * transformer.cfg.depth + [(rows, D, transformer.codebook_size)]


def model_gemm_peak(transformer, rows: int, dtype=torch.float32, repeats: int = 5) -> dict:
    """The peak at the model's own GEMM shapes: each distinct shape at its best backend, weighted by its FLOPs in a
    forward pass, i.e. (total FLOPs) / (total time at the best rates). Small shapes reach less than square ones."""
    shapes = model_gemms(transformer, rows)
    device = next(transformer.parameters()).device
    rate = {s: max((_best_gflops(*s, dtype, be, repeats), be) for be in backends(device, dtype)) for s in sorted(set(shapes))}
    flops = sum(2 * m * k * n for m, k, n in shapes)
    secs = sum(2 * m * k * n / (rate[(m, k, n)][0] * 1e9) for m, k, n in shapes)
    return {"gflops": round(flops / secs / 1e9, 1), "rows": rows,
            "shapes": [{"m": m, "k": k, "n": n, "backend": be, "gflops": round(g, 1)} for (m, k, n), (g, be) in rate.items()]}


def honest_peak(transformer=None, rows: int | None = None, dtype=torch.float32, repeats: int = 5,
                sizes=(256, 512, 1024, 2048, 3072)) -> dict:
    """The one peak every "% of peak" in minimuse is measured against: the best of the square-size peak and the
    model-shape peak (when a model is given), with both parts kept for the record. On the model's device: a model
    on a GPU is measured against cuBLAS's peak on that GPU, over larger sizes."""
    device = next(transformer.parameters()).device if transformer is not None else torch.device("cpu")
    if device.type == "cuda" and sizes == (256, 512, 1024, 2048, 3072):
        sizes = CUDA_SIZES
    square = matmul_peak(dtype, sizes, repeats, device)
    shaped = model_gemm_peak(transformer, rows, dtype, repeats) if transformer is not None else None
    best = max(square["gflops"], shaped["gflops"] if shaped else 0.0)
    return {"dtype": str(dtype).replace("torch.", ""), "gflops": best, "square": square, "model_shapes": shaped}


def count_flops(fn) -> int:
    with _flop_counter()(display=False) as counter:
        fn()
    return counter.get_total_flops()


# --------------------------------------------------------------------------------------- training: `train --report`
def train_step_flops(model, inputs, labels, text, text_mask, extra: dict, label_smoothing: float, precision: str) -> int:
    """FLOPs of one training step's forward and backward, counted by FlopCounterMode on a copy of the model (the
    optimizer's elementwise update is not a matmul and is not counted, as in every MFU figure)."""
    import copy
    m = copy.deepcopy(model).train()
    with _flop_counter()(display=False) as counter:
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = masked_ce(m(inputs, text, text_mask, **extra), labels, label_smoothing)  # extra: the super-res lowres_ids
        loss.backward()
    return counter.get_total_flops()


def train_report(timing: dict, elapsed_s: float, flops_per_step: int, peak: dict) -> dict:
    """Where a training run's time went and how fast its steps ran: steps/s and GFLOP/s over the seconds spent in
    steps (forward, backward, optimizer), against `honest_peak` of the precision trained in."""
    steps, step_s = timing["steps"], max(timing["step_s"], 1e-9)
    gflops = flops_per_step * steps / step_s / 1e9
    return {"minutes": round(elapsed_s / 60, 2), "steps": steps, "steps_per_s": round(steps / step_s, 2),
            "gflop_per_step": float(f"{flops_per_step / 1e9:.4g}"), "achieved_gflops": float(f"{gflops:.4g}"),
            "peak_gflops": peak["gflops"], "precision": peak["dtype"], "fraction_of_peak": float(f"{gflops / peak['gflops']:.4g}"),  # 4 figures: a tiny model on a GPU is far below 1e-4
            **{k: round(timing[k], 3) for k in ("setup_s", "step_s", "eval_s", "ckpt_s")}}


def format_train_report(r: dict) -> str:
    return (f"report: {r['minutes']:.1f} min (setup {r['setup_s']:.0f} s, steps {r['step_s']:.0f} s, eval {r['eval_s']:.0f} s, "
            f"checkpoints {r['ckpt_s']:.0f} s); {r['steps']} steps at {r['steps_per_s']:.2f} steps/s; "
            f"{r['achieved_gflops']:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.0f}% of the {r['precision']} peak "
            f"{r['peak_gflops']:.0f} GFLOP/s (peak.honest_peak)")


def write_train_report(out_dir, cfg: Config, model, timing: dict, elapsed_s: float, batch, precision: str) -> dict:
    """What `train --report` writes to out_dir/report.json. The FLOPs of the last step's batch and the matmul peak of
    the precision trained in ("bf16" or "no") are both measured after training, so neither is charged to its minutes."""
    name = "bf16" if precision == "bf16" else "fp32"
    flops = train_step_flops(model, *batch, cfg.train.label_smoothing, name)
    rows = batch[0].shape[0] * batch[0].shape[1]  # B * L: the GEMM rows of one step
    peak = honest_peak(model, rows, torch.bfloat16 if name == "bf16" else torch.float32, repeats=3)
    result = train_report(timing, elapsed_s, flops, peak)
    atomic_write_json(os.path.join(out_dir, "report.json"), result)
    return result
