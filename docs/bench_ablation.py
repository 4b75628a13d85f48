"""What each sampler speed-up pays: time sample() with one of them undone at a time.

    python docs/bench_ablation.py [--set width=256 --set depth=6] > docs/results/bench_ablation.json

Batch 16, 12 steps, guidance 1.5, random-initialised transformer of the laptop preset (plus overrides), random
16-token text. Undoing is done from outside, so sampler.py stays the one fast version:
- "full head": the output head runs at all L positions, not only the still-masked ones;
- "text K/V every step": the text projection and every layer's cross-attention K/V are recomputed at each step;
- "bf16 autocast": the whole call under torch.autocast("cpu", dtype=torch.bfloat16);
- "Muse ramp": guidance ramped from 0, so the first step skips the unconditional half.
"""
import argparse
import json
from unittest import mock

import torch

from minimuse import sampler
from minimuse.bench import _timed, matmul_peak_gflops
from minimuse.cli import _config
from minimuse.transformer import MaskedTransformer


class _RecomputeText(sampler._Guided):
    """_Guided, but paying for the text K/V at every call, as a loop without the cache would."""

    def __init__(self, transformer, text_emb, text_mask, *args):
        super().__init__(transformer, text_emb, text_mask, *args)
        self.raw = (text_emb, text_mask)

    def __call__(self, ids, w, head_index=None):
        emb, mask = self.raw
        if w != 0:
            emb, mask = emb.repeat(2, 1, 1), mask.repeat(2, 1)  # (2B, T, E): cond and uncond rows
        self.model.encode_text(emb, mask)
        return super().__call__(ids, w, head_index)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = _config(args)  # the preset plus --set overrides, exactly as `minimuse bench` reads them
    torch.manual_seed(0)
    model = MaskedTransformer.from_config(cfg).eval()
    B, T, E = 16, 16, model.text_dim
    text, mask = torch.randn(B, T, E), torch.ones(B, T, dtype=torch.bool)
    uncond = torch.randn(1, T, E)

    def call(schedule="constant"):
        return sampler.sample(model, text, mask, uncond, None, num_steps=12, guidance_scale=1.5,
                              guidance_schedule=schedule, generator=torch.Generator().manual_seed(0))

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return call()

    runs = {"all speed-ups (sampler.py as shipped)": call,
            "full head": lambda: (mock.patch.object(sampler, "_head_positions", lambda m: None).start(), call(), mock.patch.stopall())[1],
            "text K/V every step": lambda: (mock.patch.object(sampler, "_Guided", _RecomputeText).start(), call(), mock.patch.stopall())[1],
            "bf16 autocast": bf16,
            "Muse ramp (step 0 skips the unconditional pass)": lambda: call("linear")}
    peak = matmul_peak_gflops()
    out = {"model": {"width": cfg.transformer.width, "depth": cfg.transformer.depth, "params": model.num_params()},
           "batch": B, "steps": 12, "guidance": 1.5, "threads": torch.get_num_threads(),
           "fp32_matmul_peak_gflops": round(peak, 1), "ms_per_image": {}}
    for name, fn in runs.items():
        out["ms_per_image"][name] = round(1000 * _timed(fn, args.repeats) / B, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
