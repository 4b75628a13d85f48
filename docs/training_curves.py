"""Draw docs/laptop_training.png and print the table in docs/TRAINING.md from a run's log.jsonl.

Usage: python docs/training_curves.py [data/checkpoints/laptop/log.jsonl]
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

path = Path(sys.argv[1] if len(sys.argv) > 1 else "data/checkpoints/laptop/log.jsonl")
log = [json.loads(line) for line in path.read_text().splitlines()]
ev = [r for r in log if "faithfulness" in r]
kinds = ("single", "count", "relation", "pair", "mixed")

fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
ax[0].plot([r["step"] for r in log], [r["loss"] for r in log])
ax[0].set(title="loss (CE, label smoothing 0.1)", xlabel="step")
ax[1].plot([r["step"] for r in log], [r["masked_acc"] for r in log])
ax[1].set(title="masked-token accuracy", xlabel="step")
for k in kinds:
    ax[2].plot([r["elapsed_s"] / 60 for r in ev], [r[f"faith_{k}"] for r in ev], marker=".", label=k)
ax[2].set(title="faithfulness, 32 prompts per kind", xlabel="minutes on 2 CPU cores", ylim=(0, 1))
ax[2].legend(fontsize=7)
fig.tight_layout()
out = Path(__file__).with_name("laptop_training.png")
fig.savefig(out, dpi=90)

print("| step | minutes | loss | masked acc | " + " | ".join(kinds) + " | overall |")
print("|---" * (5 + len(kinds)) + "|")
by_step = {r["step"]: r for r in log}
for r in ev:
    print(f"| {r['step']} | {r['elapsed_s'] / 60:.1f} | {r['loss']:.3f} | {r['masked_acc']:.3f} | "
          + " | ".join(f"{r[f'faith_{k}']:.2f}" for k in kinds) + f" | {r['faithfulness']:.2f} |")
