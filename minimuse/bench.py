"""Speed: ms per image, tokens/s and achieved GFLOP/s of the sampler, against this machine's matmul peak.

Muse's case for parallel decoding (§1, Table 5: 0.5 s per image against Parti's 6.4 s) is speed, so minimuse
measures it rather than assuming it: the matmul peak (fp32 and bf16: the best over square sizes, torch's two CPU GEMM
backends and the model's own GEMM shapes, `honest_peak`) is measured in the same run, FLOPs of a sampling call are
counted by torch's FlopCounterMode (not estimated). `compare_ar` times parallel decoding against the cached
autoregressive baseline of equal size (autoregressive.py) at 64, 256 and 1024 tokens. `minimuse bench` prints the
JSON; docs/BENCHMARKS.md and docs/AUTOREGRESSIVE.md record it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import time

import torch

from . import transformer as transformer_mod
from .autoregressive import ARTransformer
from .checkpoint import atomic_write_json, read_config
from .config import Config
from .limits import check_config_memory
from .sampler import sample
from .scheduler import masked_ce
from .superres import SuperResTransformer
from .transformer import MaskedTransformer


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


def backends(device="cpu") -> list[str]:
    if torch.device(device).type == "cuda":
        return ["cuda"]
    return ["torch.mm"] + (["onednn"] if transformer_mod._ONEDNN_LINEAR is not None else [])


CUDA_SIZES = (1024, 2048, 4096, 8192)  # a GPU needs large products to reach its peak


def matmul_peak(dtype=torch.float32, sizes=(256, 512, 1024, 2048, 3072), repeats: int = 5, device="cpu") -> dict:
    """The machine's matmul peak through torch: the best GFLOP/s over square sizes, backends and repetitions.

    One short 2048^2 product is not a peak: it varies by 20% between calls, and on AMD CPUs MKL (torch.mm's fp32
    backend) runs its AVX2 path at half of what oneDNN reaches. Every candidate is returned as well as the best."""
    cands = [{"m": n, "k": n, "n": n, "backend": be, "gflops": round(_best_gflops(n, n, n, dtype, be, repeats), 1)}
             for n in sizes for be in backends(device)]
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
    rate = {s: max((_best_gflops(*s, dtype, be, repeats), be) for be in backends(device)) for s in sorted(set(shapes))}
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
    with _flop_counter()(display=False) as counter:
        fn()
    return counter.get_total_flops()


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
                def call():
                    g = torch.Generator().manual_seed(0)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        return sample(transformer, text, text_mask, uncond, None, num_steps=T,
                                      guidance_scale=guidance, guidance_schedule=cfg.sample.guidance_schedule,
                                      choice_temperature=cfg.sample.choice_temperature, generator=g)
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
                 cls(dataclasses.replace(cfg.transformer, kind=cls.ARCH), cfg.tokenizer.codebook_size, (side, side), E))
            models[kind] = m.eval().to(device)
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        for B in batch_sizes:
            text = torch.randn(B, text_tokens, E).to(device)
            text_mask = torch.ones(B, text_tokens, dtype=torch.bool, device=device)
            uncond = torch.randn(1, 2, E).to(device)  # "" is [CLS][SEP]
            calls = {kind: (lambda m=m: (sample(m, text, text_mask, uncond, None, num_steps=min(s.num_steps, L),
                                                schedule=s.schedule, guidance_scale=w, guidance_schedule=s.guidance_schedule,
                                                choice_temperature=s.choice_temperature,
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
            base = _timed(lambda: sample(transformer, text, text_mask, uncond, None, num_steps=s.num_steps,
                                         guidance_scale=s.guidance_scale, guidance_schedule=s.guidance_schedule,
                                         choice_temperature=s.choice_temperature, generator=torch.Generator().manual_seed(0)),
                          repeats)
            up = _timed(lambda: sample(model, text, text_mask, uncond, None, num_steps=sr.num_steps,
                                       guidance_scale=sr.guidance_scale, temperature=sr.temperature, lowres_ids=lowres,
                                       generator=torch.Generator().manual_seed(0)), repeats)
        rows.append({"batch": B, "base_ms_per_image": round(1000 * base / B, 2), "superres_ms_per_image": round(1000 * up / B, 2),
                     "cascade_ms_per_image": round(1000 * (base + up) / B, 2), "superres_share": round(up / (base + up), 3),
                     "base_steps": s.num_steps, "superres_steps": sr.num_steps})
    return rows


def _cpu_name() -> str:
    try:  # platform.processor() is empty on most Linux builds
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


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
            f"{r['peak_gflops']:.0f} GFLOP/s (bench.honest_peak)")


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
