"""benchmarks/speedrun.py: the record row of a run (no training here: a report and an evaluation are given)."""
import importlib.util
import json
from pathlib import Path

import pytest

from minimuse.metrics import wilson

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("speedrun", ROOT / "benchmarks" / "speedrun.py")
speedrun = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speedrun)

REPORT = {"steps_per_s": 11.8, "achieved_gflops": 325.6, "peak_gflops": 908.5, "fraction_of_peak": 0.3584,
          "precision": "bfloat16"}
FAITH = {"overall": 0.8789, "n_per_kind": 256, "by_count": {"2": 0.95},
         "by_kind": {"single": 0.9844, "count": 0.9141, "relation": 0.9883, "pair": 0.8711, "mixed": 0.6367}}


def test_a_record_carries_the_rates_with_their_intervals_and_the_speed_of_its_own_run(tmp_path):
    r = speedrun.record("r0", "the laptop recipe", 846.0, REPORT, FAITH, tmp_path / "r0")
    assert r["minutes"] == 14.1 and r["steps_per_s"] == 11.8 and r["fraction_of_peak"] == 0.3584
    assert r["by_kind"]["pair"]["n"] == 256 and r["overall"]["n"] == 1280
    assert r["by_kind"]["pair"]["interval"] == [round(v, 4) for v in wilson(0.8711, 256)]
    line = speedrun.row(r)
    assert line.count("|") == 14 and "87.1% (82.5%–90.7%)" in line and "36% of 908" in line
    json.dumps(r, allow_nan=False)
    assert speedrun.record("r0", "x", 1.0, REPORT, FAITH, tmp_path, "0123abcd+dirty")["commit"] == "0123abcd+dirty"


def test_the_record_names_the_commit_that_trained_and_whether_the_checkout_had_changed(tmp_path, monkeypatch):
    import subprocess
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    capture_output=True, text=True, check=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "f.py").write_text("a = 1\n")
    git("add", "f.py")
    git("commit", "-q", "-m", "one")
    monkeypatch.setattr(speedrun, "ROOT", tmp_path)
    head = git("rev-parse", "--short=12", "HEAD")
    (tmp_path / "notes.txt").write_text("untracked files are not the code that trains\n")
    assert speedrun.commit() == head
    (tmp_path / "f.py").write_text("a = 2\n")
    assert speedrun.commit() == head + "+dirty"
    monkeypatch.setattr(speedrun, "ROOT", tmp_path / "not-a-checkout")
    assert speedrun.commit() is None


def test_a_run_name_is_never_reused(tmp_path):
    (tmp_path / "r0").mkdir()
    with pytest.raises(SystemExit):
        speedrun.main(["--name", "r0", "--change", "x", "--runs", str(tmp_path), "--records", str(tmp_path / "rec.jsonl")])
    assert not (tmp_path / "rec.jsonl").exists()
