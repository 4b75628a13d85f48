"""Sweep the sampling settings of a checkpoint and judge each with `minimuse eval` (eval.evaluate).

    python docs/sampling_sweep.py 1 [CHECKPOINT] > docs/results/sampling_sweep.jsonl        # everything, 64 prompts per kind
    python docs/sampling_sweep.py 2 [CHECKPOINT] > docs/results/sampling_sweep_fine.jsonl   # the close calls, 256 per kind

One JSON line per setting: the setting, overall faithfulness, per kind and per count. Every setting sees the same
held-out prompts and seeds, so differences come from the setting alone. docs/SAMPLING.md reports the tables
(docs/sweep_table.py prints them).
"""
import json
import sys
import time

from minimuse.eval import evaluate

BASE = dict(num_steps=12, guidance_scale=1.5, guidance_schedule="constant", choice_temperature=1.0,
            sampler="confidence", schedule="cosine")
RAMP = dict(guidance_schedule="linear")
ROUNDS = {
    1: (64, [
        ("base", {}),
        ("guidance 0", dict(guidance_scale=0.0)),
        ("guidance 3 constant", dict(guidance_scale=3.0)),
        ("guidance 3 ramp (Muse)", dict(guidance_scale=3.0, **RAMP)),
        ("guidance 5 ramp", dict(guidance_scale=5.0, **RAMP)),
        ("choice temperature 0.5", dict(choice_temperature=0.5)),
        ("choice temperature 2", dict(choice_temperature=2.0)),
        ("choice temperature 4.5 (MaskGIT)", dict(choice_temperature=4.5)),
        ("halton order", dict(sampler="halton")),
        ("random order", dict(sampler="random")),
        ("linear schedule", dict(schedule="linear")),
        ("8 steps", dict(num_steps=8)),
        ("24 steps", dict(num_steps=24)),
    ]),
    2: (256, [
        ("base", {}),
        ("guidance 1 constant", dict(guidance_scale=1.0)),
        ("guidance 2 constant", dict(guidance_scale=2.0)),
        ("guidance 2 ramp", dict(guidance_scale=2.0, **RAMP)),
        ("guidance 3 ramp (Muse)", dict(guidance_scale=3.0, **RAMP)),
        ("choice temperature 0.5", dict(choice_temperature=0.5)),
        ("16 steps", dict(num_steps=16)),
        ("24 steps", dict(num_steps=24)),
        ("24 steps, guidance 3 ramp", dict(num_steps=24, guidance_scale=3.0, **RAMP)),
        ("24 steps, guidance 1 constant", dict(num_steps=24, guidance_scale=1.0)),
    ]),
}

if __name__ == "__main__":
    n, sweep = ROUNDS[int(sys.argv[1]) if len(sys.argv) > 1 else 1]
    ckpt = sys.argv[2] if len(sys.argv) > 2 else "data/checkpoints/laptop"
    for name, change in sweep:
        t = time.time()
        f = evaluate(ckpt, n=n, tokenizer_n=0, **{**BASE, **change})["faithfulness"]
        print(json.dumps({"name": name, **change, "overall": f["overall"], "by_kind": f["by_kind"],
                          "by_count": f["by_count"], "n_per_kind": n, "seconds": round(time.time() - t, 1)}), flush=True)
