"""Refactors change no behaviour: every trainer's weights after a few ci steps, and the images of every sampler and
edit on the shipped checkpoints, hash to what benchmarks/reference.py recorded on this machine before the refactor."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import reference  # noqa: E402  (a benchmark script, imported for its check)

pytestmark = pytest.mark.slow


def test_outputs_match_the_reference_of_this_machine(capsys):
    path = reference.REFERENCE_DIR / f"{reference.machine_key()}.json"
    if not path.is_file():
        pytest.skip(f"no reference for this machine ({reference.machine_key()}): record one on the commit before a "
                    "refactor with `python benchmarks/reference.py --record`")
    code = reference.main([])
    report = capsys.readouterr().out
    assert code == 0, f"outputs changed:\n{report}"
    assert report.count(" same") == len(json.loads(path.read_text())["outputs"]), report  # every output was checked
