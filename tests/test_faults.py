"""SIGKILL the real CLI at random moments, resume, and end bit-identical to a run that was never interrupted.

The in-process resume tests (test_train.py, test_train_tokenizer.py) stop a run at a step boundary. These kill
`python -m minimuse train-tokenizer` / `train` in a subprocess with SIGKILL, which no `finally` survives, at moments
drawn from a seeded RNG over the straight run's training time: mid-step, mid-log-write, mid-checkpoint-write. They
check what checkpoint.py and runs.py promise: every file on disk is whole after any kill, --resume continues exactly
(weights and log equal the straight run's), and the log reads as one run. ~60-80 s on 2 busy cores.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from minimuse.checkpoint import load_checkpoint, load_tree
from minimuse.runs import LOG_NAME, STATE_NAME, TRANSFORMER_STATE

pytestmark = pytest.mark.slow  # the slow tier (pyproject.toml markers)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
KILLS = 5  # per trainer
# A log line every step and a checkpoint every 3rd: a kill usually leaves the log ahead of the state, so the resume
# must cut it back, and checkpoints are frequent enough that some kills land inside a write. The step counts give
# ~4-5 s of training on 2 cores after ~3 s (tokenizer) or ~5 s (transformer) of start-up.
TOKENIZER_STEPS, TRANSFORMER_STEPS = 70, 300
TOKENIZER_ARGS = ["train-tokenizer", "--preset", "ci", "--set", f"tokenizer.steps={TOKENIZER_STEPS}",
                  "--set", "tokenizer.ckpt_every=3", "--set", "tokenizer.log_every=1"]
TRANSFORMER_ARGS = ["train", "--preset", "ci", "--set", f"train.steps={TRANSFORMER_STEPS}", "--set", "train.ckpt_every=3",
                    "--set", "train.log_every=2", "--set", "data.pool_size=64", "--set", "train.batch_size=8"]
TIMEOUT_S = 180  # a hung subprocess fails the test instead of stalling the suite


def launch(argv, stderr_path: Path) -> subprocess.Popen:
    with open(stderr_path, "w") as err:  # a file, not a pipe: a full pipe would block the child
        return subprocess.Popen([sys.executable, "-m", "minimuse", *map(str, argv)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=err)


def stamp(path: Path):
    """Identity of a file version: every atomic rewrite makes a new inode with a new mtime."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def wait_for_training(proc: subprocess.Popen, log: Path, before) -> bool:
    """Block until the run (re)writes log.jsonl: every trainer opens its log (on resume, cut back to the resumed
    step) just before its first step, after the imports and set-up that a kill should skip. False if it exited."""
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None:
        now = stamp(log)
        if now is not None and now != before:
            return True
        assert time.monotonic() < deadline, "the run never started training"
        time.sleep(0.005)
    return False


def finish(proc: subprocess.Popen, stderr_path: Path) -> None:
    rc = proc.wait(timeout=TIMEOUT_S)
    assert rc == 0, f"exit {rc}:\n{stderr_path.read_text()[-3000:]}"


def straight_run(argv, out: Path, tmp: Path) -> float:
    """Train without interruption; return the wall seconds from the first step to the process exit."""
    proc = launch([*argv, "--out", out], tmp / "straight.err")
    assert wait_for_training(proc, out / LOG_NAME, None), (tmp / "straight.err").read_text()[-3000:]
    t0 = time.monotonic()
    finish(proc, tmp / "straight.err")
    return time.monotonic() - t0


def state_step(path: Path) -> int:
    return load_tree(path)["step"] if path.is_file() else 0


def check_every_file_is_whole(out: Path) -> list[Path]:
    """Every file a reader opens loads or parses; return the temp files a killed write left behind."""
    leftovers = []
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            leftovers.append(p)
        elif p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:  # every tensor, not just the header
                tree = "minimuse_tree" in (f.metadata() or {})
                for k in f.keys():
                    f.get_tensor(k)
            if tree:
                load_tree(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            steps = [json.loads(line)["step"] for line in p.read_text().splitlines()]
            assert steps == sorted(set(steps)), f"{p}: steps not strictly increasing: {steps}"
        if p.name == "config.json":
            load_checkpoint(p.parent)  # config and weights of one checkpoint, finite, as from_pretrained reads them
    return leftovers


def kill_and_resume_until_done(argv, out: Path, state_name: str, steps: int, train_s: float, seed: int, tmp: Path):
    """Start the run, SIGKILL it, restart it, ... KILLS times, then let the last restart finish. Returns the kills."""
    rng = random.Random(seed)
    # Kill points on the straight run's training clock, uniform and sorted: the k-th kill stops whichever launch is
    # running when its training reaches the k-th point, so kills spread from the first step to the last (the 0.9
    # leaves slack for timing noise, so a launch rarely finishes before its kill). The first kill comes as the first
    # step starts, before any checkpoint, so the start-over path below runs every time.
    points = [0.0] + sorted(rng.uniform(0, 0.9 * train_s) for _ in range(KILLS - 1))
    kills, flag, killed_pids, seen = [], [], set(), set()
    for launch_no in range(KILLS + 1):
        start_step, before = state_step(out / state_name), stamp(out / LOG_NAME)
        err = tmp / f"launch{launch_no}.err"
        proc = launch([*argv, "--out", out, *flag], err)
        if not points:
            finish(proc, err)
            break
        wait_for_training(proc, out / LOG_NAME, before)
        delay = max(0.0, points.pop(0) - train_s * start_step / steps)  # a resumed launch starts at its state's step
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_pids.add(proc.pid)
        if proc.returncode != -signal.SIGKILL:  # it finished before its kill point: the run is done
            finish(proc, err)
            break
        new = set(check_every_file_is_whole(out)) - seen
        for p in new:
            # A SIGKILL mid-write leaves its temp file (the writer's cleanup never runs). Garble it: if any reader
            # ever opened a temp file, the resume below would fail instead of matching the straight run.
            p.write_bytes(b"garbage from a killed write")
        seen |= new
        kills.append({"flags": " ".join(flag) or "(fresh)", "from_step": start_step, "delay_s": round(delay, 2),
                      "state_step_after": state_step(out / state_name), "killed_mid_write": sorted(p.name for p in new)})
        # With a state, --resume. A kill before the first checkpoint leaves a log (a "run" to the directory guard)
        # but nothing to resume from, so a user starts over: --overwrite.
        flag = ["--resume"] if (out / state_name).is_file() else ["--overwrite"]

    # Each restart (--resume or --overwrite) sweeps the temp files of killed writes, and a clean exit leaves none.
    assert check_every_file_is_whole(out) == [], "temp files left after the run finished"
    return kills


def assert_same_run(straight: Path, killed: Path, weights: str, state_name: str, steps: int):
    a, b = load_file(straight / weights), load_file(killed / weights)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{weights}: tensor {k} differs from the uninterrupted run"
    read = lambda d: [json.loads(line) for line in (d / LOG_NAME).read_text().splitlines()]
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("elapsed_s", "timing")} for r in log]  # wall times differ, nothing else
    log_a, log_b = read(straight), read(killed)
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]  # continuous: no step lost, none repeated
    assert strip(log_b) == strip(log_a)
    assert load_tree(killed / state_name)["step"] == steps


def report(name: str, kills: list[dict], train_s: float):
    print(f"\n{name}: straight run trained for {train_s:.1f} s; {len(kills)} kills")
    for k in kills:
        print(f"  {k}")


def run_fault_test(argv, tmp: Path, weights: str, state_name: str, steps: int, seed: int, name: str):
    train_s = straight_run(argv, tmp / "straight", tmp)
    assert check_every_file_is_whole(tmp / "straight") == []  # a run that exits cleanly leaves no temp file
    kills = kill_and_resume_until_done(argv, tmp / "killed", state_name, steps, train_s, seed, tmp)
    report(name, kills, train_s)
    # Every recorded kill landed after training started and before its launch finished; most of the KILLS planned
    # must have landed, or the test would pass without having interrupted anything.
    assert len(kills) >= 3, kills
    assert_same_run(tmp / "straight", tmp / "killed", weights, state_name, steps)


def test_tokenizer_training_survives_sigkill(tmp_path):
    run_fault_test(TOKENIZER_ARGS, tmp_path, "model.safetensors", STATE_NAME, TOKENIZER_STEPS, seed=0, name="train-tokenizer")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A briefly trained ci tokenizer, made once through the CLI: the transformer trains on its ids."""
    d = tmp_path_factory.mktemp("tokenizer")
    proc = launch(["train-tokenizer", "--preset", "ci", "--out", d / "tok", "--set", "tokenizer.steps=6"], d / "err")
    finish(proc, d / "err")
    return d / "tok"


# the speedrun's levers: Muon with AdamW (two optimizer states), warmup-stable-decay, the MD4 weighting, the EMA over
# the second half of the run (kills land before and after it starts averaging)
LEVERS = ["--set", "train.optimizer=muon", "--set", "train.lr_schedule=wsd", "--set", "train.loss_weighting=md4",
          "--set", "train.ema_decay=0.9", "--set", "train.ema_start=0.5"]


@pytest.mark.parametrize("levers", [[], LEVERS], ids=["defaults", "speedrun-levers"])
def test_transformer_training_survives_sigkill(tmp_path, tokenizer_dir, levers):
    run_fault_test([*TRANSFORMER_ARGS, *levers, "--tokenizer", tokenizer_dir], tmp_path, "transformer/model.safetensors",
                   TRANSFORMER_STATE, TRANSFORMER_STEPS, seed=1, name="train")
