"""Sweep the sampling settings of a checkpoint and judge each with `minimuse eval` (eval.evaluate).

    python docs/sampling_sweep.py [CHECKPOINT] [N_PER_KIND] > docs/sampling_sweep.jsonl

One JSON line per setting: the setting, overall faithfulness, per kind and per count. Every setting sees the same
held-out prompts and seeds, so differences come from the setting alone. docs/SAMPLING.md reports the table.
"""
import json
import sys
import time

from minimuse.eval import evaluate

BASE = dict(num_steps=12, guidance_scale=1.5, guidance_schedule="constant", choice_temperature=1.0,
            sampler="confidence", schedule="cosine")
SWEEP = [
    ("base", {}),
    ("guidance 0", dict(guidance_scale=0.0)),
    ("guidance 3 constant", dict(guidance_scale=3.0)),
    ("guidance 3 ramp (Muse)", dict(guidance_scale=3.0, guidance_schedule="linear")),
    ("guidance 5 ramp", dict(guidance_scale=5.0, guidance_schedule="linear")),
    ("choice temperature 0.5", dict(choice_temperature=0.5)),
    ("choice temperature 2", dict(choice_temperature=2.0)),
    ("choice temperature 4.5 (MaskGIT)", dict(choice_temperature=4.5)),
    ("halton order", dict(sampler="halton")),
    ("random order", dict(sampler="random")),
    ("linear schedule", dict(schedule="linear")),
    ("8 steps", dict(num_steps=8)),
    ("24 steps", dict(num_steps=24)),
]

if __name__ == "__main__":
    ckpt = sys.argv[1] if len(sys.argv) > 1 else "data/checkpoints/laptop"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    for name, change in SWEEP:
        t = time.time()
        f = evaluate(ckpt, n=n, tokenizer_n=0, **{**BASE, **change})["faithfulness"]
        print(json.dumps({"name": name, **change, "overall": f["overall"], "by_kind": f["by_kind"],
                          "by_count": f["by_count"], "n_per_kind": n, "seconds": round(time.time() - t, 1)}), flush=True)
