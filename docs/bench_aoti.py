"""Ahead-of-time compiled blocks against the shipped eager ones: what AOTInductor would pay, measured side by side.

    python docs/bench_aoti.py --checkpoint data/checkpoints/laptop --batch 1 --steps 24 --guidance 1.0 \
        > docs/results/bench_aoti_laptop_b1.json
    python docs/bench_aoti.py --set width=256 --set depth=6 > docs/results/bench_aoti_w256_b16.json

`torch.compile` does not pay on this CPU (docs/BENCHMARKS.md): inductor lowers fp32 linear layers to MKL's GEMM,
which takes its AVX2 path on AMD CPUs, and each call of a compiled function first checks its guards. AOTInductor
(`torch.export` + `aoti_compile_and_package`) with weight freezing is the other route: in ahead-of-time mode inductor
packs the frozen fp32 weights for oneDNN's linear (AVX-512 here) and can fuse what lies between the GEMMs, and the
compiled library is called without guards. Here it compiles the blocks (`run_blocks`, fixed shapes for one batch
size and text length) once, and `sample()` is timed with the blocks served by the compiled library or by the shipped
eager code, in interleaved rounds as in docs/bench_ablation.py, and so are the blocks alone (`blocks_us_per_call`).
The JSON also gives each variant's fraction of the fp32 peak, the time to export, compile and load the blocks
(`compile_s`), the largest difference between the two blocks' outputs, and for how many of `--seeds` seeds the two
draw identical tokens (packed GEMMs and fused kernels sum in another order, so the outputs differ in the last bits).
Not shipped; see the page.
"""
import argparse
import json
import statistics
import tempfile
import time
from unittest import mock

import torch

from minimuse import decoding, transformer as transformer_mod
from minimuse.peak import count_flops, honest_peak
from bench_ablation import header, interleaved, setting  # docs/, the directory of this script


class _Blocks(torch.nn.Module):
    """The transformer's blocks as a module of their own, so that torch.export sees only them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, layers):
        return type(self.model).run_blocks(self.model, x, layers)[0]  # (2B, L, D)


def compile_blocks(model, x, layers, workdir):
    """The blocks exported at these shapes and compiled by AOTInductor with frozen weights -> a callable(x, layers)."""
    with mock.patch.object(transformer_mod, "USE_ONEDNN", False):  # F.linear: inductor picks the GEMM itself
        program = torch.export.export(_Blocks(model).eval(), (x, layers))
    path = torch._inductor.aoti_compile_and_package(program, package_path=f"{workdir}/blocks.pt2",
                                                    inductor_configs={"freezing": True})
    return torch._inductor.aoti_load_package(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=32, help="seeds whose tokens are compared")
    args, model, (text, mask, uncond), call = setting(ap)
    if args.guidance <= 0:
        raise SystemExit("--guidance must be > 0: the compiled blocks are built for the guided batch of 2B rows")
    B = args.batch

    with torch.inference_mode():  # example inputs as sample() builds them: cond rows first, the "" text shared
        guided = decoding.Guided(model, text, mask, uncond, None, [args.guidance])
        layers = model.text_layers(guided.ctx_both, 2 * B)
        x = torch.randn(2 * B, model.grid[0] * model.grid[1], model.cfg.width)  # (2B, L, D)
        eager_out = model.run_blocks(x, layers)[0]
    with tempfile.TemporaryDirectory() as workdir:
        t = time.perf_counter()
        with torch.no_grad():
            blocks = compile_blocks(model, x, layers, workdir)
        compile_s = time.perf_counter() - t
        with torch.inference_mode():
            max_diff = (blocks(x, layers) - eager_out).abs().max().item()

        served = []  # one entry per call of the compiled blocks

        def aot(seed=0):
            def run_blocks(x, layers, attn=False):
                served.append(1)
                return blocks(x, layers), [None] * len(layers)
            model.run_blocks = run_blocks  # forward calls self.run_blocks: the instance attribute shadows the method
            try:
                return call(seed=seed)
            finally:
                del model.run_blocks

        same = sum(bool(torch.equal(call(seed=s), aot(s))) for s in range(args.seeds))
        if len(served) != args.seeds * args.steps:  # else the comparison below would time eager against eager
            raise SystemExit(f"the compiled blocks served {len(served)} of {args.seeds * args.steps} forward passes")

        def blocks_10x(fn):  # the blocks alone, 10 calls on the example inputs
            def run():
                with torch.inference_mode():
                    for _ in range(10):
                        fn(x, layers)
            return run

        variants = {"eager blocks (shipped)": call, "AOTInductor blocks, frozen weights": aot,
                    "blocks alone: eager": blocks_10x(model.run_blocks), "blocks alone: aot": blocks_10x(blocks)}
        seconds = interleaved(variants, args.rounds)
    times = {name: [1000 * s / B for s in seconds[name]] for name in list(variants)[:2]}  # ms/image
    blocks_us = {name: [1e5 * s for s in seconds[f"blocks alone: {name}"]] for name in ("eager", "aot")}  # us/call
    base = statistics.median(times["eager blocks (shipped)"])
    flops = count_flops(call)
    peak = honest_peak(model, 2 * B * model.grid[0] * model.grid[1])
    out = {**header(args, model, peak), "gflop_per_image": round(flops / B / 1e9, 4),
           "compile_s": round(compile_s, 1), "blocks_max_abs_diff": max_diff,
           "same_tokens": {"seeds": args.seeds, "identical": same},
           "blocks_us_per_call": {k: round(statistics.median(v), 1) for k, v in blocks_us.items()},
           "variants": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        out["variants"][name] = {"ms_per_image": round(med, 2), "min": round(min(ts), 2), "max": round(max(ts), 2),
                                 "vs_shipped": round(med / base, 3),
                                 "fraction_of_peak": round(flops / B / med / 1e6 / peak["gflops"], 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
