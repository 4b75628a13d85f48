"""The package's shape, read from its source: three layers whose imports point down, no import cycle, few
function-local imports, and files and functions short enough to read.

- core (pure torch, the Muse a learner reads first): tokenizer, quantizer, text encoder, transformer, scheduler,
  sampler, super-res, autoregressive, critic, with the decoding helpers they share;
- machinery: the pipeline, editing, training, data, pool and shards, the judges and the drawings;
- apps: the CLI and its commands, evaluation, sweep and bench.
Below all three sit the foundations every layer uses: config, presets, limits, checkpoint, inputs, locks, metrics.
Each test names what breaks it, so a new upward import or a new cycle fails here, not in a reader's head."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "minimuse"
FOUNDATION = {"config", "presets", "limits", "checkpoint", "inputs", "locks", "metrics"}
CORE = {"tokenizer", "quantizer", "vqmodel", "text_encoder", "transformer", "scheduler", "decoding", "sampler",
        "superres", "autoregressive", "critic"}
MACHINERY = {"pipeline", "editing", "loop", "train", "transformer_setup", "train_tokenizer", "runs", "pool", "data",
             "hfdata", "shards", "features", "judge", "digits", "nouns", "nouns_judge", "nouns_standin", "viz", "measures",
             "peak"}
APPS = {"__init__", "__main__", "cli", "commands", "jobs", "eval", "eval_counts", "eval_edits", "eval_nouns", "sweep",
        "bench", "diagrams"}
LAYER = {**{m: 0 for m in FOUNDATION}, **{m: 1 for m in CORE}, **{m: 2 for m in MACHINERY}, **{m: 3 for m in APPS}}
# Upward imports: none. Should one ever be needed, it is listed here, and the test fails when one is added unlisted and
# when one is fixed but still listed.
KNOWN_UPWARD: set[tuple[str, str]] = set()
MAX_LINES, MAX_FUNCTION_LINES, MAX_LOCAL_IMPORTS = 350, 100, 10
LONG_FUNCTIONS: set[str] = set()


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PKG.glob("*.py"))}


def relative_imports(tree: ast.AST):
    """(module imported, node, inside a function?) for every `from . import x` / `from .x import y` in `tree`."""
    def walk(node, local):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                for name in [child.module] if child.module else [a.name for a in child.names]:
                    yield name.split(".")[0], child, local
            yield from walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    yield from walk(tree, False)


def graph() -> dict[str, set[str]]:
    return {m: {name for name, _, _ in relative_imports(t)} for m, t in modules().items()}


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYER), set(modules()) ^ set(LAYER)


def test_no_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_imports_point_down():
    upward = {(m, n) for m, ns in graph().items() for n in ns if n in LAYER and LAYER[n] > LAYER[m]}
    assert upward == KNOWN_UPWARD, f"new: {upward - KNOWN_UPWARD}, fixed (remove from KNOWN_UPWARD): {KNOWN_UPWARD - upward}"


def test_function_local_imports_are_few_and_say_why():
    src = {p.stem: p.read_text().splitlines() for p in PKG.glob("*.py")}
    local = [(m, node.lineno) for m, t in modules().items() for _, node, inside in relative_imports(t) if inside]
    assert len(local) <= MAX_LOCAL_IMPORTS, local
    uncommented = [(m, line) for m, line in local if "#" not in src[m][line - 1]]
    assert not uncommented, f"a function-local import needs a comment saying why: {uncommented}"


def test_files_are_short():
    long = {p.name: n for p in PKG.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_functions_are_short():
    long = {f"{m}.{f.name}" for m, t in modules().items() for f in ast.walk(t)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES}
    assert long == LONG_FUNCTIONS, f"new: {long - LONG_FUNCTIONS}, fixed (remove from LONG_FUNCTIONS): {LONG_FUNCTIONS - long}"


def test_the_readme_reading_order_counts_lines_truly():
    import re
    readme = (PKG.parent / "README.md").read_text()
    counted = re.findall(r"`(\w+\.py)` \((\d+) lines\)", readme)
    assert len(counted) >= 10, counted  # every core file
    wrong = {f: (int(n), len((PKG / f).read_text().splitlines())) for f, n in counted
             if int(n) != len((PKG / f).read_text().splitlines())}
    assert not wrong, f"README line counts (said, true): {wrong}"
    total = int(re.search(r"plain torch, ([\d,]+) lines", readme).group(1).replace(",", ""))
    assert total == sum(int(n) for _, n in counted), total
