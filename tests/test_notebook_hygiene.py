"""Notebook hygiene, checked without running anything: what nbval and learners rely on."""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
HEADER_FIELDS = ("**Aim:**", "**You will build:**", "**Prerequisites:**", "**Runtime on a 2-core CPU:**")
FOOTER_FIELDS = ("## Summary", "## Exercises", "## Where this lives in the package")
ABS_PATH = re.compile(r"(/work/|/home/|/root/|/tmp/|/Users/|[A-Z]:\\\\)")


def _cells(nb):
    return json.loads(nb.read_text())["cells"]


def _text(cell):
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def test_there_are_notebooks():
    names = [nb.name for nb in NOTEBOOKS]
    stages = ["00_overview", "01_shapes_world", "02_tokenizer", "03_text_encoder", "04_masking", "05_training", "06_sampling"]
    assert [n for n in names if n[:-6] in stages] == [s + ".ipynb" for s in stages], names
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n) for n in names), names


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_execution_counts_are_one_to_n(nb):
    counts = [c.get("execution_count") for c in _cells(nb) if c["cell_type"] == "code" and _text(c).strip()]
    assert counts == list(range(1, len(counts) + 1)), f"{nb.name}: re-run top to bottom, then nbstripout --keep-output --keep-count"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_widget_state_and_small(nb):
    meta = json.loads(nb.read_text()).get("metadata", {})
    assert "widgets" not in meta, f"{nb.name} stores ipywidgets state"
    assert nb.stat().st_size < 2_000_000


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_absolute_paths_in_outputs(nb):
    for cell in _cells(nb):
        for out in cell.get("outputs", []):
            text = json.dumps({k: v for k, v in out.items() if k != "data"}) + json.dumps(out.get("data", {}).get("text/plain", ""))
            m = ABS_PATH.search(text)
            assert not m, f"{nb.name}: absolute path {m.group(0)!r} in an output"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_standard_header_and_footer(nb):
    cells = _cells(nb)
    first, last = cells[0], cells[-1]
    assert first["cell_type"] == "markdown" and _text(first).startswith(f"# {nb.name[:2]} ")
    for field in HEADER_FIELDS:
        assert field in _text(first), f"{nb.name}: header lacks {field}"
    assert last["cell_type"] == "markdown"
    for field in FOOTER_FIELDS:
        assert field in _text(last), f"{nb.name}: last cell lacks {field}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_plots_end_with_show_not_semicolon(nb):
    for cell in _cells(nb):
        if cell["cell_type"] == "code":
            lines = [l for l in _text(cell).strip().splitlines() if l.strip()]
            assert not (lines and lines[-1].rstrip().endswith(";")), f"{nb.name}: cell ends with ';': use plt.show()"
