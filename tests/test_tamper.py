"""Tampered or absurd configs, checkpoints, training states, logs and shards (issue 30, Reliability v2): each is one
error of a named class whose message names the field or file, raised before any output is written; through the CLI,
exit 2 with one `minimuse: error:` line. Shards and a checkpoint's paths are in test_tamper_data.py, concurrent
writers in test_tamper_writers.py.

The memory bombs here are sized so that the first tensor an unchecked build would allocate is far larger than any
machine (tens of GB for one tensor): the allocator refuses at once, and nothing is ever paged in."""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from clitools import assert_one_line, run_cli, snapshot
from minimuse.checkpoint import CheckpointError, load_tree, save_tree
from minimuse.config import ConfigError
from minimuse.presets import get_config
from minimuse.tokenizer import Tokenizer
from minimuse.train_tokenizer import train_tokenizer
from minimuse.transformer import MaskedTransformer

CFG = get_config("ci")
TOK_SETS = {"tokenizer.steps": 2, "tokenizer.ckpt_every": 2, "tokenizer.log_every": 1}
TOK_CFG = get_config("ci", **TOK_SETS)
TOK_ARGV = [a for k, v in TOK_SETS.items() for a in ("--set", f"{k}={v}")]
TRAIN_SETS = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "data.pool_size=16",
              "--set", "train.ckpt_every=2", "--set", "train.log_every=2"]
BOMB = {"transformer.width": 16_384, "tokenizer.codebook_size": 2**20}  # embedding alone: 68 GB in one tensor


def edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


# ------------------------------------------------------------------------------------- 1. config bounds and memory
@pytest.mark.parametrize("field, value", [
    ("transformer.mlp_ratio", 1e9), ("tokenizer.channels", 2**34), ("data.pool_size", 10**13),
    ("transformer.width", 2**20), ("transformer.depth", 10**6), ("transformer.heads", 10**6),
    ("tokenizer.codebook_size", 2**40), ("data.image_size", 2**20), ("train.batch_size", 10**9),
    ("train.steps", 10**12), ("tokenizer.batch_size", 10**9), ("tokenizer.steps", 10**12), ("text.text_dim", 10**7),
    ("superres.lowres_depth", 10**6), ("tokenizer.channel_mult", (1, 2**20)), ("train.seed", 2**64),
])
def test_absurd_values_fail_at_the_config_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=re.escape(f"'{field}'") + ".*at most"):
        get_config("ci", **{field: value})


def test_every_numeric_field_is_bounded_or_unbounded_on_purpose():
    import dataclasses
    from minimuse import config as c
    from minimuse.limits import _SECTIONS, FIELD_MAX, UNBOUNDED
    classes = (c.DataConfig, c.TokenizerConfig, c.TextConfig, c.TransformerConfig, c.TrainConfig, c.SampleConfig,
               c.EditConfig, c.DecoderConfig, c.SuperResConfig)
    numeric = {_SECTIONS[k.__name__] + f.name for k in classes for f in dataclasses.fields(k)
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
               or isinstance(f.default, tuple) and all(isinstance(v, (int, float)) for v in f.default)}
    assert numeric <= set(FIELD_MAX) | UNBOUNDED and not set(FIELD_MAX) & UNBOUNDED
    for name, hi in FIELD_MAX.items():  # each bound is enforced where the dataclass is built
        section, field = name.rsplit(".", 1)
        cls = next(k for k in classes if _SECTIONS[k.__name__] == section + ".")
        big = hi * 2 + 2 if isinstance(hi, int) else hi * 2
        with pytest.raises(ConfigError, match=re.escape(f"'{name}'")):
            cls(**{field: (big,) if isinstance(getattr(cls(), field), tuple) else big})


def test_the_parameter_estimate_is_the_built_models():
    from minimuse.limits import config_numel
    from minimuse.superres import SuperResTransformer
    numel = lambda m: sum(t.numel() for t in [*m.parameters(), *m.buffers()])
    variant = get_config("ci", **{"tokenizer.quantizer": "fsq", "transformer.qk_norm": True, "mlp_ratio": 3.0,
                                  "tokenizer.decoder_channels": 32, "tokenizer.decoder_res_blocks": 2})
    for cfg in (CFG, get_config("laptop"), variant):
        est = config_numel(cfg, ("tokenizer", "transformer", "superres", "superres_tokenizer"))
        assert est["tokenizer"] == numel(Tokenizer(cfg.tokenizer))
        assert est["transformer"] == numel(MaskedTransformer.from_config(cfg))
        assert est["superres"] == numel(SuperResTransformer.from_config(cfg))
    # the paper's sizes (docs/MODEL_SIZES.md): 656M for muse-632m, 3.27B for muse-3b
    assert config_numel(get_config("muse-632m"), ["transformer"])["transformer"] == 656_012_800
    assert 3.2e9 < config_numel(get_config("muse-3b"), ["transformer"])["transformer"] < 3.3e9


def test_a_config_too_large_for_this_machine_names_both_sizes(ckpt, monkeypatch):
    from minimuse import limits
    monkeypatch.setattr(limits, "total_memory", lambda: 256 * 1024)  # the ci transformer: 163,104 fp32 values
    with pytest.raises(CheckpointError, match=r"transformer/config\.json.*need 637\.1 KB.*this machine's 256\.0 KB"):
        MaskedTransformer.from_pretrained(ckpt / "transformer")


def bomb_checkpoint(ckpt, tmp_path, sub, **fields):
    bad = tmp_path / "bomb"
    shutil.copytree(ckpt, bad)
    edit_json(bad / sub / "config.json", lambda d: [d["config"][s].__setitem__(f, v) for (s, f), v in
                                                      ((k.split("."), v) for k, v in fields.items())])
    return bad


def test_a_memory_bomb_transformer_checkpoint_is_refused_before_allocating(ckpt, tmp_path):
    bad = bomb_checkpoint(ckpt, tmp_path, "transformer", **BOMB)
    with pytest.raises(CheckpointError, match=r"config\.json.*need [\d.]+ [GT]B.*more than this machine's [\d.]+ GB"):
        MaskedTransformer.from_pretrained(bad / "transformer")


def test_a_memory_bomb_tokenizer_checkpoint_is_refused_before_allocating(ckpt, tmp_path):
    bad = bomb_checkpoint(ckpt, tmp_path, "tokenizer", **{"tokenizer.channels": 2048, "tokenizer.channel_mult": [64]})
    with pytest.raises(CheckpointError, match=r"tokenizer/config\.json.*need [\d.]+ [GT]B.*this machine's"):
        Tokenizer.from_pretrained(bad / "tokenizer")


def test_generate_refuses_a_memory_bomb_checkpoint_in_one_line(ckpt, tmp_path, capsys):
    bad = bomb_checkpoint(ckpt, tmp_path, "transformer", **BOMB)
    code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", bad, "--out", tmp_path / "x.png")
    assert_one_line(code, err, "config.json", "more than this machine's")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv", [
    ["train-tokenizer", "--preset", "ci", "--set", "tokenizer.channels=2048", "--set", "tokenizer.channel_mult=64"],
    ["train", "--preset", "ci", "--tokenizer", "{tok}", *(a for k, v in BOMB.items() for a in ("--set", f"{k}={v}"))],
    ["bench", "--preset", "ci", "--batch-sizes", "1", "--steps", "1", "--repeats", "1",
     *(a for k, v in BOMB.items() for a in ("--set", f"{k}={v}"))],
], ids=["train-tokenizer", "train", "bench"])
def test_cli_refuses_a_memory_bomb_set_before_writing(argv, ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    extra = [] if argv[0] == "bench" else ["--out", out]
    code, _, err = run_cli(capsys, *[a.format(tok=ckpt / "tokenizer") for a in argv], *extra)
    assert_one_line(code, err, "more than this machine's")
    assert not out.exists()


# --------------------------------------------------------------------------------------------- 2. weights, dtypes
def retype(path, key, dtype):
    state = load_file(path)
    state[key] = state[key].to(dtype)
    save_file(state, path)


def test_an_int_tensor_where_a_float_weight_belongs_is_refused(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    retype(bad / "transformer" / "model.safetensors", "head.weight", torch.int32)
    with pytest.raises(CheckpointError, match=r"'head\.weight' as torch\.int32.*torch\.float32"):
        MaskedTransformer.from_pretrained(bad / "transformer")
    retype(bad / "transformer" / "model.safetensors", "head.weight", torch.float16)  # another float width: cast back
    assert MaskedTransformer.from_pretrained(bad / "transformer").head.weight.dtype == torch.float32


def test_a_bool_tensor_in_a_tokenizer_is_refused(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt / "tokenizer", bad)
    retype(bad / "model.safetensors", "encoder.net.0.weight", torch.bool)
    with pytest.raises(CheckpointError, match=r"'encoder\.net\.0\.weight' as torch\.bool.*torch\.float32"):
        Tokenizer.from_pretrained(bad)


def test_generate_refuses_an_int_weight_in_one_line(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    retype(bad / "transformer" / "model.safetensors", "tok_emb.weight", torch.int64)
    code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", bad, "--out", tmp_path / "x.png")
    assert_one_line(code, err, "tok_emb.weight", "torch.int64")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------ 2. training states and logs
@pytest.fixture(scope="module")
def tok_run(tmp_path_factory):
    """A finished 2-step ci tokenizer run."""
    d = tmp_path_factory.mktemp("tokrun")
    train_tokenizer(TOK_CFG, d)
    return d


def tampered_run(tok_run, tmp_path, fn):
    run_dir = tmp_path / "run"
    shutil.copytree(tok_run, run_dir)
    state = load_tree(run_dir / "training_state.safetensors")
    fn(state)
    save_tree(run_dir / "training_state.safetensors", state)
    return run_dir


@pytest.mark.parametrize("key", ["step", "model", "optimizer", "rng", "history", "config", "stage", "elapsed_s"])
def test_a_training_state_without_a_key_is_refused_naming_it(tok_run, tmp_path, key):
    run_dir = tampered_run(tok_run, tmp_path, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=f"training_state.safetensors lacks the key '{key}'"):
        train_tokenizer(TOK_CFG, run_dir, resume=True)


@pytest.mark.parametrize("tamper, needle", [
    (lambda s: s["rng"].pop("numpy"), "lacks the key 'rng.numpy'"),
    (lambda s: s.__setitem__("step", "2"), "key 'step' holds str"),
    (lambda s: s["model"].__setitem__("bogus", torch.zeros(1)), "(key 'model') does not fit this model: unexpected"),
    (lambda s: s.__setitem__("optimizer", {"state": {}, "param_groups": []}), "key 'optimizer' does not fit this run"),
    (lambda s: s["rng"].__setitem__("python", [1, 2]), "key 'rng' is not an RNG state"),
], ids=["rng-key", "step-type", "model-extra", "optimizer", "rng-value"])
def test_a_tampered_training_state_is_refused_naming_the_key(tok_run, tmp_path, tamper, needle):
    run_dir = tampered_run(tok_run, tmp_path, tamper)
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        train_tokenizer(TOK_CFG, run_dir, resume=True)


def test_cli_resume_from_a_state_without_model_is_one_line_and_writes_nothing(tok_run, tmp_path, capsys):
    run_dir = tampered_run(tok_run, tmp_path, lambda s: s.pop("model"))
    before = snapshot(run_dir)
    code, _, err = run_cli(capsys, "train-tokenizer", "--preset", "ci", *TOK_ARGV, "--out", run_dir, "--resume")
    assert_one_line(code, err, "training_state.safetensors", "'model'")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("line", ["[1, 2]", '"a string"', "3", "null", '{"step": "4"}'])
def test_a_log_line_that_is_json_but_not_a_record_is_refused_by_line(tok_run, tmp_path, line):
    run_dir = tmp_path / "run"
    shutil.copytree(tok_run, run_dir)
    (run_dir / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n' + line + "\n")
    with pytest.raises(CheckpointError, match=r"log\.jsonl line 2 is not a log record"):
        train_tokenizer(TOK_CFG, run_dir, resume=True)


def test_cli_resume_with_a_tampered_log_is_one_line_and_writes_nothing(tok_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(tok_run, run_dir)
    (run_dir / "log.jsonl").write_text("[]\n")
    before = snapshot(run_dir)
    code, _, err = run_cli(capsys, "train-tokenizer", "--preset", "ci", *TOK_ARGV, "--out", run_dir, "--resume")
    assert_one_line(code, err, "log.jsonl line 1")
    assert snapshot(run_dir) == before


def test_cli_resume_of_a_transformer_state_without_window_is_one_line(ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "ci", "--out", out, "--tokenizer", ckpt / "tokenizer", *TRAIN_SETS]
    assert run_cli(capsys, *argv)[0] == 0
    state = load_tree(out / "transformer_state.safetensors")
    del state["window"]
    save_tree(out / "transformer_state.safetensors", state)
    before = snapshot(out)
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert_one_line(code, err, "transformer_state.safetensors lacks the key 'window'")
    assert snapshot(out) == before
