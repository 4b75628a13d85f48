"""Nothing minimuse reads can run code: a static scan of the package for unpickling loaders, and a live pickle
payload planted under every name a run or checkpoint directory holds, fed to every reader.

The scan catches a loader before it ships; the payload proves the readers that exist today refuse or ignore a
crafted file. A payload, when unpickled, creates a marker file; every test asserts the marker never appears and
that the reader either refuses in one line (CheckpointError, `minimuse` exit 2) or ignores the file.
See checkpoint.py (save_tree / load_tree) and runs.py (the run-directory guard).
"""
import ast
import dataclasses
import io
import pathlib
import pickle
import shutil

import pytest
from tiny import make_tiny_pipeline
import torch

from minimuse.checkpoint import CheckpointError, load_tree
from minimuse.cli import main
from minimuse.presets import get_config
from minimuse.pipeline import load_pipeline
from minimuse.text_encoder import TextEncoder
from minimuse.tokenizer import Tokenizer
from minimuse.transformer import MaskedTransformer

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "minimuse"

# --------------------------------------------------------------------------------------------------- static scan

# Calls that unpickle or evaluate what they are given, by the qualified name the call resolves to.
UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "dill.load", "dill.loads",
    "cloudpickle.load", "cloudpickle.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open",
    "pandas.read_pickle", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec",
}
# Loaders that are safe only with an explicit literal keyword: torch.load unpickles unless weights_only=True.
GUARDED_CALLS = {"torch.load": ("weights_only", True), "torch.serialization.load": ("weights_only", True),
                 "numpy.load": ("allow_pickle", False)}
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve"}
DYNAMIC_IMPORTS = {"__import__", "importlib.import_module"}
CONVENTIONAL_ALIASES = {"np": "numpy", "pd": "pandas"}  # so `np.load(p)` is caught even in a snippet without imports


def _qualified(func: ast.expr, aliases: dict[str, str]) -> str | None:
    """`T.load` after `import torch as T` -> "torch.load"; None for calls on computed values (`f().load`)."""
    if isinstance(func, ast.Name):
        return aliases.get(func.id, func.id)
    if isinstance(func, ast.Attribute):
        base = _qualified(func.value, aliases)
        return f"{base}.{func.attr}" if base else None
    return None


def _is_literal(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def find_unsafe_loads(source: str, filename: str = "<string>") -> list[str]:
    """Every import of a pickle module and every call that could unpickle or evaluate data, as "file:line: what".

    Works on the syntax tree, so comments, strings and methods that share a name (`model.eval()`) do not count."""
    tree = ast.parse(source, filename)
    aliases, found = dict(CONVENTIONAL_ALIASES), []
    report = lambda node, what: found.append(f"{filename}:{node.lineno}: {what}")
    for node in ast.walk(tree):  # imports first: an alias anywhere in the file names the module everywhere
        if isinstance(node, ast.Import):
            for a in node.names:
                root = a.name.split(".")[0]
                if root in UNSAFE_MODULES:
                    report(node, f"import {a.name}")
                aliases[a.asname or root] = a.name if a.asname else root
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in UNSAFE_MODULES:
                report(node, f"from {node.module} import ...")
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualified(node.func, aliases)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if "allow_pickle" in keywords and not _is_literal(keywords["allow_pickle"], False):
            report(node, f"{name}(allow_pickle=...) that is not a literal False")
        if name in UNSAFE_CALLS:
            report(node, f"{name}(...)")
        elif name in GUARDED_CALLS:
            key, safe = GUARDED_CALLS[name]
            if not _is_literal(keywords.get(key), safe):
                report(node, f"{name}(...) without {key}={safe}")
        elif name in DYNAMIC_IMPORTS and node.args and isinstance(node.args[0], ast.Constant) \
                and str(node.args[0].value).split(".")[0] in UNSAFE_MODULES:
            report(node, f"{name}({node.args[0].value!r})")
    return found


def test_the_package_has_no_unpickling_loader():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 15, f"expected the whole package under {PACKAGE}, found {len(files)} files"  # not vacuous
    problems = [p for f in files for p in find_unsafe_loads(f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    assert not problems, "loaders that can run code:\n" + "\n".join(problems)


PLANTED = [
    "import torch\nx = torch.load(p)",
    "import torch\nx = torch.load(p, weights_only=False)",
    "import torch\nx = torch.load(p, weights_only=flag)",  # only a literal True is provably safe
    "import torch as T\nx = T.load(p)",
    "from torch import load\nx = load(p)",
    "import torch.serialization\nx = torch.serialization.load(p)",
    "import pickle",
    "import pickle as pk",
    "from pickle import loads",
    "import dill",
    "import _pickle",
    "import numpy as np\nx = np.load(p)",
    "import numpy\nx = numpy.load(p, allow_pickle=True)",
    "x = np.load(p, allow_pickle=True)",
    "x = something(p, allow_pickle=True)",
    "import joblib\nx = joblib.load(p)",
    "import marshal\nx = marshal.loads(b)",
    "import pandas as pd\nx = pd.read_pickle(p)",
    "import yaml\nx = yaml.load(s)",
    "cfg = eval(open(p).read())",
    "exec(pathlib.Path(p).read_text())",
    "import importlib\nm = importlib.import_module('pickle')",
    "m = __import__('dill')",
    "def f(p):\n    import torch\n    return torch.load(p)",  # inside a function too
]


@pytest.mark.parametrize("source", PLANTED)
def test_the_scanner_catches_a_planted_loader(source):
    # Without this, a scanner that reports nothing would pass the package test vacuously.
    assert find_unsafe_loads(source), f"not caught:\n{source}"


SAFE_LOOKALIKES = [
    "# torch.load(p) and pickle.loads(b) in a comment",
    "s = 'import pickle; pickle.loads(b); eval(x)'",
    "model.eval()",
    "import re\nr = re.compile('x')",
    "import torch\nx = torch.load(p, weights_only=True)",
    "import numpy as np\nx = np.load(p, allow_pickle=False)",
    "import json\nx = json.loads(s)",
    "from .checkpoint import load_tree\nx = load_tree(p)",
    "from safetensors.torch import load_file\nx = load_file(p)",
]


@pytest.mark.parametrize("source", SAFE_LOOKALIKES)
def test_the_scanner_passes_safe_lookalikes(source):
    assert find_unsafe_loads(source) == []


# ----------------------------------------------------------------------------------------------- planted payloads

class _TouchOnUnpickle:
    """Unpickling this calls Path.touch(marker): proof that a reader ran code from the file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def payload(marker: pathlib.Path, kind: str) -> bytes:
    """torch.save's zip (what torch.load(weights_only=False) would run) or a bare pickle (pickle.load, np.load)."""
    if kind == "pickle":
        return pickle.dumps(_TouchOnUnpickle(marker))
    buf = io.BytesIO()
    torch.save(_TouchOnUnpickle(marker), buf)
    return buf.getvalue()


# Every file a run or checkpoint directory holds that some reader opens, including the pre-safetensors names.
RUN_FILES = ["training_state.safetensors", "transformer_state.safetensors", "pool.safetensors", "model.safetensors",
             "transformer/model.safetensors", "tokenizer/model.safetensors",
             "training_state.pt", "transformer_state.pt", "pool.pt"]
CFG = get_config("ci")
TRAIN_SETS = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "data.pool_size=16",
              "--set", "train.ckpt_every=2", "--set", "train.log_every=2"]


@pytest.fixture(scope="module", params=["torch.save", "pickle"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A random-init ci tokenizer and transformer: their config.json files go beside the planted weights, so every
    reader gets past the config and reaches the weights."""
    return make_tiny_pipeline(tmp_path_factory.mktemp("real"), CFG)


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(CFG.text)


class Planted:
    """A directory with the payload under `names`, each payload touching its own marker when unpickled."""

    def __init__(self, root: pathlib.Path, real: pathlib.Path, kind: str, names=RUN_FILES):
        self.root, self.markers = root / "run", root / "markers"
        self.markers.mkdir(parents=True)
        for name in names:
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
            (self.root / name).write_bytes(payload(self.markers / name.replace("/", "__"), kind))
        for sub, src in (("", "tokenizer"), ("tokenizer", "tokenizer"), ("transformer", "transformer")):
            if (self.root / sub / "model.safetensors").is_file():
                shutil.copy(real / src / "config.json", self.root / sub / "config.json")

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())


def test_the_payload_is_live(tmp_path, kind):
    # The marker must appear when a file is unpickled, or "no marker" would prove nothing.
    p = tmp_path / "payload"
    p.write_bytes(payload(tmp_path / "marker", kind))
    if kind == "pickle":
        pickle.loads(p.read_bytes())
    else:
        torch.load(p, weights_only=False)
    assert (tmp_path / "marker").is_file()


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, *fragments):
    """Exit 2 with one line on stderr, naming the offending file."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimuse: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize("name", ["training_state.safetensors", "transformer_state.safetensors", "pool.safetensors"])
def test_load_tree_refuses_a_pickle(tmp_path, real, kind, name):
    planted = Planted(tmp_path, real, kind)
    with pytest.raises(CheckpointError, match=name):
        load_tree(planted.root / name)
    assert planted.fired() == []


def test_from_pretrained_and_load_pipeline_refuse_a_pickle(tmp_path, real, kind):
    planted = Planted(tmp_path, real, kind)
    for load, path in [(Tokenizer.from_pretrained, planted.root), (Tokenizer.from_pretrained, planted.root / "tokenizer"),
                       (MaskedTransformer.from_pretrained, planted.root / "transformer"), (load_pipeline, planted.root)]:
        with pytest.raises(CheckpointError, match="model.safetensors"):
            load(path)
    assert planted.fired() == []


# Each CLI reader: the files to plant, argv (from the planted dir, a real tokenizer dir and an output dir), and what
# its one-line refusal must name. RUN_FILES everywhere, so a reader that looked at any other planted file would fire.
PIPELINE_FILES = ["transformer/model.safetensors", "tokenizer/model.safetensors"]
CLI_READERS = {
    "train-tokenizer --resume": (RUN_FILES, lambda run, tok, out: ["train-tokenizer", "--preset", "ci", "--out", run, "--resume"],
                                 "training_state.safetensors"),
    "train-tokenizer": (RUN_FILES, lambda run, tok, out: ["train-tokenizer", "--preset", "ci", "--out", run],
                        "already holds a run"),  # refused before anything is read
    "train": (RUN_FILES, lambda run, tok, out: ["train", "--preset", "ci", "--out", run, "--tokenizer", tok, *TRAIN_SETS],
              "already holds a run"),
    "train --resume (its own tokenizer/)": (RUN_FILES, lambda run, tok, out: ["train", "--preset", "ci", "--out", run,
                                                                              "--resume", *TRAIN_SETS],
                                            "tokenizer/model.safetensors"),
    # with a real tokenizer the run reads on to pool.safetensors (a cache: rebuilt) and then the state
    "train --resume --tokenizer": (RUN_FILES, lambda run, tok, out: ["train", "--preset", "ci", "--out", run, "--resume",
                                                                     "--tokenizer", tok, *TRAIN_SETS],
                                   "transformer_state.safetensors"),
    "generate": (RUN_FILES, lambda run, tok, out: ["generate", "two red circles", "--checkpoint", run, "--out", out / "x.png"],
                 "transformer/model.safetensors"),
    "eval (tokenizer dir)": (RUN_FILES, lambda run, tok, out: ["eval", "--checkpoint", run, "--n", "1", "--tokenizer-n", "1"],
                             "model.safetensors"),
    "eval (pipeline dir)": (PIPELINE_FILES, lambda run, tok, out: ["eval", "--checkpoint", run, "--n", "1"],
                            "transformer/model.safetensors"),
    "bench": (RUN_FILES, lambda run, tok, out: ["bench", "--preset", "ci", "--checkpoint", run],
              "transformer/model.safetensors"),
}


@pytest.mark.parametrize("reader", list(CLI_READERS))
def test_every_cli_reader_refuses_planted_pickles(tmp_path, capsys, real, kind, reader):
    names, argv, fragment = CLI_READERS[reader]
    planted = Planted(tmp_path, real, kind, names)
    code, _, err = run_cli(capsys, *argv(planted.root, real / "tokenizer", tmp_path / "out"))
    assert_refused(code, err, fragment)
    assert planted.fired() == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("trainer", ["train-tokenizer", "train"])
def test_resume_from_only_a_legacy_pickle_state_is_refused_unread(tmp_path, capsys, real, kind, trainer):
    # An older minimuse pickled its state to *.pt; --resume must say so and start nothing, never torch.load it.
    planted = Planted(tmp_path, real, kind, names=["training_state.pt", "transformer_state.pt", "pool.pt"])
    extra = ["--tokenizer", real / "tokenizer"] if trainer == "train" else []
    code, _, err = run_cli(capsys, trainer, "--preset", "ci", "--out", planted.root, "--resume", *extra)
    assert_refused(code, err, "older minimuse", "--overwrite")
    assert planted.fired() == []


def test_train_ignores_legacy_pickles_beside_a_real_run(tmp_path, capsys, real, kind):
    # The old bug: a crafted pool.pt ran code on a plain `minimuse train`. The pool cache is now pool.safetensors,
    # and a planted one is only a bad cache: rebuilt, never unpickled.
    planted = Planted(tmp_path, real, kind, names=["pool.pt", "pool.safetensors"])
    code, _, err = run_cli(capsys, "train", "--preset", "ci", "--out", planted.root, "--tokenizer", real / "tokenizer", *TRAIN_SETS)
    assert code == 0, err
    assert load_tree(planted.root / "pool.safetensors")["ids"].shape[0] == 16  # rebuilt over the payload
    assert (planted.root / "pool.pt").read_bytes() == payload(planted.markers / "pool.pt", kind)  # left alone
    # A legacy state beside a real one is ignored on --resume (the finished run has nothing left to do).
    (planted.root / "transformer_state.pt").write_bytes(payload(planted.markers / "transformer_state.pt", kind))
    code, _, err = run_cli(capsys, "train", "--preset", "ci", "--out", planted.root, "--resume", *TRAIN_SETS)
    assert code == 0, err
    assert planted.fired() == []


def test_train_tokenizer_ignores_a_legacy_pickle_beside_a_real_state(tmp_path, capsys, real, kind):
    planted = Planted(tmp_path, real, kind, names=[])
    sets = ["--set", "tokenizer.steps=2", "--set", "tokenizer.ckpt_every=2", "--set", "tokenizer.log_every=2"]
    code, _, err = run_cli(capsys, "train-tokenizer", "--preset", "ci", "--out", planted.root, *sets)
    assert code == 0, err
    (planted.root / "training_state.pt").write_bytes(payload(planted.markers / "training_state.pt", kind))
    code, _, err = run_cli(capsys, "train-tokenizer", "--preset", "ci", "--out", planted.root, "--resume", *sets)
    assert code == 0, err
    assert planted.fired() == []


# ------------------------------------------------------------------------------------------ the text-encoder cache
# Cache files are named by a hash of (encoder, max_length, text): anyone who can write the cache directory can plant
# one for a prompt they expect. A planted file must be re-encoded (ignored) or refused, never unpickled.

def plant_text_cache(enc: TextEncoder, prompts, marker_dir: pathlib.Path, kind: str):
    for p in prompts:
        path = enc._disk_path(p)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload(marker_dir / f"marker-{len(p)}", kind))


def test_text_encoder_disk_cache_never_unpickles(tmp_path, minilm, kind):
    cfg = dataclasses.replace(CFG.text, cache_dir=str(tmp_path / "cache"))
    enc = TextEncoder(cfg, model=minilm.model, tokenizer=minilm.tokenizer)
    prompts = ["", "two red circles"]
    plant_text_cache(enc, prompts, tmp_path, kind)
    try:
        emb, mask = enc(prompts)
    except CheckpointError:
        pass  # refused: acceptable
    else:  # ignored: then the states must be the language model's, not anything read from the file
        ref_emb, ref_mask = minilm(prompts)
        assert torch.equal(emb, ref_emb) and torch.equal(mask, ref_mask)
    assert not list(tmp_path.glob("marker-*"))


def test_generate_with_a_planted_text_cache_never_unpickles(tmp_path, capsys, real, minilm, kind):
    # The same cache through `minimuse generate`, whose checkpoint config sets text.cache_dir: exit 0 or one line.
    cfg = get_config("ci", **{"text.cache_dir": str(tmp_path / "cache")})
    ckpt = tmp_path / "ckpt"
    Tokenizer.from_pretrained(real / "tokenizer").save_pretrained(ckpt / "tokenizer", cfg)
    MaskedTransformer.from_pretrained(real / "transformer").save_pretrained(ckpt / "transformer", cfg)
    enc = TextEncoder(cfg.text, model=minilm.model, tokenizer=minilm.tokenizer)  # only to name the cache files
    plant_text_cache(enc, ["two red circles", ""], tmp_path, kind)  # the prompt and guidance's unconditional ""
    code, _, err = run_cli(capsys, "generate", "two red circles", "--checkpoint", ckpt, "--out", tmp_path / "x.png")
    if code != 0:
        assert_refused(code, err)
    assert not list(tmp_path.glob("marker-*"))
