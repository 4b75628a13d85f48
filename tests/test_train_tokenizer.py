"""Tokenizer training loop: the learning-rate schedule, exact resume, NaN handling, and the evaluation numbers."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from minimuse.presets import get_config
from minimuse.measures import eval_tokenizer
from minimuse.tokenizer import Tokenizer
from minimuse.checkpoint import load_tree
from minimuse.runs import STATE_NAME
from minimuse.metrics import psnr
from minimuse.runs import JsonlLogger, batch_indices, cosine_lr
from minimuse.train_tokenizer import train_tokenizer

# The ci preset with a checkpoint every 5 steps; 20 steps keep the whole file to seconds.
CFG = get_config("ci", **{"tokenizer.steps": 20, "tokenizer.ckpt_every": 5, "tokenizer.log_every": 5})


class Stop(Exception):
    pass


def test_cosine_lr_exact_values():
    assert cosine_lr(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert cosine_lr(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert cosine_lr(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert cosine_lr(60, 1.0, 10, 110, 0.0) == pytest.approx(0.5)  # half-way through the decay
    assert cosine_lr(110, 1.0, 10, 110, 0.1) == pytest.approx(0.1)


def test_linear_and_wsd_lr_exact_values():
    assert cosine_lr(60, 1.0, 10, 110, 0.0, "linear") == pytest.approx(0.5)
    assert cosine_lr(35, 1.0, 10, 110, 0.2, "linear") == pytest.approx(0.2 + 0.8 * 0.75)
    # wsd, decay over the last 20% of the 100 steps after warmup: flat until step 90, then a line to min at 110
    assert cosine_lr(9, 1.0, 10, 110, 0.0, "wsd") == pytest.approx(1.0)
    assert cosine_lr(90, 1.0, 10, 110, 0.0, "wsd") == pytest.approx(1.0)
    assert cosine_lr(100, 1.0, 10, 110, 0.0, "wsd") == pytest.approx(0.5)
    assert cosine_lr(110, 1.0, 10, 110, 0.1, "wsd") == pytest.approx(0.1)
    assert cosine_lr(70, 1.0, 10, 110, 0.0, "wsd", decay_fraction=0.5) == pytest.approx(0.8)


def test_batch_indices_are_disjoint_across_steps_and_processes():
    seen = [list(batch_indices(s, 4, r, 2)) for s in range(3) for r in range(2)]
    flat = [i for b in seen for i in b]
    assert sorted(flat) == list(range(24))
    assert list(batch_indices(5, 4)) == [20, 21, 22, 23]


def test_psnr_exact():
    x = torch.zeros(1, 3, 4, 4)
    assert psnr(x + 0.1, x) == pytest.approx(20.0)


def test_logger_drops_lines_after_the_resumed_step(tmp_path):
    log = JsonlLogger(tmp_path / "log.jsonl")
    for s in (5, 10, 15):
        log.log({"step": s})
    JsonlLogger(tmp_path / "log.jsonl", resume_step=10)  # record "step" counts finished steps: 10 was logged, then saved
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [5, 10]


@pytest.mark.parametrize("gan", [False, True], ids=["plain", "with-discriminator"])
def test_resume_matches_an_uninterrupted_run_bit_for_bit(tmp_path, gan):
    cfg = get_config("ci", **{"tokenizer.steps": 20, "tokenizer.ckpt_every": 5, "tokenizer.log_every": 5,
                             **({"tokenizer.disc_weight": 0.1, "tokenizer.disc_start": 3} if gan else {})})
    straight = train_tokenizer(cfg, tmp_path / "a")
    assert all(("d_loss" in r) == gan for r in straight)

    def stop_at_10(step, record):
        if step == 10:
            raise Stop  # a kill right after the step-10 checkpoint
    with pytest.raises(Stop):
        train_tokenizer(cfg, tmp_path / "b", on_step=stop_at_10)
    resumed = train_tokenizer(cfg, tmp_path / "b", resume=True)

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in h]
    assert strip(resumed) == strip(straight)  # every logged loss, PSNR and usage agrees too
    lines = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20]

    with pytest.raises(ValueError, match="another config"):
        train_tokenizer(get_config("ci", **{"tokenizer.steps": 40}), tmp_path / "b", resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_forward = Tokenizer.forward
    calls = {"n": 0}

    def forward(self, images):
        recon, aux = real_forward(self, images)
        calls["n"] += 1
        if calls["n"] == 8:  # the 8th training step
            aux["loss"] = aux["loss"] * float("nan")
        return recon, aux
    monkeypatch.setattr(Tokenizer, "forward", forward)
    with pytest.raises(FloatingPointError, match=r"step 7.*step 5"):
        train_tokenizer(CFG, tmp_path)
    state = load_tree(tmp_path / STATE_NAME)
    assert state["step"] == 5
    tok = Tokenizer.from_pretrained(tmp_path)
    assert all(torch.isfinite(v).all() for v in tok.state_dict().values())


def test_superres_stage_and_eval_numbers(tmp_path):
    cfg = get_config("ci", **{"tokenizer.steps": 2})
    cfg = cfg.__class__(**{**cfg.__dict__, "superres": cfg.superres.__class__(
        **{**cfg.superres.__dict__, "tokenizer": cfg.superres.tokenizer.__class__(
            **{**cfg.superres.tokenizer.__dict__, "steps": 4, "log_every": 2, "ckpt_every": 4})})})
    hist = train_tokenizer(cfg, tmp_path, stage="superres")
    assert [r["step"] for r in hist] == [2, 4]
    tok = Tokenizer.from_pretrained(tmp_path, cfg)
    assert tok.stage == "superres"
    m = eval_tokenizer(tmp_path, n=8)
    assert m["n"] == 8 and 0 < m["usage"] <= 1 and 1 <= m["perplexity"] <= tok.codebook_size
    # PSNR recomputed by hand from the same held-out images
    from minimuse.data import ShapesDataset
    data = ShapesDataset(size=cfg.superres.image_size, seed=cfg.data.eval_seed, length=8)
    x = torch.stack([data[i]["image"] for i in range(8)])
    mse = (tok.decode(tok.encode(x)) - x).pow(2).mean().item()
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)


def test_a_run_is_never_trained_over_without_resume_or_overwrite(tmp_path):
    from minimuse.runs import RunExistsError
    cfg = get_config("ci", **{"tokenizer.steps": 4, "tokenizer.ckpt_every": 2, "tokenizer.log_every": 2})
    train_tokenizer(cfg, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(RunExistsError, match="--resume.*--overwrite"):
        train_tokenizer(cfg, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing touched
    with pytest.raises(ValueError, match="not both"):
        train_tokenizer(cfg, tmp_path, resume=True, overwrite=True)
    # --overwrite starts over: the log holds the new run's steps once, not the old run's followed by the new
    train_tokenizer(get_config("ci", **{"tokenizer.steps": 2, "tokenizer.ckpt_every": 2, "tokenizer.log_every": 2}),
                    tmp_path, overwrite=True)
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [2]
    assert load_tree(tmp_path / STATE_NAME)["step"] == 2


def test_a_legacy_pickled_state_is_refused_not_loaded(tmp_path):
    (tmp_path / "training_state.pt").write_bytes(b"\x80\x04not read")
    with pytest.raises(Exception, match="pickle"):
        train_tokenizer(CFG, tmp_path, resume=True)
    with pytest.raises(Exception, match="already holds a run"):
        train_tokenizer(CFG, tmp_path)


def test_no_temp_files_are_left_after_a_run(tmp_path):
    train_tokenizer(get_config("ci", **{"tokenizer.steps": 4, "tokenizer.ckpt_every": 2}), tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
