"""pytest set-up shared by the unit tests and nbval.

nbval compares stream outputs; stderr (tqdm bars, warnings, library chatter) differs between runs
and machines, so it is dropped from both sides of every comparison.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

try:
    import nbval.plugin as _nbval
except ImportError:  # nbval is a dev extra
    _nbval = None

if _nbval is not None:
    _coalesce = _nbval.coalesce_streams

    def _coalesce_without_stderr(outputs):
        return _coalesce([o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")])

    _nbval.coalesce_streams = _coalesce_without_stderr
