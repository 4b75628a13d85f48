"""Peak resident memory of one `minimuse generate` call, measured inside the process (ru_maxrss), with the stages.

    python docs/peak_rss.py                      # the shipped laptop checkpoint, one prompt
    python docs/peak_rss.py --checkpoint DIR     # another pipeline checkpoint
    python docs/peak_rss.py --no-superres        # the base stage's 32 px image (the super-res stage still loads)
Prints one JSON line: peak RSS in MiB (ru_maxrss is in KiB on Linux) at start, after importing torch and after generating.
"""
import argparse
import json
import resource
import tempfile
from pathlib import Path


def peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--prompt", default="two red circles")
    ap.add_argument("--no-superres", action="store_true")
    args = ap.parse_args()
    out = {"python": peak_mib()}
    import torch  # noqa: F401
    out["import_torch"] = peak_mib()
    from minimuse.cli import main
    with tempfile.TemporaryDirectory() as d:
        argv = ["generate", args.prompt, "--out", str(Path(d) / "out.png")]
        rc = main(argv + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
                  + (["--no-superres"] if args.no_superres else []))
    out["generate"] = peak_mib()
    out["superres"] = not args.no_superres
    out["exit_code"] = rc
    print(json.dumps(out))
