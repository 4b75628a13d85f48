"""Print a sweep's JSON lines (docs/sampling_sweep*.py) as the markdown table in docs/SAMPLING.md.

    python docs/sweep_table.py docs/results/sampling_sweep.jsonl
"""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
kinds = ("single", "count", "relation", "pair", "mixed")
print("| setting | overall | " + " | ".join(kinds) + " | count 2 | count 3 | count 4 | seconds |")
print("|---" * (len(kinds) + 6) + "|")
for r in rows:
    cells = [f"{100 * r['overall']:.1f}"] + [f"{100 * r['by_kind'][k]:.1f}" for k in kinds]
    cells += [f"{100 * r['by_count'][c]:.1f}" for c in ("2", "3", "4")]
    print(f"| {r['name']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
