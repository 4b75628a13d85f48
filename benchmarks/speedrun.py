"""The speedrun harness: the whole training command, then the n = 256 evaluation, as one record row.

    python benchmarks/speedrun.py --name r0 --change "the laptop recipe as shipped" [--seed 1] [-- --set train.steps=6000 ...]

Runs, one after the other and alone on the machine (nothing else may run beside it, or the minutes mean nothing):
1. `minimuse train --preset PRESET --out RUNS/NAME --tokenizer data/checkpoints/laptop/tokenizer --report [ARGS]`,
   timed as a whole: token pool, text table and quick evaluations included, as a learner would wait for it;
2. `minimuse eval --checkpoint RUNS/NAME --n 256 --tokenizer-n 0` at the checkpoint's own sampling defaults: the
   shipped ones, unless the run's ARGS change `sample.*` (its record's change should say so).
Then it copies the run's log, report and evaluation to docs/results/speedrun/NAME/, appends one record to
docs/results/speedrun/records.jsonl and prints it as a row of docs/SPEEDRUN.md's table:
date, what changed, minutes, steps/s, achieved GFLOP/s and its share of the bf16 peak measured in the same run
(train --report), faithfulness overall and per caption kind with 95% Wilson intervals, and the log's path; the
record also names the commit that trained ("+dirty" where tracked files had changed). A record
counts only when it holds on a second seed (`--seed`, which sets train.seed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from minimuse.checkpoint import atomic_write_text  # noqa: E402
from minimuse.metrics import wilson  # noqa: E402

RECORDS = ROOT / "docs" / "results" / "speedrun" / "records.jsonl"
KINDS = ("single", "count", "relation", "pair", "mixed")


def run(argv: list[str], stdout: Path, stderr: Path) -> float:
    """Run `minimuse ARGV` with its output in the two files; return its wall time in seconds, or stop on failure."""
    start = time.perf_counter()
    with open(stdout, "w") as out, open(stderr, "w") as err:
        code = subprocess.call([sys.executable, "-m", "minimuse", *argv], stdout=out, stderr=err,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    if code:
        sys.exit(f"speedrun: `minimuse {' '.join(argv)}` failed (exit {code}); see {stderr}")
    return time.perf_counter() - start


def rate(p: float, n: int) -> dict:
    lo, hi = wilson(p, n)
    return {"rate": round(p, 4), "interval": [round(lo, 4), round(hi, 4)], "n": n}


def commit() -> str | None:
    """The checked-out commit that trains, with "+dirty" if tracked files differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def record(name: str, change: str, seconds: float, report: dict, faith: dict, out: Path, code: str | None = None) -> dict:
    n = faith["n_per_kind"]
    return {"date": datetime.date.today().isoformat(), "name": name, "change": change, "commit": code,
            "minutes": round(seconds / 60, 2), "steps_per_s": report["steps_per_s"],
            "achieved_gflops": report["achieved_gflops"], "peak_gflops": report["peak_gflops"],
            "fraction_of_peak": report["fraction_of_peak"], "precision": report["precision"],
            "overall": rate(faith["overall"], n * len(faith["by_kind"])),
            "by_kind": {k: rate(v, n) for k, v in faith["by_kind"].items()},
            "by_count": faith.get("by_count", {}), "log": str(out / "log.jsonl")}


def row(r: dict) -> str:
    cells = [r["date"], r["name"], r["change"], f"{r['minutes']:.1f}", f"{r['steps_per_s']:.1f}",
             f"{r['achieved_gflops']:.0f} ({r['fraction_of_peak']:.0%} of {r['peak_gflops']:.0f})"]
    cells += [f"{r['by_kind'][k]['rate']:.1%} ({r['by_kind'][k]['interval'][0]:.1%}–{r['by_kind'][k]['interval'][1]:.1%})"
              if k in r["by_kind"] else "" for k in KINDS]
    cells += [f"{r['overall']['rate']:.1%}", f"`{r['log']}`"]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="the run's name: its folder under --runs and its record's name")
    ap.add_argument("--change", required=True, help="what this run changes, in words, for the record table")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--seed", type=int, default=None, help="train.seed (a record must hold on a second seed)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "speedrun")
    ap.add_argument("--tokenizer", default=str(ROOT / "data" / "checkpoints" / "laptop" / "tokenizer"))
    ap.add_argument("--n", type=int, default=256, help="held-out prompts per caption kind")
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more `minimuse train` arguments")
    args = ap.parse_args(argv)
    out = args.runs / args.name
    if out.exists():
        ap.error(f"{out} exists: name the run anew (a record is never overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = [a for a in args.train_args if a != "--"] + (["--set", f"train.seed={args.seed}"] if args.seed is not None else [])
    logs = out.parent / args.name
    code = commit()  # read before training: the code that trains, should the checkout change during the run
    seconds = run(["train", "--preset", args.preset, "--out", str(out), "--tokenizer", args.tokenizer, "--report", *extra],
                  Path(f"{logs}.train.out"), Path(f"{logs}.train.err"))
    run(["eval", "--checkpoint", str(out), "--n", str(args.n), "--tokenizer-n", "0"], out / "eval.json",
        Path(f"{logs}.eval.err"))
    report = json.loads((out / "report.json").read_text())
    faith = json.loads((out / "eval.json").read_text())["faithfulness"]
    kept = args.records.parent / args.name  # the evidence beside the record: log, report and evaluation
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("log.jsonl", "report.json", "eval.json"):
        atomic_write_text(kept / name, (out / name).read_text())
    repo = next((d for d in kept.resolve().parents if (d / ".git").exists()), None)  # the records' checkout, not this one
    shown = kept.resolve().relative_to(repo) if repo else kept
    rec = record(args.name, args.change + (f" (seed {args.seed})" if args.seed is not None else ""), seconds, report, faith,
                 shown, code)
    prior = args.records.read_text() if args.records.exists() else ""
    atomic_write_text(args.records, prior + json.dumps(rec) + "\n")
    print(row(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
