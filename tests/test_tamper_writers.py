"""Concurrent writers (issue 30, Reliability v2): one process writes an --out at a time. A second `train-tokenizer`,
`train` or `pretokenize` into the same folder, or a second command filling the same output folder (`dataset`,
`generate`, `upscale`, `edit`, `sweep`, `finetune-decoder`), is refused in one line naming the holder's PID and writes
nothing; a lock left by a killed process is not held; the lock file exists only while its run does (locks.py)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clitools import run_cli
from minimuse.checkpoint import load_tree
from minimuse.presets import get_config
from minimuse.train_tokenizer import train_tokenizer

TOK_SETS = {"tokenizer.steps": 2, "tokenizer.ckpt_every": 2, "tokenizer.log_every": 1}
TOK_ARGV = [a for k, v in TOK_SETS.items() for a in ("--set", f"{k}={v}")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
HOLD = "import sys, time\nfrom minimuse import locks\nlocks.acquire(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(600)"


@pytest.fixture
def holder(tmp_path):
    """A helper process holding the lock of tmp/out (it prints 'locked' once it does); killed at the end."""
    procs = []

    def start(out):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=ENV,
                             cwd=Path(__file__).resolve().parent.parent)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked", "the helper could not take the lock"
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused_by(code, err, pid):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimuse: error: ") and "Traceback" not in err, err
    assert f"PID {pid}" in lines[0], lines[0]


def test_a_second_train_tokenizer_is_refused_naming_the_holder(tmp_path, holder, capsys):
    out = tmp_path / "out"
    p = holder(out)
    before = files(out)
    code, _, err = run_cli(capsys, "train-tokenizer", "--preset", "ci", *TOK_ARGV, "--out", out, "--overwrite")
    assert_refused_by(code, err, p.pid)
    assert files(out) == before  # only the holder's lock, holding its PID
    assert (out / ".minimuse.lock").read_text().strip() == str(p.pid)


def test_a_second_train_is_refused_naming_the_holder(tmp_path, holder, ckpt, capsys):
    out = tmp_path / "out"
    p = holder(out)
    code, _, err = run_cli(capsys, "train", "--preset", "ci", "--out", out, "--tokenizer", ckpt / "tokenizer", "--set",
                    "train.steps=2", "--set", "data.pool_size=16", "--set", "train.batch_size=4")
    assert_refused_by(code, err, p.pid)
    assert sorted(x.name for x in out.iterdir()) == [".minimuse.lock"]


def test_a_second_pretokenize_is_refused_naming_the_holder(tmp_path, holder, ckpt):
    from minimuse.hfdata import write_imagefolder
    from minimuse.locks import FolderLockedError
    from minimuse.shards import pretokenize
    from minimuse.text_encoder import TextEncoder
    from minimuse.tokenizer import Tokenizer
    cfg = get_config("ci")
    write_imagefolder(tmp_path / "images", "shapes", n=2, size=cfg.data.image_size, seed=1)
    p = holder(tmp_path / "sh")
    with pytest.raises(FolderLockedError, match=f"PID {p.pid}"):
        pretokenize(tmp_path / "images", Tokenizer.from_pretrained(ckpt / "tokenizer"), TextEncoder(cfg.text),
                    tmp_path / "sh", size=cfg.data.image_size)
    assert sorted(x.name for x in (tmp_path / "sh").iterdir()) == [".minimuse.lock"]


OUTPUT_FOLDER_COMMANDS = {  # the folder each command fills, and its arguments ({tmp}, {ckpt} filled in)
    "dataset": ["dataset", "--n", "2", "--size", "16", "--out-dir", "{out}"],
    "dataset-imagefolder": ["dataset", "--n", "2", "--size", "16", "--format", "imagefolder", "--out-dir", "{out}"],
    "generate": ["generate", "--prompts-file", "{tmp}/p.txt", "--out-dir", "{out}", "--checkpoint", "{ckpt}"],
    "upscale": ["upscale", "--in-dir", "{tmp}/in", "--out-dir", "{out}", "--checkpoint", "{ckpt}"],
    "edit": ["edit", "--jobs", "{tmp}/jobs.jsonl", "--out-dir", "{out}", "--checkpoint", "{ckpt}"],
    "sweep": ["sweep", "--checkpoint", "{ckpt}", "--param", "guidance", "--values", "1", "--n", "1", "--out", "{out}"],
    "finetune-decoder": ["finetune-decoder", "--preset", "ci", "--checkpoint", "{ckpt}", "--out", "{out}"],
}


@pytest.mark.parametrize("command", OUTPUT_FOLDER_COMMANDS)
def test_a_second_writer_of_an_output_folder_is_refused(command, tmp_path, holder, ckpt, capsys):
    (tmp_path / "p.txt").write_text("a red circle\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"image": str(tmp_path / "a.png"), "prompt": "a red circle"}) + "\n")
    out = tmp_path / "out"
    p = holder(out)
    before = files(tmp_path)
    argv = [a.format(tmp=tmp_path, out=out, ckpt=ckpt) for a in OUTPUT_FOLDER_COMMANDS[command]]
    code, _, err = run_cli(capsys, *argv)
    assert_refused_by(code, err, p.pid)
    assert files(tmp_path) == before  # nothing written, the holder's lock untouched


def test_an_output_folder_that_is_a_file_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "out").write_text("mine")
    code, _, err = run_cli(capsys, "dataset", "--n", "2", "--size", "16", "--out-dir", tmp_path / "out")
    assert code == 2 and err.startswith("minimuse: error: --out-dir ") and "is a file, not a directory" in err, err
    assert (tmp_path / "out").read_text() == "mine"


def test_an_output_folder_lock_is_released_and_unlinked_after_the_command(tmp_path, capsys):
    code, _, err = run_cli(capsys, "dataset", "--n", "2", "--size", "16", "--out-dir", tmp_path / "out")
    assert code == 0, err
    assert not (tmp_path / "out" / ".minimuse.lock").exists() and (tmp_path / "out" / "captions.jsonl").is_file()


def test_a_killed_holders_lock_is_not_held(tmp_path, holder, capsys):
    out = tmp_path / "out"
    p = holder(out)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (out / ".minimuse.lock").is_file()  # left behind by the kill, with the dead PID in it
    code, _, err = run_cli(capsys, "train-tokenizer", "--preset", "ci", *TOK_ARGV, "--out", out, "--overwrite")
    assert code == 0, err
    assert load_tree(out / "training_state.safetensors")["step"] == 2
    assert not (out / ".minimuse.lock").exists()  # released, and unlinked, when training returned


def test_the_lock_holds_this_pid_during_a_run_and_is_gone_after(tmp_path):
    seen = []
    train_tokenizer(get_config("ci", **TOK_SETS), tmp_path / "out",
                    on_step=lambda step, rec: seen.append((tmp_path / "out" / ".minimuse.lock").read_text().strip()))
    assert seen == [str(os.getpid())] * 2
    assert not (tmp_path / "out" / ".minimuse.lock").exists()


def test_two_train_tokenizers_into_one_out_exactly_one_runs(tmp_path):
    out = tmp_path / "out"
    # long enough (40 steps) that the later of the two reaches the lock while the first still trains
    sets = {"tokenizer.steps": 40, "tokenizer.ckpt_every": 20, "tokenizer.log_every": 20}
    argv = [sys.executable, "-m", "minimuse", "train-tokenizer", "--preset", "ci", "--out", str(out),
            *(a for k, v in sets.items() for a in ("--set", f"{k}={v}"))]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                              cwd=Path(__file__).resolve().parent.parent) for _ in range(2)]
    results = [(p.pid, p.wait(timeout=900), p.stderr.read()) for p in procs]
    codes = sorted(code for _, code, _ in results)
    assert codes == [0, 2], results
    (winner, _, _), (_, _, err) = sorted(results, key=lambda r: r[1])
    assert_refused_by(2, err, winner)
    # the winner's run is whole: its state loads and holds its config, its log is one straight run
    state = load_tree(out / "training_state.safetensors")
    assert state["step"] == 40 and state["config"] == get_config("ci", **sets).to_dict()
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [20, 40]
    from minimuse.tokenizer import Tokenizer
    assert Tokenizer.from_pretrained(out).codebook_size == 32
    assert not (out / ".minimuse.lock").exists()
