"""Transformer training: batches, text dropout, exact resume, and Accelerate DDP with 2 CPU processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimuse.config import get_config
from minimuse.tokenizer import Tokenizer
from minimuse.checkpoint import load_tree, save_tree
from minimuse.runs import TRANSFORMER_STATE
from minimuse.train import build_token_pool, train_step_inputs, train_transformer

CFG = get_config("ci", **{"train.steps": 6, "train.batch_size": 8, "data.pool_size": 64, "train.ckpt_every": 3,
                          "train.log_every": 1})


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A random-init ci tokenizer: training the transformer needs ids, not good reconstructions."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tok")
    Tokenizer(CFG.tokenizer).save_pretrained(d, CFG)
    return d


def test_step_inputs_are_a_pure_function_of_the_step(tok_dir):
    pool = build_token_pool(CFG, Tokenizer.from_pretrained(tok_dir), 64)
    table = (torch.randn(len(pool["vocab"]), 5, 384), torch.ones(len(pool["vocab"]), 5, dtype=torch.bool))
    a = train_step_inputs(pool, table, CFG, 7, 8, 32)
    b = train_step_inputs(pool, table, CFG, 7, 8, 32)
    c = train_step_inputs(pool, table, CFG, 8, 8, 32)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    inputs, labels, _, _ = a
    assert torch.equal(inputs == 32, labels != -100)  # [MASK] exactly where there is a label


def test_text_dropout_rate(tok_dir):
    pool = build_token_pool(CFG, Tokenizer.from_pretrained(tok_dir), 64)
    U = len(pool["vocab"])
    table = (torch.arange(U, dtype=torch.float)[:, None, None].expand(U, 3, 384).clone(), torch.ones(U, 3, dtype=torch.bool))
    dropped = total = 0
    for step in range(400):
        _, _, text, _ = train_step_inputs(pool, table, CFG, step, 32, 32)
        dropped += int((text[:, 0, 0] == 0).sum())  # row 0 of the table is the "" prompt
        total += 32
    # 12,800 draws at p = 0.1: the standard error is 0.0027, so +-0.012 is > 4 sigma
    assert abs(dropped / total - CFG.train.cond_drop_prob) < 0.012


def test_resume_equals_uninterrupted_run(tmp_path, tok_dir):
    straight = tmp_path / "straight"
    train_transformer(CFG, straight, tokenizer_dir=tok_dir)
    half = tmp_path / "half"
    train_transformer(get_config("ci", **{**_overrides(), "train.steps": 3}), half, tokenizer_dir=tok_dir)
    # resuming needs the same config as the run it continues; rewrite the state as a 6-step run, as a kill at step 3 would leave it
    state = load_tree(half / TRANSFORMER_STATE)
    state["config"] = CFG.to_dict()
    save_tree(half / TRANSFORMER_STATE, state)
    train_transformer(CFG, half, resume=True, tokenizer_dir=tok_dir)
    a = load_file(straight / "transformer" / "model.safetensors")
    b = load_file(half / "transformer" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(l) for l in (half / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 7))


def test_resume_with_another_config_is_refused(tmp_path, tok_dir):
    train_transformer(CFG, tmp_path, tokenizer_dir=tok_dir)
    with pytest.raises(ValueError, match="another config"):
        train_transformer(get_config("ci", **{**_overrides(), "train.lr": 1e-4}), tmp_path, resume=True, tokenizer_dir=tok_dir)


def test_missing_tokenizer_is_a_clear_error(tmp_path, monkeypatch):
    import minimuse.pipeline
    monkeypatch.setattr(minimuse.pipeline, "DEFAULT_CHECKPOINT", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no trained tokenizer"):
        train_transformer(CFG, tmp_path / "run")


def test_accelerate_two_processes_hold_identical_weights(tmp_path, tok_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(Path(__file__).parent / "scripts" / "ddp_train.py"), str(tmp_path), str(tok_dir)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]       # DDP averaged the gradients: replicas identical
    assert ranks[0]["loss"] != ranks[1]["loss"]           # ...while each process saw its own half of the batch


def _overrides():
    return {"train.steps": 6, "train.batch_size": 8, "data.pool_size": 64, "train.ckpt_every": 3, "train.log_every": 1}


def test_resume_between_log_steps_logs_the_same_averages(tmp_path, tok_dir):
    # The loss/accuracy averaged since the last log line is part of the state: a run stopped at a checkpoint that is
    # not a log step (3, with lines every 2) must log the same step-4 average as a straight run.
    cfg = get_config("ci", **{**_overrides(), "train.ckpt_every": 3, "train.log_every": 2})
    straight = train_transformer(cfg, tmp_path / "a", tokenizer_dir=tok_dir)

    def stop_at_3(step, record, model):
        if step == 3:
            raise KeyboardInterrupt  # right after the step-3 checkpoint, as a kill there would
    with pytest.raises(KeyboardInterrupt):
        train_transformer(cfg, tmp_path / "b", tokenizer_dir=tok_dir, on_step=stop_at_3)
    resumed = train_transformer(cfg, tmp_path / "b", resume=True, tokenizer_dir=tok_dir)
    strip = lambda h: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in h]
    assert [r["step"] for r in straight] == [2, 4, 6]
    assert strip(resumed) == strip(straight)
