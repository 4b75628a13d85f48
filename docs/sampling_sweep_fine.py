"""The second round of docs/sampling_sweep.py: the settings that came close, at 256 held-out prompts per kind.

    python docs/sampling_sweep_fine.py [CHECKPOINT] > docs/results/sampling_sweep_fine.jsonl
"""
import json
import sys
import time

from minimuse.eval import evaluate

BASE = dict(num_steps=12, guidance_scale=1.5, guidance_schedule="constant", choice_temperature=1.0,
            sampler="confidence", schedule="cosine")
SWEEP = [
    ("base", {}),
    ("guidance 1 constant", dict(guidance_scale=1.0)),
    ("guidance 2 constant", dict(guidance_scale=2.0)),
    ("guidance 2 ramp", dict(guidance_scale=2.0, guidance_schedule="linear")),
    ("guidance 3 ramp (Muse)", dict(guidance_scale=3.0, guidance_schedule="linear")),
    ("choice temperature 0.5", dict(choice_temperature=0.5)),
    ("16 steps", dict(num_steps=16)),
    ("24 steps", dict(num_steps=24)),
    ("24 steps, guidance 3 ramp", dict(num_steps=24, guidance_scale=3.0, guidance_schedule="linear")),
]

if __name__ == "__main__":
    ckpt = sys.argv[1] if len(sys.argv) > 1 else "data/checkpoints/laptop"
    for name, change in SWEEP:
        t = time.time()
        f = evaluate(ckpt, n=256, tokenizer_n=0, **{**BASE, **change})["faithfulness"]
        print(json.dumps({"name": name, **change, "overall": f["overall"], "by_kind": f["by_kind"],
                          "by_count": f["by_count"], "n_per_kind": 256, "seconds": round(time.time() - t, 1)}), flush=True)
