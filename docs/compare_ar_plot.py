"""Plot `minimuse bench --compare-ar` JSON: latency per image and GFLOP per image against image tokens.

Usage: .venv/bin/python docs/compare_ar_plot.py docs/results/autoregressive/compare_ar.json docs/compare_ar.png
"""
import json
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
rows = json.load(open(src))["compare_ar"]
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
for B, style in ((1, "-"), (16, "--")):
    rs = sorted((r for r in rows if r["batch"] == B), key=lambda r: r["tokens"])
    L = [r["tokens"] for r in rs]
    a.plot(L, [r["parallel_ms"] for r in rs], "o" + style, color="C0", label=f"parallel, {rs[0]['parallel_steps']} steps, batch {B}")
    a.plot(L, [r["autoregressive_ms"] for r in rs], "s" + style, color="C3", label=f"autoregressive + KV cache, batch {B}")
    if B == 1:
        b.plot(L, [r["parallel_gflop"] for r in rs], "o-", color="C0", label="parallel: T passes over all L tokens")
        b.plot(L, [r["autoregressive_gflop"] for r in rs], "s-", color="C3", label="autoregressive: L passes of one token")
for ax in (a, b):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image tokens L")
    ax.legend(fontsize=8)
a.set_ylabel("ms per image (median of %d, interleaved)" % rows[0]["repeats"])
a.set_title("latency, both with guidance, fp32, 2 CPU cores")
b.set_ylabel("GFLOP per image (counted)")
b.set_title("work per image, batch 1")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
