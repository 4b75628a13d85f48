"""Seconds to draw a batch of images with confidence decoding and with the remask sampler, alternated in one process.

remask scores committed tokens too, so it runs the head at every position (sampler.sample's same_count is False for
it); confidence decoding runs it only at the masked positions.

Usage: .venv/bin/python docs/remask_time.py CHECKPOINT BATCH REPEATS > out.json
"""
import json
import statistics
import sys
import time

import torch

from minimuse.data import eval_prompts
from minimuse.pipeline import load_pipeline

ckpt, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pipe = load_pipeline(ckpt, device="cpu", superres=False)
prompts = [c for c, _, _ in eval_prompts(batch, pipe.config.data.eval_seed)][::5][:batch]  # across the five kinds
settings = {"confidence": {"sampler": "confidence"}, "remask, p = 0.35": {"sampler": "remask", "remask_prob": 0.35}}
pipe(prompts[:8], superres=False)  # warm-up
times = {name: [] for name in settings}
for _ in range(repeats):
    for name, kw in settings.items():
        t0 = time.perf_counter()
        pipe(prompts, superres=False, **kw)
        times[name].append(time.perf_counter() - t0)
print(json.dumps({"checkpoint": ckpt, "batch": batch, "repeats": repeats, "threads": torch.get_num_threads(),
                  "seconds": times, "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
                  "ratio_remask_to_confidence": round(statistics.median(times["remask, p = 0.35"])
                                                      / statistics.median(times["confidence"]), 3)}, indent=1))
