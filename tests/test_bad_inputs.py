"""A catalogue of bad inputs at the CLI and API boundary ("Reliability and safety"): one clear line, nothing written.

Every CLI case runs `minimuse.cli.main(argv)` in-process, in an empty working directory, and asserts: exit code 2,
exactly one stderr line `minimuse: error: ...` holding a fragment that names the problem, no traceback, and not one
file created, changed or half-written (atomic writers leave temp files; those would show too). A tiny `ci` pipeline
checkpoint of random-initialised models is built once per module, no training; the corrupt checkpoints are copies
of it (plus a super-res stage for `upscale`). A few cases go through the real console script in a subprocess.
Issue 30's cases check that every batch's inputs are checked before the first output, that input files are bounded
and named (FIFOs, devices, 10 MB), that counts have ceilings, and that every image goes through one reader (bombs,
16-bit, alpha, EXIF); a case that would hang on a regression fails after two minutes instead.
"""
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save_file

from clitools import assert_one_line, run_cli, snapshot
from minimuse.checkpoint import CheckpointError
from minimuse.cli import main
from minimuse.config import ConfigError
from minimuse.presets import get_config
from minimuse.data import write_dataset
from minimuse.pipeline import load_pipeline
from minimuse.superres import SuperResTransformer
from minimuse.tokenizer import Tokenizer


class _Payload:
    """Unpickling this creates `marker`: proof that a pickle in place of safetensors was (never) loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _edit_weights(path, fn):
    state = load(path.read_bytes())  # from bytes, not load_file: rewriting a memory-mapped file is a bus error
    fn(state)
    save_file(state, path, metadata={"kind": path.parent.name})


def _edit_config(path, fn):
    import json
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def bad(ckpt, tmp_path_factory):
    """Copies of the good checkpoint, each broken in one way, by name."""
    root = tmp_path_factory.mktemp("bad")
    W, C = "transformer/model.safetensors", "transformer/config.json"
    nan = lambda s: s["row_emb"].view(-1)[5].fill_(float("nan"))  # noqa: E731
    breakers = {
        "random_bytes": lambda d: (d / W).write_bytes(os.urandom(4096)),
        "truncated": lambda d: (d / W).write_bytes((d / W).read_bytes()[: (d / W).stat().st_size // 2]),
        "empty_weights": lambda d: (d / W).write_bytes(b""),
        "torch_pickle": lambda d: torch.save(load((d / W).read_bytes()), d / W),
        "pickle_payload": lambda d: (d / W).write_bytes(pickle.dumps(_Payload(root / "UNPICKLED"))),
        "nan": lambda d: _edit_weights(d / W, nan),
        "inf_tokenizer": lambda d: _edit_weights(d / "tokenizer/model.safetensors",
                                                 lambda s: s["encoder.net.0.weight"].view(-1)[3].fill_(float("inf"))),
        "wrong_shape": lambda d: _edit_weights(d / W, lambda s: s.update({"tok_emb.weight": s["tok_emb.weight"][:-1]})),
        "missing_tensor": lambda d: _edit_weights(d / W, lambda s: s.pop("text_proj.bias")),
        "extra_tensor": lambda d: _edit_weights(d / W, lambda s: s.update({"stray.weight": torch.zeros(2)})),
        "wrong_width": lambda d: _edit_config(d / C, lambda m: m["config"]["transformer"].update(width=32)),
        "unknown_field": lambda d: _edit_config(d / C, lambda m: m["config"].update(bogus=1)),
        "bad_value": lambda d: _edit_config(d / C, lambda m: m["config"]["transformer"].update(width="wide")),
        "wrong_kind": lambda d: _edit_config(d / C, lambda m: m.update(kind="tokenizer")),
        "config_garbage": lambda d: (d / C).write_bytes(b"\x00\xff not json"),
        "no_config": lambda d: (d / C).unlink(),
        "transformer_is_file": lambda d: (shutil.rmtree(d / "transformer"), (d / "transformer").write_text("x")),
        "tokenizer_random": lambda d: (d / "tokenizer/model.safetensors").write_bytes(os.urandom(999)),
        "codebook_mismatch": lambda d: _small_tokenizer(d),
    }
    for name, brk in breakers.items():
        shutil.copytree(ckpt, root / name)
        brk(root / name)
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("not a checkpoint")
    return root


@pytest.fixture(scope="module")
def cascade(ckpt, tmp_path_factory):
    """The good checkpoint with a random-initialised super-res stage beside it: what `upscale` needs."""
    root = tmp_path_factory.mktemp("cascade") / "ckpt"
    shutil.copytree(ckpt, root)
    cfg = get_config("ci")
    Tokenizer(cfg.superres.tokenizer).save_pretrained(root / "superres_tokenizer", cfg, stage="superres")
    SuperResTransformer.from_config(cfg).save_pretrained(root / "superres", cfg)
    return root


def _small_tokenizer(d):
    cfg = get_config("ci", **{"tokenizer.codebook_size": 16, "tokenizer.fsq_levels": "4,4"})
    shutil.rmtree(d / "tokenizer")
    Tokenizer(cfg.tokenizer).save_pretrained(d / "tokenizer", cfg)


def files(spec: dict):
    """A setup that creates files (str or bytes) and directories (None) under the case's working directory."""
    def setup(tmp):
        for name, data in spec.items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                p.mkdir()
            elif isinstance(data, bytes):
                p.write_bytes(data)
            else:
                p.write_text(data)
    return setup


def fifo(name):
    return lambda tmp: os.mkfifo(tmp / name)


def link(name, target):
    return lambda tmp: (tmp / name).symlink_to(target)


def sparse(name, size):
    """A file of `size` zero bytes that takes no disk space."""
    def setup(tmp):
        with open(tmp / name, "wb") as f:
            f.truncate(size)
    return setup


def both(*setups):
    return lambda tmp: [s(tmp) for s in setups]


def _png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


def _png_header(w: int, h: int) -> bytes:
    """A PNG that only declares its size (IHDR, IEND): enough for a decoder to allocate w x h pixels."""
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


IMG = _png(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))  # the ci model's 16 px
MASK = _png(np.pad(np.full((8, 8), 255, np.uint8), 4))  # white = regenerate the middle 8x8
BOMB = _png_header(100_000, 100_000)  # 10 G pixels: past Pillow's error limit
OVER = _png_header(10_000, 10_000)    # 100 M pixels: past its warning limit (89 M), under its error limit
FLOAT = _png(np.full((16, 16), 0.5, np.float32), "TIFF")  # mode F: no known range


def jsonl(*rows):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def gen(prompt, *extra):
    return ["generate", prompt, "--checkpoint", "{ckpt}", "--out", "{tmp}/o.png", *extra]


def gen_file(*extra):
    return ["generate", "--prompts-file", "{tmp}/p.txt", "--out-dir", "{tmp}/imgs", "--checkpoint", "{ckpt}", *extra]


def ckpt_case(name):
    return ["generate", "a red circle", "--checkpoint", "{bad}/" + name, "--out", "{tmp}/o.png"]


def up_dir(*extra):
    return ["upscale", "--in-dir", "{tmp}/d", "--out-dir", "{tmp}/up", "--checkpoint", "{cascade}", *extra]


def up_one(image, *extra):
    return ["upscale", "{tmp}/" + image, "--prompt", "a red circle", "--checkpoint", "{cascade}", "--out", "{tmp}/o.png",
            *extra]


def edit_jobs(*extra):
    return ["edit", "--jobs", "{tmp}/jobs.jsonl", "--out-dir", "{tmp}/e", "--checkpoint", "{ckpt}", "--num-iters", "1",
            *extra]


def edit_one(image, *extra):
    return ["edit", "{tmp}/" + image, "--prompt", "a red circle", "--checkpoint", "{ckpt}", "--out", "{tmp}/o.png",
            "--num-iters", "1", *extra]


def sweep(*extra):
    return ["sweep", "--checkpoint", "{ckpt}", "--param", "guidance", "--values", "1", "--n", "1", "--out", "{tmp}/sw",
            "--diversity-prompts", "1", *extra]


def in_dir(captions, images=("a.png",)):
    """d/: the images (IMG, or the bytes given) and a captions.jsonl (text, or None for a directory)."""
    spec = {f"d/{k}": IMG for k in images} if not isinstance(images, dict) else {f"d/{k}": v for k, v in images.items()}
    return files({**spec, "d/captions.jsonl": captions})


CAP = {"file": "a.png", "caption": "a red circle"}
JOB = {"image": "a.png", "prompt": "a red circle"}
TWO = ("a.png", "b.png")
PNG = b"\x89PNG old bytes"
RUN = {"run/log.jsonl": '{"step": 10}\n'}
C = pytest.param
CASES = [
    # ----------------------------------------------------------------------------------------------- prompts
    C(gen(""), "empty prompt", None, id="prompt-empty"),
    C(gen("   "), "empty prompt", None, id="prompt-spaces"),
    C(gen("\t\n\r"), "empty prompt", None, id="prompt-tab-newline"),
    C(gen("\u200b"), "empty prompt", None, id="prompt-zero-width-space"),
    C(gen("\ufeff\u200c\u200d\u2060"), "empty prompt", None, id="prompt-zero-width-mix"),
    C(gen("\x00"), "empty prompt", None, id="prompt-nul"),
    C(gen("\x00\x00 \x00"), "empty prompt", None, id="prompt-nuls-and-space"),
    C(gen("\x07\x08\x7f\x1b"), "empty prompt", None, id="prompt-control-chars"),
    C(gen("\u3000\u2028\u00ad"), "empty prompt", None, id="prompt-unicode-blank"),
    C(gen("\ud800 red"), "lone surrogate", None, id="prompt-lone-surrogate"),
    C(gen("a red circle", "--negative-prompt", "\u200b"), "empty negative prompt", None, id="negative-zero-width"),
    C(gen("a red circle", "--negative-prompt", ""), "empty negative prompt", None, id="negative-empty"),
    C(["generate", "--checkpoint", "{ckpt}", "--out", "{tmp}/o.png"], "give a prompt", None, id="no-prompt"),
    C(gen("a red circle", "--prompts-file", "{tmp}/p.txt"), "not both", files({"p.txt": "a\n"}), id="prompt-and-file"),
    C(["generate", "--prompts-file", "{tmp}/p.txt", "--checkpoint", "{ckpt}"], "needs --out-dir",
      files({"p.txt": "a red circle\n"}), id="prompts-file-no-out-dir"),
    C(gen_file(), "does not exist", None, id="prompts-file-missing"),
    C(gen_file(), "is a directory", files({"p.txt": None}), id="prompts-file-is-dir"),
    C(gen_file(), "not UTF-8", files({"p.txt": b"a red circle\n\xff\xfe blue\n"}), id="prompts-file-not-utf8"),
    C(gen_file(), "holds no prompts", files({"p.txt": "\n  \n\t\n"}), id="prompts-file-blank"),
    C(gen_file("--batch-size", "1"), "empty prompt", files({"p.txt": "a red circle\ntwo blue squares\n\u200b\n"}),
      id="prompts-file-late-zero-width"),
    C(gen_file(), "empty prompt", files({"p.txt": "a red circle\n\x00\n"}), id="prompts-file-nul-line"),
    # --------------------------------------------------------------------------------------- sampling flags
    C(gen("a red circle", "--guidance", "nan"), "--guidance must be a finite number", None, id="guidance-nan"),
    C(gen("a red circle", "--guidance", "inf"), "--guidance must be a finite number", None, id="guidance-inf"),
    C(gen("a red circle", "--guidance", "-1"), "--guidance must be 0 or more", None, id="guidance-negative"),
    C(gen("a red circle", "--guidance", "abc"), "invalid float value", None, id="guidance-not-a-number"),
    C(gen("a red circle", "--choice-temperature", "nan"), "--choice-temperature must be a finite", None, id="choice-temp-nan"),
    C(gen("a red circle", "--choice-temperature=-inf"), "--choice-temperature must be a finite", None, id="choice-temp-neg-inf"),
    C(gen("a red circle", "--choice-temperature", "-0.5"), "--choice-temperature must be 0 or more", None, id="choice-temp-negative"),
    C(gen("a red circle", "--steps", "0"), "--steps must be at least 1", None, id="steps-0"),
    C(gen("a red circle", "--steps", "-3"), "--steps must be at least 1", None, id="steps-negative"),
    C(gen("a red circle", "--steps", "10000"), "--steps must be at most 4096", None, id="steps-10000"),
    C(gen("a red circle", "--steps", "17"), "exceeds the 16 tokens", None, id="steps-over-grid"),
    C(gen("a red circle", "--steps", "2.5"), "invalid int value", None, id="steps-float"),
    C(gen("a red circle", "--sampler", "greedy"), "invalid choice: 'greedy'", None, id="sampler-unknown"),
    C(gen("a red circle", "--schedule", "sigmoid"), "invalid choice: 'sigmoid'", None, id="schedule-unknown"),
    C(gen("a red circle", "--precision", "fp8"), "invalid choice: 'fp8'", None, id="precision-unknown"),
    C(gen("a red circle", "--device", "tpu"), "--device: unknown device 'tpu'", None, id="device-unknown"),
    C(gen("a red circle", "--device", "cuda:99"), "--device: device cuda:99 is not available", None, id="device-absent"),
    C(["eval", "--checkpoint", "{ckpt}", "--device", "meta"], "--device: device meta is not supported", None,
      id="eval-device-unsupported"),
    C(gen("a red circle", "--batch-size", "0"), "--batch-size must be at least 1", None, id="batch-size-0"),
    C(gen("a red circle", "--enlarge", "0"), "--enlarge must be an integer from 1 to 32, got 0", None, id="enlarge-0"),
    C(gen("a red circle", "--enlarge", "-2"), "--enlarge must be an integer from 1 to 32", None, id="enlarge-negative"),
    C(gen("a red circle", "--enlarge", "100"), "would write 1600 px images from this 16 px model; use at most 32 (512 px)", None,
      id="enlarge-100"),
    C(gen("a red circle", "--enlarge", "2", "--upscale", "2"), "give --enlarge only (--upscale is its old spelling)", None,
      id="enlarge-and-upscale"),
    C(gen("a red circle", "--seed", "-1"), "seed must lie in [0, 2**63)", None, id="seed-negative"),
    C(gen("a red circle", "--seed", str(2 ** 70)), "seed must lie in [0, 2**63)", None, id="seed-huge"),
    # ------------------------------------------------------------------------------------------ output files
    C(gen("a red circle"), "already exists; pass --overwrite", files({"o.png": PNG}), id="out-exists"),
    C(gen("a red circle"), "is a directory", files({"o.png": None}), id="out-is-dir"),
    C(["generate", "a", "--checkpoint", "{ckpt}", "--out", "{tmp}/f/x.png"], "is a file, not a directory",
      files({"f": "x"}), id="out-under-a-file"),
    C(gen_file(), "is a file, not a directory", files({"p.txt": "a red circle\n", "imgs": "x"}), id="out-dir-is-file"),
    C(gen_file(), "001.png already exists", files({"p.txt": "a\nb\nc\n", "imgs/001.png": PNG}), id="out-dir-has-file"),
    C(gen("a red circle", "--history", "{tmp}/h.png"), "h.png already exists", files({"h.png": PNG}), id="history-exists"),
    C(gen("a red circle", "--history", "{tmp}/o.png"), "also an image output", None, id="history-is-out"),
    C(gen("a red circle", "--out-dir", "{tmp}/imgs"), "not both", None, id="out-and-out-dir"),
    # ------------------------------------------------------------------------------------------- checkpoints
    C(ckpt_case("missing"), "no pipeline checkpoint", None, id="ckpt-missing"),
    C(ckpt_case("a_file"), "it is a file", None, id="ckpt-is-file"),
    C(ckpt_case("empty_dir"), "expected the folders tokenizer/ and transformer/", None, id="ckpt-empty-dir"),
    C(["generate", "a", "--checkpoint", "", "--out", "{tmp}/o.png"], "no pipeline checkpoint at .", None, id="ckpt-empty-string"),
    C(ckpt_case("transformer_is_file"), "expected the folders", None, id="ckpt-transformer-is-file"),
    C(ckpt_case("random_bytes"), "corrupt", None, id="ckpt-random-bytes"),
    C(ckpt_case("truncated"), "corrupt", None, id="ckpt-truncated"),
    C(ckpt_case("empty_weights"), "corrupt", None, id="ckpt-empty-weights"),
    C(ckpt_case("torch_pickle"), "corrupt", None, id="ckpt-torch-pickle"),
    C(ckpt_case("pickle_payload"), "corrupt", None, id="ckpt-pickle-payload"),
    C(ckpt_case("nan"), "non-finite values (NaN or inf) in tensor 'row_emb'", None, id="ckpt-nan"),
    C(ckpt_case("inf_tokenizer"), "non-finite values (NaN or inf) in tensor 'encoder.net.0.weight'", None, id="ckpt-inf-tokenizer"),
    C(ckpt_case("wrong_shape"), "shape of tok_emb.weight", None, id="ckpt-wrong-shape"),
    C(ckpt_case("missing_tensor"), "missing ['text_proj.bias']", None, id="ckpt-missing-tensor"),
    C(ckpt_case("extra_tensor"), "unexpected ['stray.weight']", None, id="ckpt-extra-tensor"),
    C(ckpt_case("wrong_width"), "does not fit this model", None, id="ckpt-wrong-config"),
    C(ckpt_case("unknown_field"), "unknown config field 'bogus'", None, id="ckpt-unknown-field"),
    C(ckpt_case("bad_value"), "holds an invalid config", None, id="ckpt-bad-value"),
    C(ckpt_case("wrong_kind"), "not a 'transformer' one", None, id="ckpt-wrong-kind"),
    C(ckpt_case("config_garbage"), "corrupt", None, id="ckpt-config-garbage"),
    C(ckpt_case("no_config"), "no checkpoint at", None, id="ckpt-no-config"),
    C(ckpt_case("tokenizer_random"), "corrupt", None, id="ckpt-tokenizer-random-bytes"),
    C(ckpt_case("codebook_mismatch"), "codebook_size", None, id="ckpt-codebook-mismatch"),
    # ----------------------------------------------------------------------------------- presets and --set
    C(["train", "--preset", "lapto", "--out", "{tmp}/run"], "unknown preset 'lapto'; choose one of: ci", None, id="preset-unknown"),
    C(["train", "--preset", "ci", "--set", "nonsense=1", "--out", "{tmp}/run"], "unknown config field 'nonsense'", None, id="set-unknown-field"),
    C(["train", "--preset", "ci", "--set", "train.nope=1", "--out", "{tmp}/run"], "unknown config field 'train.nope'", None, id="set-unknown-dotted"),
    C(["train", "--preset", "ci", "--set", "width", "--out", "{tmp}/run"], "--set expects FIELD=VALUE", None, id="set-no-equals"),
    C(["train", "--preset", "ci", "--set", "train=1", "--out", "{tmp}/run"], "is a section", None, id="set-section"),
    C(["train", "--preset", "ci", "--set", "lr=1e-3", "--out", "{tmp}/run"], "ambiguous", None, id="set-ambiguous"),
    C(["train", "--preset", "ci", "--set", "train.lr=abc", "--out", "{tmp}/run"], "cannot read 'abc'", None, id="set-bad-value"),
    C(["train", "--preset", "ci", "--set", "train.lr=inf", "--out", "{tmp}/run"], "must be a finite number", None, id="set-inf"),
    C(["train", "--preset", "ci", "--set", "train.lr=nan", "--out", "{tmp}/run"], "must be a finite number", None, id="set-nan"),
    C(["train", "--preset", "ci", "--set", "train.lr=0", "--out", "{tmp}/run"], "train.lr", None, id="set-lr-0"),
    C(["train", "--preset", "ci", "--set", "train.batch_size=0", "--out", "{tmp}/run"], "train.batch_size", None, id="set-batch-0"),
    C(["train", "--preset", "ci", "--set", "train.ckpt_every=0", "--out", "{tmp}/run"], "train.ckpt_every", None, id="set-ckpt-every-0"),
    C(["train-tokenizer", "--preset", "ci", "--set", "tokenizer.lr=-1", "--out", "{tmp}/run"], "tokenizer.lr", None, id="set-tokenizer-lr-negative"),
    C(["train", "--preset", "ci", "--set", "transformer.width=65", "--out", "{tmp}/run"], "not divisible by heads", None, id="set-width-heads"),
    C(["train", "--preset", "ci", "--set", "data.image_size=12", "--out", "{tmp}/run"], "multiple of 8", None, id="set-image-size"),
    C(["train", "--preset", "ci", "--set", "sample.guidance_scale=-1", "--out", "{tmp}/run"], "sample.guidance_scale", None, id="set-guidance-negative"),
    C(["train", "--preset", "ci", "--set", "train.qk=true", "--out", "{tmp}/run"], "unknown config field 'train.qk'", None, id="set-typo-field"),
    # -------------------------------------------------------------------------------------------- training
    C(["train-tokenizer", "--preset", "ci", "--out", "{tmp}/run"], "already holds a run", files(RUN), id="tokenizer-existing-run"),
    C(["train", "--preset", "ci", "--out", "{tmp}/run"], "pass --resume to continue it or --overwrite",
      files({"run/transformer/config.json": "{}"}), id="train-existing-run"),
    C(["train-tokenizer", "--preset", "ci", "--out", "{tmp}/run", "--resume"], "cannot resume", None, id="resume-nothing"),
    C(["train", "--preset", "ci", "--out", "{tmp}/run", "--resume", "--overwrite"], "not both", files(RUN), id="resume-and-overwrite"),
    C(["train-tokenizer", "--preset", "ci", "--out", "{tmp}/run", "--resume", "--overwrite"], "not both", None,
      id="tokenizer-resume-and-overwrite"),
    C(["train", "--preset", "ci", "--out", "{tmp}/run", "--tokenizer", "{tmp}/tokenizr"], "is not a tokenizer checkpoint",
      None, id="tokenizer-mistyped"),
    C(["train-tokenizer", "--preset", "ci", "--out", "{tmp}/run"], "is a file, not a directory", files({"run": "x"}), id="train-out-is-file"),
    C(["train-tokenizer", "--preset", "ci", "--stage", "middle"], "invalid choice: 'middle'", None, id="train-stage-unknown"),
    C(["train-superres", "--preset", "gpu", "--out", "{tmp}/sr"], "preset 'gpu' has no super-res stage", None, id="superres-preset"),
    C(["train-superres", "--preset", "ci", "--out", "{tmp}/sr", "--superres-tokenizer", "{tmp}/nothing"],
      "is not a tokenizer checkpoint", None, id="superres-tokenizer"),
    # --------------------------------------------------------------------------------------------- dataset
    C(["dataset", "--n", "0", "--out-dir", "{tmp}/ds"], "--n must be at least 1", None, id="dataset-n-0"),
    C(["dataset", "--n", "-5", "--out-dir", "{tmp}/ds"], "--n must be at least 1", None, id="dataset-n-negative"),
    C(["dataset", "--n", "1000000000", "--out-dir", "{tmp}/ds"], "at most 1000000", None, id="dataset-n-huge"),
    C(["dataset", "--n", "ten", "--out-dir", "{tmp}/ds"], "invalid int value: 'ten'", None, id="dataset-n-word"),
    C(["dataset", "--n", "2", "--out-dir", "{tmp}/ds", "--size", "12"], "positive multiple of 8", None, id="dataset-size-12"),
    C(["dataset", "--n", "2", "--out-dir", "{tmp}/ds", "--size", "0"], "positive multiple of 8", None, id="dataset-size-0"),
    C(["dataset", "--n", "2", "--out-dir", "{tmp}/ds", "--size", "4096"], "up to 1024", None, id="dataset-size-huge"),
    C(["dataset", "--n", "2", "--out-dir", "{tmp}/ds", "--seed", "-1"], "seed must be an integer of 0 or more", None, id="dataset-seed-negative"),
    C(["dataset", "--n", "2", "--out-dir", "{tmp}/ds"], "is a file, not a directory", files({"ds": "x"}), id="dataset-out-is-file"),
    C(["dataset", "--n", "3", "--out-dir", "{tmp}/ds", "--size", "16"], "grid.png already exists; pass --overwrite",
      files({"ds/grid.png": PNG}), id="dataset-grid-exists"),
    C(["dataset", "--n", "3", "--out-dir", "{tmp}/ds", "--size", "16"], "captions.jsonl is a directory; give the path of a file",
      files({"ds/captions.jsonl": None}), id="dataset-captions-is-dir"),
    C(["dataset", "--out-dir", "{tmp}/ds"], "required: --n", None, id="dataset-no-n"),
    # ------------------------------------------------------------------------------------------ eval, bench
    C(["eval", "--checkpoint", "{ckpt}", "--steps", "0"], "--steps must be at least 1", None, id="eval-steps-0"),
    C(["eval", "--checkpoint", "{ckpt}", "--guidance", "nan"], "--guidance must be a finite number", None, id="eval-guidance-nan"),
    C(["eval", "--checkpoint", "{ckpt}", "--n", "0"], "--n must be at least 1", None, id="eval-n-0"),
    C(["eval", "--checkpoint", "{ckpt}", "--tokenizer-n", "-1"], "--tokenizer-n must be 0", None, id="eval-tokenizer-n-negative"),
    C(["eval", "--checkpoint", "{ckpt}/tokenizer", "--tokenizer-n", "0"], "is a tokenizer", None, id="eval-tokenizer-dir-n-0"),
    C(["bench", "--preset", "ci", "--repeats", "0"], "--repeats must be at least 1", None, id="bench-repeats-0"),
    C(["bench", "--preset", "ci", "--batch-sizes", "4", "0"], "--batch-sizes must be at least 1, got 0", None, id="bench-batch-0"),
    C(["frobnicate"], "invalid choice: 'frobnicate'", None, id="unknown-command"),
    # --------------------- issue 30: every batch's inputs checked before the first output; input files bounded
    C(gen_file("--batch-size", "1", "--seed", str(2 ** 63 - 1)), "--seed 9223372036854775807 is too large for 2 prompts "
      "in batches of 1", files({"p.txt": "a red circle\ntwo blue squares\n"}), id="prompts-file-last-batch-seed"),
    C(gen_file("--seed", str(2 ** 63 - 64)), "the last batch draws with seed + 64",
      files({"p.txt": "a red circle\n" * 65}), id="prompts-file-65-prompts-seed"),
    C(gen_file(), "p.txt is a FIFO (named pipe), not a regular file", fifo("p.txt"), id="prompts-file-fifo"),
    C(gen_file(), "p.txt is a character device, not a regular file", link("p.txt", "/dev/null"), id="prompts-file-device"),
    C(gen_file(), "over the limit of 10,485,760 bytes (10 MB)", sparse("p.txt", 10 * 2 ** 20 + 1), id="prompts-file-huge"),
    C(up_dir(), "captions.jsonl, line 1: needs \"file\"", in_dir(jsonl({"file": "a.png", "caption": None})),
      id="captions-null"),
    C(up_dir(), "got file='a.png', caption=5", in_dir(jsonl({"file": "a.png", "caption": 5})), id="captions-number"),
    C(up_dir(), "caption=['a red circle']", in_dir(jsonl({"file": "a.png", "caption": ["a red circle"]})),
      id="captions-list"),
    C(up_dir(), "caption=''", in_dir(jsonl({"file": "a.png", "caption": ""})), id="captions-empty"),
    C(up_dir(), "got file=0", in_dir(jsonl({"file": 0, "caption": "a red circle"})), id="captions-file-number"),
    C(up_dir(), "line 2: a.png is captioned a second time",
      in_dir(jsonl(CAP, {"file": "a.png", "caption": "a blue square"})), id="captions-twice"),
    C(up_dir(), "captions.jsonl is a directory", in_dir(None), id="captions-is-dir"),
    C(up_dir(), "captions.jsonl is not UTF-8 text (byte 0xff", in_dir(b'{"file": "a.png", "caption": "\xff"}\n'),
      id="captions-not-utf8"),
    C(up_dir(), "captions.jsonl, line 2: holds an array, not an object", in_dir(jsonl(CAP, "[1, 2]")),
      id="captions-array-line"),
    C(up_dir(), "captions.jsonl, line 1: holds null", in_dir(jsonl("null")), id="captions-null-line"),
    C(up_dir(), "captions.jsonl is a FIFO", both(in_dir(jsonl(CAP)), lambda t: (t / "d/captions.jsonl").unlink(),
                                                  fifo("d/captions.jsonl")), id="captions-fifo"),
    C(up_dir("--batch-size", "1", "--seed", str(2 ** 63 - 1)), "is too large for 2 images in batches of 1",
      in_dir(jsonl(CAP, {"file": "b.png", "caption": "a blue square"}), TWO), id="upscale-last-batch-seed"),
    C(up_one("a.png", "--seed", "-1"), "seed must lie in [0, 2**63), got -1", files({"a.png": IMG}), id="upscale-seed-negative"),
    C(up_one("a.png", "--steps", "65"), "--steps must be at most the 64 tokens of the super-res stage's 8x8 grid",
      files({"a.png": IMG}), id="upscale-steps-over-grid"),
    C(up_one("a.png"), "cannot read image {tmp}/a.png: it declares 10,000,000,000 pixels", files({"a.png": BOMB}),
      id="upscale-bomb"),
    C(up_dir(), "b.png: it declares 10,000,000,000 pixels, over the 89,478,485-pixel limit",
      in_dir(jsonl(CAP, {"file": "b.png", "caption": "x"}), {"a.png": IMG, "b.png": BOMB}), id="upscale-in-dir-bomb"),
    C(up_one("a.png"), "image {tmp}/a.png is a FIFO", fifo("a.png"), id="upscale-image-fifo"),
    C(edit_jobs(), "line 2: expected", files({"a.png": IMG, "jobs.jsonl": jsonl(JOB, {**JOB, "seed": 2 ** 63})}),
      id="edit-jobs-late-seed"),
    C(edit_jobs("--guidance", "inf"), "'guidance_scale': must be a finite number",
      files({"a.png": IMG, "m.png": MASK, "jobs.jsonl": jsonl({**JOB, "mask": "m.png"}, JOB)}), id="edit-jobs-late-guidance"),
    C(edit_jobs(), "jobs.jsonl, line 1: holds an array, not an object", files({"jobs.jsonl": jsonl('["a.png", "x"]')}),
      id="edit-jobs-array-line"),
    C(edit_jobs(), "jobs.jsonl, line 2: holds a number", files({"a.png": IMG, "jobs.jsonl": jsonl(JOB, "7")}),
      id="edit-jobs-number-line"),
    C(edit_jobs(), "jobs.jsonl is not UTF-8 text", files({"jobs.jsonl": b'{"image": "\xe9.png", "prompt": "x"}\n'}),
      id="edit-jobs-not-utf8"),
    C(edit_jobs(), "jobs.jsonl is a FIFO", fifo("jobs.jsonl"), id="edit-jobs-fifo"),
    C(edit_jobs(), "jobs file {tmp}/jobs.jsonl is a directory", files({"jobs.jsonl": None}), id="edit-jobs-is-dir"),
    C(edit_one("a.png", "--num-iters", "1000000"), "--num-iters must be at most 10,000, got 1000000",
      files({"a.png": IMG}), id="edit-num-iters-huge"),
    C(edit_one("a.png"), "a.png: it declares 10,000,000,000 pixels", files({"a.png": BOMB}), id="edit-image-bomb"),
    C(edit_one("a.png", "--mask", "{tmp}/m.png"), "cannot read mask {tmp}/m.png: it declares",
      files({"a.png": IMG, "m.png": BOMB}), id="edit-mask-bomb"),
    C(edit_jobs(), "b.png: it declares 10,000,000,000 pixels",
      files({"a.png": IMG, "b.png": BOMB, "jobs.jsonl": jsonl(JOB, {**JOB, "image": "b.png"})}), id="edit-jobs-bomb"),
    C(edit_one("a.png"), "it declares 100,000,000 pixels, over the 89,478,485-pixel limit", files({"a.png": OVER}),
      id="edit-image-over-warning-limit"),
    C(edit_one("a.tif"), "a.tif: it holds floating-point pixels (mode F)", files({"a.tif": FLOAT}), id="edit-image-float"),
    C(["outpaint", "{tmp}/a.png", "--prompt", "a red circle", "--extend", "right:1000000", "--checkpoint", "{ckpt}",
       "--out", "{tmp}/o.png"], "--extend 'right:1000000': at most 128 px (8x the 16 px image)", files({"a.png": IMG}),
      id="outpaint-extend-huge"),
    C(["outpaint", "{tmp}/a.png", "--prompt", "a red circle", "--extend", "top:132", "--checkpoint", "{ckpt}",
       "--out", "{tmp}/o.png"], "got 132 px", files({"a.png": IMG}), id="outpaint-extend-just-over"),
    C(["outpaint", "{tmp}/a.png", "--prompt", "a red circle", "--checkpoint", "{ckpt}", "--out", "{tmp}/o.png"],
      "a.png: it declares 10,000,000,000 pixels", files({"a.png": BOMB}), id="outpaint-bomb"),
    C(["eval", "--checkpoint", "{ckpt}", "--n", "1000000"], "--n must be at most 100,000, got 1000000", None, id="eval-n-huge"),
    C(["eval", "--checkpoint", "{ckpt}", "--tokenizer-n", str(10 ** 9)], "--tokenizer-n must be at most 100,000", None,
      id="eval-tokenizer-n-huge"),
    C(sweep("--param", "guidance", "--values", "2"), "--param guidance is given twice", None, id="sweep-param-twice"),
    C(sweep("--n", "1000000"), "--n must be at most 100,000", None, id="sweep-n-huge"),
    C(sweep("--seeds", "5000"), "--seeds must be at most 1,000, got 5000", None, id="sweep-seeds-huge"),
    C(sweep("--resume"), "sweep.jsonl, line 1: holds an array", files({"sw/sweep.jsonl": "[1]\n"}), id="sweep-resume-array"),
    C(sweep("--resume"), "line 1: not a sweep row (missing diversity_prompts, n, params, seeds)",
      files({"sw/sweep.jsonl": "{}\n"}), id="sweep-resume-not-a-row"),
    C(["bench", "--preset", "ci", "--steps", "8", "5000"], "--steps must be at most 1,000, got 5000", None,
      id="bench-steps-huge"),
    C(["bench", "--preset", "ci", "--repeats", "100000"], "--repeats must be at most 1,000, got 100000", None,
      id="bench-repeats-huge"),
    C(["bench", "--preset", "ci", "--batch-sizes", "4", "100000"], "--batch-sizes must be at most 4,096, got 100000",
      None, id="bench-batch-huge"),
    C(["bench", "--preset", "ci", "--compare-ar", "--tokens", "64", "16384"], "--tokens must be at most 4,096, got 16384",
      None, id="bench-tokens-huge"),
]


@pytest.fixture
def deadline():
    """A case that would hang (reading a FIFO, a million iterations) fails after two minutes instead of stalling."""
    def hung(*_):
        pytest.fail("still running after 120 s: a bad input must be refused at once, not read or drawn for ever")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("argv,fragment,setup", CASES)
def test_bad_input_is_one_line_and_writes_nothing(argv, fragment, setup, ckpt, bad, cascade, tmp_path, capsys,
                                                  monkeypatch, deadline):
    monkeypatch.chdir(tmp_path)  # a default output (out.png, runs/) would land here and be seen
    if setup:
        setup(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, *[a.format(ckpt=ckpt, tmp=tmp_path, bad=bad, cascade=cascade) for a in argv])
    assert_one_line(code, err, fragment.format(tmp=tmp_path))
    assert snapshot(tmp_path) == before
    assert not (bad / "UNPICKLED").exists()  # the pickle payload never ran


def test_catalogue_is_large_and_distinct():
    ids = [c.id for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    assert len({(tuple(c.values[0]), c.values[1]) for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------- --overwrite, I/O errors

def test_overwrite_replaces_the_refused_files(ckpt, tmp_path, capsys):
    out = tmp_path / "o.png"
    out.write_bytes(PNG)
    code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", str(ckpt), "--out", str(out), "--overwrite")
    assert code == 0, err
    assert np.asarray(Image.open(out)).shape == (16, 16, 3)
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "grid.png").write_bytes(PNG)
    code, _, err = run_cli(capsys, "dataset", "--n", "2", "--out-dir", str(ds), "--size", "16", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in ds.iterdir()) == ["000.png", "001.png", "captions.jsonl", "grid.png"]
    assert Image.open(ds / "grid.png").format == "PNG"


def test_read_only_output_directory(ckpt, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", str(ckpt), "--out", str(ro / "x.png"))
        assert_one_line(code, err, f"directory {ro} is read-only")
        code, _, err = run_cli(capsys, "dataset", "--n", "2", "--out-dir", str(ro / "ds"))
        assert_one_line(code, err, "is read-only")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_read_only_directory_is_refused_before_any_work(ckpt, tmp_path, capsys, monkeypatch):
    """The same check where chmod cannot bite (root): os.access says no, so nothing may be loaded or drawn."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    monkeypatch.setattr("minimuse.jobs.load_pipeline", lambda *a, **k: pytest.fail("loaded a model first"))
    code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", str(ckpt), "--out", str(ro / "sub" / "x.png"))
    assert_one_line(code, err, f"directory {ro} is read-only")
    code, _, err = run_cli(capsys, "dataset", "--n", "2", "--out-dir", str(ro))
    assert_one_line(code, err, f"directory {ro} is read-only")
    assert list(ro.iterdir()) == []


def test_an_os_error_while_writing_is_one_line_naming_the_path(ckpt, tmp_path, capsys, monkeypatch):
    def full_disk(path, image):
        raise OSError(28, "No space left on device", str(path))
    monkeypatch.setattr("minimuse.jobs.atomic_save_image", full_disk)
    out = tmp_path / "o.png"
    code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", str(ckpt), "--out", str(out))
    assert_one_line(code, err, f"{out}: No space left on device")
    assert not out.exists()


def test_unreadable_prompts_file(ckpt, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("a red circle\n")
    f.chmod(0)
    try:
        if os.access(f, os.R_OK):
            pytest.skip("chmod does not stop this user (root) from reading")
        code, _, err = run_cli(capsys, "generate", "--prompts-file", str(f), "--out-dir", str(tmp_path / "d"),
                                    "--checkpoint", str(ckpt))
        assert_one_line(code, err, "cannot read prompts file")
    finally:
        f.chmod(0o644)


def test_debug_variable_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIMUSE_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown preset"):
        main(["train", "--preset", "lapto", "--out", str(tmp_path / "run")])


# ----------------------------------------------------------------------------------------- the real console script

def _console(*argv, cwd):
    exe = Path(sys.executable).with_name("minimuse")
    cmd = [str(exe), *argv] if exe.exists() else [sys.executable, "-m", "minimuse", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    env.pop("MINIMUSE_DEBUG", None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_console_script_bad_flag_and_bad_value(tmp_path):
    r = _console("dataset", "--n", "0", "--out-dir", "ds", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "minimuse: error: --n must be at least 1 and at most 1000000, got 0"
    r = _console("generate", "a", "--steps", "many", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "invalid int value: 'many'" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_python_m_minimuse_nan_checkpoint(bad, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    env.pop("MINIMUSE_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "minimuse", "generate", "a red circle", "--checkpoint", str(bad / "nan"),
                        "--out", "o.png"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "non-finite" in r.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- Python API

@pytest.fixture(scope="module")
def pipe(ckpt):
    return load_pipeline(ckpt)


API_CASES = [
    C(None, {}, TypeError, "prompts must be a string or a list of strings, got NoneType", id="api-none"),
    C(123, {}, TypeError, "got int", id="api-int"),
    C(b"a red circle", {}, TypeError, "got bytes", id="api-bytes"),
    C({"a red circle"}, {}, TypeError, "got set", id="api-set"),
    C([1, 2], {}, TypeError, "got a list holding int at index 0", id="api-list-of-int"),
    C(["ok", None], {}, TypeError, "holding NoneType at index 1", id="api-list-with-none"),
    C([], {}, ValueError, "no prompts given", id="api-empty-list"),
    C("\u200b\u200b", {}, ValueError, "empty prompt", id="api-zero-width"),
    C(["a red circle", "\x00"], {}, ValueError, "empty prompt '\\x00'", id="api-nul-in-list"),
    C("ok", {"negative_prompt": 5}, TypeError, "negative_prompt must be a string or None", id="api-negative-int"),
    C("ok", {"negative_prompt": " \u200b"}, ValueError, "empty negative prompt", id="api-negative-blank"),
    C("ok", {"seed": 1.5}, TypeError, "seed must be an integer, got float", id="api-seed-float"),
    C("ok", {"seed": "1"}, TypeError, "seed must be an integer, got str", id="api-seed-str"),
    C("ok", {"seed": True}, TypeError, "seed must be an integer, got bool", id="api-seed-bool"),
    C("ok", {"seed": -1}, ValueError, "seed must lie in", id="api-seed-negative"),
    C("ok", {"seed": 2 ** 64}, ValueError, "seed must lie in", id="api-seed-huge"),
    C("ok", {"num_steps": "3"}, ConfigError, "sample.num_steps", id="api-steps-str"),
    C("ok", {"num_steps": 2.0}, ConfigError, "must be an integer", id="api-steps-float"),
    C("ok", {"num_steps": 17}, ValueError, "exceeds the 16 tokens", id="api-steps-over-grid"),
    C("ok", {"num_steps": 0}, ConfigError, "sample.num_steps", id="api-steps-0"),
    C("ok", {"guidance_scale": float("nan")}, ConfigError, "sample.guidance_scale", id="api-guidance-nan"),
    C("ok", {"guidance_scale": "2"}, ConfigError, "sample.guidance_scale", id="api-guidance-str"),
    C("ok", {"temperature": -1.0}, ConfigError, "sample.temperature", id="api-temperature-negative"),
    C("ok", {"temperature": float("inf")}, ConfigError, "sample.temperature", id="api-temperature-inf"),
    C("ok", {"choice_temperature": float("-inf")}, ConfigError, "sample.choice_temperature", id="api-choice-temp"),
    C("ok", {"top_k": -1}, ConfigError, "sample.top_k", id="api-top-k-negative"),
    C("ok", {"top_k": 2.5}, ConfigError, "sample.top_k", id="api-top-k-float"),
    C("ok", {"sampler": "greedy"}, ConfigError, "unknown sampler 'greedy'", id="api-sampler"),
    C("ok", {"return_history": 1}, TypeError, "return_history must be True or False", id="api-history-int"),
    C("ok", {"generator": 0}, TypeError, "generator must be a torch.Generator", id="api-generator-int"),
    C("ok", {"precision": "fp16"}, ValueError, "unknown precision 'fp16'", id="api-precision"),
]


@pytest.mark.parametrize("prompts,kwargs,error,fragment", API_CASES)
def test_bad_pipeline_arguments(pipe, monkeypatch, prompts, kwargs, error, fragment):
    # Refused before the text encoder or the sampler runs: nothing is computed for a call that will fail.
    monkeypatch.setattr("minimuse.pipeline.sample", lambda *a, **k: pytest.fail("sampled before refusing"))
    with pytest.raises(error) as e:
        pipe(prompts, **kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_zero_width_prompt_really_encodes_like_the_empty_prompt(pipe):
    """Why such prompts are refused: the encoder returns exactly the unconditional input for them."""
    enc = pipe.text_encoder
    assert enc.content_token_count(["", " \t", "\u200b", "\x00\x07", "a red circle"]) == [0, 0, 0, 0, 3]
    empty, blank = enc([""]), enc(["\u200b\x00 "])
    assert torch.equal(empty[0], blank[0]) and torch.equal(empty[1], blank[1])


@pytest.mark.parametrize("kwargs,fragment", [
    ({"n": 0}, "n must be an integer of at least 1"), ({"n": 2.0}, "n must be an integer"),
    ({"n": 2, "size": 12}, "multiple of 8"), ({"n": 2, "seed": -3}, "seed must be an integer of 0 or more"),
])
def test_write_dataset_refuses_bad_arguments(tmp_path, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        write_dataset(out_dir=tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_checkpoint_errors_are_checkpoint_errors_in_python(bad):
    for name in ("nan", "pickle_payload", "wrong_width", "unknown_field", "codebook_mismatch"):
        with pytest.raises(CheckpointError):
            load_pipeline(bad / name)
    assert not (bad / "UNPICKLED").exists()


# ------------------------------------------------------------- issue 30: checked before training, and in Python

@pytest.mark.parametrize("eval_n,fragment", [("0", "--eval-n must be at least 1, got 0"), ("-3", "at least 1, got -3"),
                                             (str(10 ** 9), "--eval-n must be at most 100,000, got 1000000000")])
def test_finetune_decoder_checks_eval_n_before_training(eval_n, fragment, cascade, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("minimuse.train_tokenizer.train_tokenizer", lambda *a, **k: pytest.fail("trained before refusing"))
    code, _, err = run_cli(capsys, "finetune-decoder", "--preset", "ci", "--checkpoint", str(cascade),
                                "--out", str(tmp_path / "fd"), "--eval-n", eval_n)
    assert_one_line(code, err, fragment)
    assert not (tmp_path / "fd").exists()


def _scene():
    return np.asarray(Image.open(io.BytesIO(IMG)))[None]  # (1, 16, 16, 3) uint8


def _masks(n):
    m = np.zeros((n, 16, 16), bool)
    m[:, 4:12, 4:12] = True
    return m


EDIT_API_CASES = [
    C(lambda p, im: p.edit(im, "a red circle", resample_frac="0.5"), TypeError, "resample_frac must be a number, got str",
      id="edit-resample-frac-str"),
    C(lambda p, im: p.edit(im, "a red circle", resample_frac=[0.5]), TypeError, "resample_frac must be a number, got list",
      id="edit-resample-frac-list"),
    C(lambda p, im: p.edit(im, "a red circle", guidance_scale="4"), TypeError, "guidance_scale must be a number, got str",
      id="edit-guidance-str"),
    C(lambda p, im: p.edit(im, "a red circle", num_iters=10 ** 6), ValueError, "num_iters must be at most 10,000",
      id="edit-num-iters-huge"),
    C(lambda p, im: p.inpaint(np.concatenate([im, im]), _masks(3), "x"), ValueError,
      "masks: a batch of 3 for a batch of 2 images", id="inpaint-3-masks-2-images"),
    C(lambda p, im: p.inpaint(np.concatenate([im, im, im]), _masks(2), "x"), ValueError,
      "masks: a batch of 2 for a batch of 3 images", id="inpaint-2-masks-3-images"),
    C(lambda p, im: p.outpaint(im, "x", extend="right:1000000"), ValueError, "at most 128 px (8x the 16 px image)",
      id="outpaint-extend-huge"),
    C(lambda p, im: p.outpaint(im, "x", extend="bottom:132"), ValueError, "got 132 px", id="outpaint-extend-over"),
]


@pytest.mark.parametrize("call,error,fragment", EDIT_API_CASES)
def test_bad_edit_arguments_are_named_before_sampling(pipe, monkeypatch, call, error, fragment):
    for target in ("minimuse.pipeline.sample", "minimuse.editing.mask_free_edit"):
        monkeypatch.setattr(target, lambda *a, **k: pytest.fail("sampled before refusing"))
    with pytest.raises(error) as e:
        call(pipe, _scene())
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arg,name", [(123, "int"), (["ckpt"], "list"), (b"ckpt", "bytes")])
def test_load_pipeline_names_a_wrong_argument_type(arg, name):
    with pytest.raises(TypeError, match=f"^checkpoint must be a folder path .* got {name}$"):
        load_pipeline(arg)


@pytest.mark.parametrize("kwargs,error,fragment", [
    ({"seed": -1}, ValueError, "seed must lie in [0, 2**63), got -1"),
    ({"seed": 2.0}, TypeError, "seed must be an integer, got float"),
])
def test_upscale_checks_its_seed_before_sampling(cascade, monkeypatch, kwargs, error, fragment):
    pipe = load_pipeline(cascade, device="cpu")
    monkeypatch.setattr("minimuse.pipeline.sample", lambda *a, **k: pytest.fail("sampled before refusing"))
    with pytest.raises(error) as e:
        pipe.upscale(_scene(), ["a red circle"], **kwargs)
    assert fragment in str(e.value)


# --------------------------------------------------------------- issue 30: one image reader for every command

def _with_alpha(mode, value, alpha):
    a = np.full((16, 16, 1 if mode == "LA" else 3), value, np.uint8)
    return _png(np.dstack([a, np.full((16, 16), alpha, np.uint8)]).squeeze())


def _palette_with_transparency():
    im = Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).convert("P")
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=int(np.asarray(im)[0, 0]))  # the one colour is transparent
    return buf.getvalue()


@pytest.mark.parametrize("data,pixel", [
    C(_png(np.full((16, 16), 32768, np.uint16)), [128] * 3, id="16-bit-grey-is-scaled-not-clipped"),
    C(_with_alpha("RGBA", 200, 128), [100] * 3, id="rgba-over-black"),
    C(_with_alpha("LA", 200, 0), [0] * 3, id="transparent-grey-is-background"),
    C(_palette_with_transparency(), [0] * 3, id="palette-transparency-is-background"),
])
def test_read_image_converts_modes_to_what_the_eye_sees(data, pixel, tmp_path):
    from minimuse.inputs import read_image
    (tmp_path / "x.png").write_bytes(data)
    assert read_image(tmp_path / "x.png")[0, 0].tolist() == pixel


def test_read_image_applies_the_exif_orientation(tmp_path):
    from minimuse.inputs import read_image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a phone's portrait photo
    Image.fromarray(np.zeros((16, 8, 3), np.uint8)).save(tmp_path / "x.png", exif=exif)
    assert read_image(tmp_path / "x.png").shape == (8, 16, 3)


@pytest.mark.parametrize("data,fragment", [
    C(BOMB, "it declares 10,000,000,000 pixels, over the 89,478,485-pixel limit", id="bomb"),
    C(OVER, "it declares 100,000,000 pixels", id="over-the-warning-limit"),
    C(FLOAT, "it holds floating-point pixels (mode F)", id="float"),
])
def test_read_image_refuses_by_name(data, fragment, tmp_path):
    from minimuse.inputs import read_image
    (tmp_path / "x.png").write_bytes(data)
    with pytest.raises(ValueError) as e:
        read_image(tmp_path / "x.png")
    assert f"cannot read image {tmp_path / 'x.png'}: {fragment}" in str(e.value)


def test_training_images_go_through_the_same_reader():
    from minimuse.hfdata import DataError, prepare_image
    with pytest.raises(DataError, match="cannot read image bomb.png: it declares 10,000,000,000 pixels"):
        prepare_image({"bytes": BOMB, "path": "bomb.png"}, 16)
    grey16 = _png(np.full((16, 16), 32768, np.uint16))
    assert prepare_image({"bytes": grey16, "path": "g.png"}, 16)[0, 0].tolist() == [128] * 3


@pytest.mark.parametrize("command", ["pretokenize", "train-tokenizer"])
def test_a_bomb_in_the_training_data_is_one_line_naming_it(command, ckpt, tmp_path, capsys):
    from minimuse.hfdata import write_imagefolder
    d = tmp_path / "data"
    write_imagefolder(d, "shapes", n=2, size=16, seed=1)
    (d / "001.png").write_bytes(BOMB)
    argv = (["pretokenize", "--data", d, "--tokenizer", ckpt / "tokenizer", "--out", tmp_path / "sh"]
            if command == "pretokenize" else ["train-tokenizer", "--data", d, "--out", tmp_path / "run"])
    code, _, err = run_cli(capsys, argv[0], "--preset", "ci", *argv[1:])
    assert_one_line(code, err, f"cannot read image {d / '001.png'}: it declares 10,000,000,000 pixels")
    assert not (tmp_path / "sh").exists() and not (tmp_path / "run").exists()  # refused before the first write
