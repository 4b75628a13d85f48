"""Tokens changed after their first commit, per step, for the samplers that may revise (remask, critic) and for
confidence decoding, on held-out prompts with the shipped checkpoint.

Usage: .venv/bin/python docs/revisions_plot.py data/checkpoints/laptop 64 12 docs/revisions.png
"""
import json
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minimuse.data import eval_prompts  # noqa: E402
from minimuse.pipeline import load_pipeline  # noqa: E402
from minimuse.sampler import revisions  # noqa: E402

ckpt, n, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pipe = load_pipeline(ckpt, device="cpu", superres=False)
prompts = [c for c, _, _ in eval_prompts(n, pipe.config.data.eval_seed)][::5][:n]  # n prompts across the five kinds
rows = {}
for name, kw in (("confidence", {}), ("remask, p = 0.05", {"remask_prob": 0.05}), ("remask, p = 0.2", {"remask_prob": 0.2}),
                 ("critic", {})):
    sampler = name.split(",")[0]
    _, hist = pipe.sample_ids(prompts, pipe.settings(sampler=sampler, num_steps=steps, **kw), seed=0, return_history=True)
    rows[name] = revisions(hist)
fig, ax = plt.subplots(figsize=(6.4, 4))
for name, r in rows.items():
    ax.plot(np.arange(1, steps + 1), r, "o-", label=name)
ax.set_xlabel(f"step (of {steps})")
ax.set_ylabel("tokens per image differing from their first commit")
ax.set_title(f"revisions per step, mean over n = {len(prompts)} held-out prompts (of 64 tokens)")
ax.legend()
fig.tight_layout()
fig.savefig(out, dpi=110)
print(json.dumps({"n": len(prompts), "steps": steps, "revisions": rows}))
