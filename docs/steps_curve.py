"""Faithfulness of a masked checkpoint against the number of decoding steps (its other sampling defaults kept),
n held-out prompts per kind, one JSON line per step count with the 95% Wilson interval.

Usage: .venv/bin/python docs/steps_curve.py CHECKPOINT N STEPS...   (docs/AUTOREGRESSIVE.md: runs/laptop-r3 256 24 12 8 6 4 3 2)
"""
import json
import sys
import time

from minimuse.measures import eval_faithfulness
from minimuse.metrics import wilson
from minimuse.pipeline import load_pipeline

ckpt, n, steps = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3:]]
pipe = load_pipeline(ckpt, device="cpu", superres=False)
for T in steps:
    t = time.time()
    r = eval_faithfulness(pipe, n, num_steps=T)
    N = n * len(r["by_kind"])
    lo, hi = wilson(r["overall"], N)
    print(json.dumps({"num_steps": T, "overall": r["overall"], "ci95": [round(lo, 4), round(hi, 4)], "n": N,
                      "by_kind": r["by_kind"], "settings": r["settings"], "seconds": round(time.time() - t, 1)}), flush=True)
