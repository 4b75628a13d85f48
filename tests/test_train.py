"""Transformer training: batches, text dropout, exact resume, and Accelerate DDP with 2 CPU processes."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimuse.presets import get_config
from minimuse.tokenizer import Tokenizer
from minimuse.checkpoint import load_tree, save_tree
from minimuse.runs import TRANSFORMER_STATE
from minimuse.pool import build_token_pool, train_step_inputs
from minimuse.train import train_transformer

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


# Every training option that changes the step: bf16 autocast, the weight EMA, the mask floor and rectangles, smoothing
# and text dropout. Resume must stay exact with all of them on.
EVERY_OPTION = {"train.mixed_precision": "bf16", "train.ema_decay": 0.9, "train.min_mask_rate": 0.2,
                "train.rect_mask_prob": 0.5, "train.label_smoothing": 0.1, "train.cond_drop_prob": 0.3}


# The speedrun's levers (docs/SPEEDRUN.md): Muon, the two other learning-rate shapes and the MD4 weighting, with the EMA
SPEEDRUN_OPTIONS = {"train.optimizer": "muon", "train.lr_schedule": "wsd", "train.decay_fraction": 0.5,
                    "train.loss_weighting": "md4", "train.ema_decay": 0.9, "train.mixed_precision": "bf16"}
# (train.ema_start depends on the run's length, which the 3-step stand-in for a kill changes: tests/test_faults.py
# kills a real run with it instead)


@pytest.mark.cuda  # on a GPU this trains on CUDA: resume must be exact there too
@pytest.mark.parametrize("options", [{}, EVERY_OPTION, {"transformer.kind": "autoregressive"}, SPEEDRUN_OPTIONS,
                                     {"train.lr_schedule": "linear", "train.optimizer": "muon"}],
                         ids=["defaults", "every-option", "autoregressive", "speedrun-levers", "linear-muon"])
def test_resume_equals_uninterrupted_run(tmp_path, tok_dir, options):
    cfg = get_config("ci", **{**_overrides(), **options})
    straight = tmp_path / "straight"
    train_transformer(cfg, straight, tokenizer_dir=tok_dir)
    half = tmp_path / "half"
    train_transformer(get_config("ci", **{**_overrides(), **options, "train.steps": 3}), half, tokenizer_dir=tok_dir)
    # resuming needs the same config as the run it continues; rewrite the state as a 6-step run, as a kill at step 3 would leave it
    state = load_tree(half / TRANSFORMER_STATE)
    state["config"] = cfg.to_dict()
    save_tree(half / TRANSFORMER_STATE, state)
    train_transformer(cfg, half, resume=True, tokenizer_dir=tok_dir)
    a = load_file(straight / "transformer" / "model.safetensors")
    b = load_file(half / "transformer" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(l) for l in (half / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 7))


def test_an_ema_that_starts_at_the_end_exports_the_weights_themselves(tmp_path, tok_dir):
    """train.ema_start: until that share of the steps the EMA equals the weights, so no early weights (the random init
    included) are averaged in. Starting at the end, it exports the plain run's weights bit for bit; from the start, not."""
    def export(name, **options):
        train_transformer(get_config("ci", **{**_overrides(), **options}), tmp_path / name, tokenizer_dir=tok_dir)
        return load_file(tmp_path / name / "transformer" / "model.safetensors")
    plain = export("plain")
    late, early = export("late", **{"train.ema_decay": 0.9, "train.ema_start": 1.0}), export("early", **{"train.ema_decay": 0.9})
    assert plain.keys() == late.keys() and all(torch.equal(plain[k], late[k]) for k in plain)
    assert not all(torch.equal(plain[k], early[k]) for k in plain)


def test_resume_with_another_config_is_refused(tmp_path, tok_dir):
    train_transformer(CFG, tmp_path, tokenizer_dir=tok_dir)
    with pytest.raises(ValueError, match="another config"):
        train_transformer(get_config("ci", **{**_overrides(), "train.lr": 1e-4}), tmp_path, resume=True, tokenizer_dir=tok_dir)


def test_missing_tokenizer_is_a_clear_error(tmp_path, monkeypatch):
    import minimuse.train
    monkeypatch.setattr(minimuse.train, "DEFAULT_CHECKPOINT", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no trained tokenizer"):
        train_transformer(CFG, tmp_path / "run")


@pytest.mark.slow
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
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("elapsed_s", "timing")} for r in h]
    assert [r["step"] for r in straight] == [2, 4, 6]
    assert strip(resumed) == strip(straight)


def test_bf16_steps_keep_fp32_master_weights_and_optimizer_state(tmp_path, tok_dir):
    cfg = get_config("ci", **{**_overrides(), "train.mixed_precision": "bf16"})
    seen = []

    def watch(step, record, model):  # from step 2 on, record the dtype the head computes in while training
        if step == 1:
            model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if torch.is_grad_enabled() else None)
    train_transformer(cfg, tmp_path, tokenizer_dir=tok_dir, on_step=watch)
    assert seen and set(seen) == {torch.bfloat16}  # the matmuls did run in bf16...
    state = load_tree(tmp_path / TRANSFORMER_STATE)
    assert {v.dtype for v in state["model"].values()} == {torch.float32}  # ...on fp32 master weights
    moments = [t for p in state["optimizer"]["state"].values() for k, t in p.items() if k in ("exp_avg", "exp_avg_sq")]
    assert len(moments) == 2 * len(state["model"]) and {t.dtype for t in moments} == {torch.float32}
    saved = load_file(tmp_path / "transformer" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}


def test_report_fields_are_present_and_consistent(tmp_path, tok_dir):
    cfg = get_config("ci", **_overrides())
    history = train_transformer(cfg, tmp_path, tokenizer_dir=tok_dir, report=True)
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["steps"] == cfg.train.steps and r["precision"] == "float32"
    assert r["steps_per_s"] == pytest.approx(r["steps"] / r["step_s"], rel=0.02)
    assert r["achieved_gflops"] == pytest.approx(r["gflop_per_step"] * r["steps"] / r["step_s"], rel=0.02)
    assert 0 < r["fraction_of_peak"] < 1 and r["fraction_of_peak"] == pytest.approx(r["achieved_gflops"] / r["peak_gflops"], rel=0.01)
    parts = r["setup_s"] + r["step_s"] + r["eval_s"] + r["ckpt_s"]
    assert 0 < parts <= 60 * r["minutes"] + 0.6  # the parts fit in the whole (rounded to 0.01 min)
    assert history[-1]["timing"]["steps"] == cfg.train.steps  # the last log line says where the time went


def test_report_counts_three_forward_passes_less_the_frozen_text_gradient():
    # Backward costs two matmuls per forward matmul (input and weight gradients), except that the frozen text
    # (B, T, E) needs no gradient, so text_proj's input-gradient product (2 B T E D FLOPs) is never computed.
    from minimuse.peak import count_flops, train_step_flops
    from minimuse.transformer import MaskedTransformer
    torch.manual_seed(0)
    model = MaskedTransformer.from_config(CFG)
    B, T, E, L = 4, 5, CFG.text.text_dim, CFG.grid[0] * CFG.grid[1]
    ids, text, text_mask = torch.randint(0, 32, (B, L)), torch.randn(B, T, E), torch.ones(B, T, dtype=torch.bool)
    labels = torch.where(torch.rand(B, L) < 0.5, ids, -100)
    with torch.no_grad():
        forward = count_flops(lambda: model(ids, text, text_mask))
    step = train_step_flops(model, ids, labels, text, text_mask, {}, 0.1, "fp32")
    assert step == 3 * forward - 2 * B * T * E * CFG.transformer.width


def test_kind_weights_set_each_kinds_share_of_the_batch(tok_dir):
    cfg = get_config("ci", **{**_overrides(), "train.kind_weights": (1, 0, 0, 3, 0), "train.cond_drop_prob": 0.0})
    pool = build_token_pool(cfg, Tokenizer.from_pretrained(tok_dir), 64)
    U = len(pool["vocab"])
    table = (torch.arange(U, dtype=torch.float)[:, None, None].expand(U, 3, 384).clone(), torch.ones(U, 3, dtype=torch.bool))
    kind_of = {int(c): k for c, k in zip(pool["caption_idx"], pool["kinds"])}
    drawn = [kind_of[int(c)] for step in range(100) for c in train_step_inputs(pool, table, cfg, step, 32, 32)[2][:, 0, 0]]
    assert set(drawn) == {"single", "pair"}
    # 3,200 draws at p = 0.75: the standard error is 0.0077, so +-0.035 is > 4 sigma
    assert abs(drawn.count("pair") / len(drawn) - 0.75) < 0.035


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from minimuse.runs import resolve_precision
    assert resolve_precision("no") == "no" and resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("auto") == "no"  # an AVX2 laptop: emulated bf16 would be slower than fp32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16"


def test_torch_compile_reaches_accelerate_and_resets_with_the_backend():
    """train.torch_compile=True asks Accelerate for inductor; the next run without it gets an eager model again."""
    from accelerate.utils import DynamoBackend

    from minimuse.runs import make_accelerator
    cfg = get_config("ci", **{"train.torch_compile": True})
    assert make_accelerator(cfg, compile=True).state.dynamo_plugin.backend == DynamoBackend.INDUCTOR
    plain = make_accelerator(get_config("ci"))
    assert plain.state.dynamo_plugin.backend == DynamoBackend.NO
    model = plain.prepare(torch.nn.Linear(2, 2))
    assert not hasattr(model, "_orig_mod")  # not compiled


def test_sampling_from_the_model_during_training_does_not_change_the_training(tmp_path, tok_dir):
    """Notebook 05 draws snapshots from the model at wall-clock times, so at steps that differ from run to run; the
    trained weights must not depend on when (or whether) that happened."""
    from minimuse.pipeline import MusePipeline
    from minimuse.text_encoder import TextEncoder
    tok, text = Tokenizer.from_pretrained(tok_dir, CFG), TextEncoder(CFG.text)
    weights = []
    for snap_at in ((), (1, 4), (2, 3, 5)):
        def snapshot(step, record, model, snap_at=snap_at):
            if step in snap_at:
                MusePipeline(CFG, tok, text, model)(["a red circle"], seed=step)
                model.train()
        out = tmp_path / f"run{len(snap_at)}"
        train_transformer(CFG, out, tokenizer_dir=tok_dir, on_step=snapshot)
        weights.append(load_file(out / "transformer" / "model.safetensors"))
    a = weights[0]
    assert all(w.keys() == a.keys() and all(torch.equal(w[k], a[k]) for k in a) for w in weights[1:])


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    from minimuse.pipeline import transformer_class
    from minimuse.transformer_setup import MuonAdamW, make_optimizer
    cfg = get_config("ci", **{"train.optimizer": "muon"})
    model = transformer_class("masked").from_config(cfg)
    opt = make_optimizer(model, cfg.train)
    assert isinstance(opt, MuonAdamW)
    # Newton-Schulz in the run's precision: fp32 for ci's "no" (a CPU without bf16 would emulate bf16 products)
    assert opt.muon.ns_dtype == torch.float32 and make_optimizer(model, cfg.train, "bf16").muon.ns_dtype == torch.bfloat16
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert "head.weight" not in names and "tok_emb.weight" not in names
    assert len(opt.param_groups) == 3  # the loop sets the lr of every group, Muon's included
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(torch.zeros(2, *cfg.grid, dtype=torch.long).flatten(1), torch.randn(2, 3, cfg.text.text_dim),
                 torch.ones(2, 3, dtype=torch.bool)).square().mean()
    loss.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert names <= moved and "head.weight" in moved  # both parts stepped
    assert all("momentum_buffer" in opt.muon.state[p] for g in opt.muon.param_groups for p in g["params"])
    assert set(opt.state_dict()) == {"muon", "adamw"}  # the training state saves both


def test_newton_schulz_maps_each_singular_value_by_the_quintic():
    """G = U diag(3, 4) V^T is normalised to singular values 0.6 and 0.8, and each iteration maps every singular value
    x to a x + b x^3 + c x^5 on its own (a, b, c = 3.4445, -4.7750, 2.0315). By hand, five times:
    0.6 -> 1.193269 -> 0.911918 -> 0.801138 -> 0.974702 -> 0.722876 and
    0.8 -> 0.976482 -> 0.721118 -> 1.089457 -> 0.696045 -> 1.119204: near 1, not at it, as Muon intends."""
    from minimuse.transformer_setup import orthogonalize
    r = torch.tensor([[3 ** 0.5 / 2, -0.5], [0.5, 3 ** 0.5 / 2]])              # U: a rotation by 30 degrees
    v = torch.tensor([[1.0, 2.0], [2.0, 1.0], [2.0, -2.0]]) / 3                  # V: two orthonormal columns of R^3
    G = r @ torch.diag(torch.tensor([3.0, 4.0])) @ v.T                          # (2, 3), |G|_F = 5
    want = r @ torch.diag(torch.tensor([0.722876, 1.119204])) @ v.T
    assert torch.allclose(orthogonalize(G, dtype=torch.float32), want, atol=1e-5)
    assert torch.allclose(orthogonalize(G.T, dtype=torch.float32), want.T, atol=1e-5)  # tall: the same, transposed
    assert orthogonalize(G).dtype == torch.bfloat16 and torch.allclose(orthogonalize(G).float(), want, atol=5e-2)


def test_muon_steps_exactly_as_torchs_in_bf16_and_resumes_from_its_state():
    from minimuse.transformer_setup import Muon
    torch.manual_seed(0)
    shapes = [(8, 5), (5, 8), (6, 6)]
    start = [torch.randn(s) for s in shapes]
    ours, theirs, fp32 = ([w.clone().requires_grad_() for w in start] for _ in range(3))
    opts = [Muon(ours, lr=0.02, weight_decay=0.1), torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1,
            adjust_lr_fn="match_rms_adamw"), Muon(fp32, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32)]

    def step(opts, params):
        grads = [torch.randn(s) for s in shapes]
        for opt, ps in zip(opts, params):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    for _ in range(3):
        step(opts, (ours, theirs, fp32))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert not all(torch.equal(a, b) for a, b in zip(ours, fp32))    # fp32 iterations: another (close) update
    assert all(torch.allclose(a, b, atol=1e-2) for a, b in zip(ours, fp32))
    # a run saved by either resumes in the other, step for step (a copy, as a saved file gives: loading shares tensors)
    resumed, back = ([w.detach().clone().requires_grad_() for w in theirs] for _ in range(2))
    again = Muon(resumed, lr=0.02, weight_decay=0.1)
    again.load_state_dict(copy.deepcopy(opts[1].state_dict()))
    torchs = torch.optim.Muon(back, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    torchs.load_state_dict(copy.deepcopy(opts[0].state_dict()))
    step([again, opts[1], torchs], (resumed, theirs, back))
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(resumed, theirs, back))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_learning_rate_reaches_every_part_after_accelerates_prepare(optimizer):
    """prepare() reloads the optimizer's state, which gives torch's optimizers new group dicts: the lr the loop sets
    afterwards must still be the one every parameter steps with (a Muon run once trained at its first lr for ever)."""
    from accelerate import Accelerator
    from minimuse.pipeline import transformer_class
    from minimuse.runs import set_lr
    from minimuse.transformer_setup import make_optimizer
    cfg = get_config("ci", **{"train.optimizer": optimizer})
    torch.manual_seed(0)
    model = transformer_class("masked").from_config(cfg)
    model, opt = Accelerator(cpu=True).prepare(model, make_optimizer(model, cfg.train))

    def step(lr):
        set_lr(opt, lr)
        opt.zero_grad()
        model(torch.zeros(2, cfg.num_tokens, dtype=torch.long), torch.randn(2, 3, cfg.text.text_dim),
              torch.ones(2, 3, dtype=torch.bool)).square().mean().backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}

    assert step(0.0) == set()                               # lr 0: nothing moves, in either part
    moved = step(1e-3)
    assert "head.weight" in moved and "blocks.0.attn.qkv.weight" in moved


def test_md4_weighting_is_refused_for_models_without_masks():
    from minimuse.limits import ConfigError
    with pytest.raises(ConfigError, match="loss_weighting"):
        get_config("ci", **{"train.loss_weighting": "md4", "transformer.kind": "autoregressive"})
