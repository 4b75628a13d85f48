"""Faithfulness against minutes for laptop training recipes on one plot, with 95% Wilson intervals: overall, pairs
and mixed captions (the two kinds that bind).

Usage: python docs/recipe_curves.py OUT.png LABEL=RUN_DIR[+OFFSET_S] ...

Each RUN_DIR holds the log.jsonl of `minimuse train` (quick evaluations: 32 held-out prompts per kind, 160 in all,
at the preset's sampling defaults). Minutes are the log's elapsed_s, which counts the whole command (token pool and
text table included) since this round; a log written before then counted only the training loop, so +OFFSET_S adds
the setup it left out (the shipped run's pool took about 90 s). Prints a markdown table of the last evaluation of each.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minimuse.metrics import wilson  # noqa: E402

KINDS = ("single", "count", "relation", "pair", "mixed")


def load(spec: str):
    label, rest = spec.split("=", 1)
    path, _, offset = rest.partition("+")
    log = [json.loads(line) for line in (Path(path) / "log.jsonl").read_text().splitlines() if line.strip()]
    ev = [r for r in log if "faithfulness" in r]
    return label, ev, float(offset or 0)


def main(out: str, specs: list[str]):
    runs = [load(s) for s in specs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, (label, ev, offset) in enumerate(runs):
        minutes = [(r["elapsed_s"] + offset) / 60 for r in ev]
        for ax, key, n in ((axes[0], "faithfulness", 160), (axes[1], "faith_pair", 32), (axes[2], "faith_mixed", 32)):
            p = [r[key] for r in ev]
            lo, hi = zip(*(wilson(x, n) for x in p))
            ax.plot(minutes, p, marker=".", color=f"C{i}", label=label)
            ax.fill_between(minutes, lo, hi, color=f"C{i}", alpha=0.15)
    axes[0].set(title="overall faithfulness (160 prompts, 95% interval)", xlabel="minutes on 2 CPU cores, whole command",
                ylim=(0, 1))
    axes[1].set(title="pairs (32 prompts, 95% interval)", xlabel="minutes on 2 CPU cores, whole command", ylim=(0, 1))
    axes[2].set(title="mixed captions (32 prompts, 95% interval)", xlabel="minutes on 2 CPU cores, whole command",
                ylim=(0, 1))
    for ax in axes:
        for x, what in ((5, "the speedrun's goal"), (15, "15 minutes")):  # docs/SPEEDRUN.md
            ax.axvline(x, color="grey", ls=":" if x == 5 else "--", lw=0.8)
            ax.text(x, 0.02, f" {what}", fontsize=7, color="grey", rotation=90, va="bottom")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print("| recipe | minutes | step | " + " | ".join(KINDS) + " | overall |")
    print("|---" * (4 + len(KINDS)) + "|")
    for label, ev, offset in runs:
        r = ev[-1]
        print(f"| {label} | {(r['elapsed_s'] + offset) / 60:.1f} | {r['step']} | "
              + " | ".join(f"{r[f'faith_{k}']:.2f}" for k in KINDS) + f" | {r['faithfulness']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
