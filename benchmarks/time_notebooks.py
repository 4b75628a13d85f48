"""Run the lesson notebooks and the appendices (and, when named, the solutions) top to bottom, one at a time, and
record how long each takes (notebooks/timings.json).

This is how the stored outputs are made and how each notebook's "Runtime on a 2-core CPU" header is measured, in
one run: every notebook is executed in a fresh kernel under one preset (the README's `laptop`), with the shipped
checkpoints, and its wall time is recorded. With --inplace the executed notebook replaces the stored one
(atomically) and is cleaned with `nbstripout --keep-output --keep-count`. Run it on an idle machine, alone:

    python benchmarks/time_notebooks.py --preset laptop --inplace
    python benchmarks/time_notebooks.py solutions/05_solutions ... --preset laptop --inplace   # solutions, by name

tests/test_notebook_hygiene.py checks that every header states the runtime this file records (`runtime_phrase`).
A run of some notebooks keeps the others' times; `measured_on` says which day measured each, since this machine's
speed drifts from day to day. `total_s` is the lesson sequence (00 to 10), without the appendices.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TIMINGS = NOTEBOOKS / "timings.json"


def name_of(path: Path) -> str:
    """A lesson's stem ("05_training"), or an appendix's or a solution's path under notebooks/
    ("appendix/A2_engineering", "solutions/05_solutions")."""
    return path.stem if path.parent == NOTEBOOKS else f"{path.parent.name}/{path.stem}"


def runtime_phrase(seconds: float) -> str:
    """The header's wording for a measured wall time: coarse on purpose, since machines differ by tens of percent."""
    if seconds < 10:
        return "under 10 seconds"
    if seconds < 55:
        return f"about {10 * round(seconds / 10)} seconds"
    minutes = seconds / 60
    if minutes < 1.5:
        return "about 1 minute"
    if minutes < 10:
        half = round(minutes * 2) / 2
        return f"about {half:g} minutes"
    return f"about {round(minutes)} minutes"


def execute(path: Path, timeout: int) -> tuple[float, object]:
    """Run one notebook in a fresh kernel (which inherits MINIMUSE_PRESET), in its own folder; return (seconds, notebook)."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor
    nb = nbformat.read(path, as_version=4)
    ep = ExecutePreprocessor(timeout=timeout, kernel_name="python3")
    start = time.perf_counter()
    ep.preprocess(nb, {"metadata": {"path": str(path.parent)}})
    return time.perf_counter() - start, nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook stems, appendix/NAME or solutions/NAME "
                                              "(default: every lesson and appendix)")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--inplace", action="store_true", help="store the executed notebooks (the course's outputs)")
    ap.add_argument("--timeout", type=int, default=2400, help="seconds per cell")
    ap.add_argument("--out", type=Path, default=TIMINGS)
    args = ap.parse_args(argv)
    from minimuse.checkpoint import atomic_write_json, atomic_write_text
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) + sorted((NOTEBOOKS / "appendix").glob("A[0-9]_*.ipynb"))
    if args.names:
        known = paths + sorted((NOTEBOOKS / "solutions").glob("[0-9][0-9]_solutions.ipynb"))
        unknown = set(args.names) - {name_of(p) for p in known}
        if unknown:
            ap.error(f"unknown notebook(s) {sorted(unknown)}; choose from: {', '.join(name_of(p) for p in known)}")
        paths = [p for p in known if name_of(p) in args.names]
    os.environ.update(MINIMUSE_PRESET=args.preset, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    os.environ.pop("MPLBACKEND", None)  # the inline backend, as in a learner's Jupyter
    import nbformat
    record = json.loads(args.out.read_text()) if args.out.exists() else {"notebooks": {}}  # other notebooks keep theirs
    for path in paths:
        seconds, nb = execute(path, args.timeout)
        print(f"{name_of(path):<26} {seconds:7.1f} s  ({runtime_phrase(seconds)})", flush=True)
        times = record.setdefault("notebooks" if path.parent == NOTEBOOKS else path.parent.name, {})  # or appendix, solutions
        times[path.stem] = round(seconds, 1)
        record.setdefault("measured_on", {})[name_of(path)] = datetime.date.today().isoformat()
        if args.inplace:
            atomic_write_text(path, nbformat.writes(nb) + "\n")
            subprocess.run([shutil.which("nbstripout") or str(Path(sys.executable).parent / "nbstripout"),
                            "--keep-output", "--keep-count", str(path)], check=True)
        _stamp(record, args)
        atomic_write_json(args.out, record)  # after every notebook: a failure later keeps what was measured
    print(f"lessons: {record['total_s'] / 60:.1f} minutes over {len(record['notebooks'])} notebooks -> {args.out.name}")
    return 0


def _stamp(record, args):
    import torch
    record.update(
        preset=args.preset, date=datetime.date.today().isoformat(),
        machine={"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor()
                 or platform.machine(), "torch": torch.__version__, "gpu": torch.cuda.is_available()},
        command=f"python benchmarks/time_notebooks.py --preset {args.preset}" + (" --inplace" if args.inplace else ""),
        total_s=round(sum(record["notebooks"].values()), 1))


if __name__ == "__main__":
    sys.exit(main())
