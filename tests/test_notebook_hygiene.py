"""Notebook hygiene, checked without running anything: what nbval and learners rely on."""
import functools
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# The appendices (engineering that is not Muse, and the judge's internals) are not lessons: no roadmap, no solutions,
# outside the 30-minute sequence; every other rule holds for them.
APPENDICES = sorted((Path(__file__).resolve().parent.parent / "notebooks" / "appendix").glob("*.ipynb"))
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
    assert [nb.name for nb in APPENDICES] == ["A1_judge.ipynb", "A2_engineering.ipynb"]


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES, ids=lambda p: p.name)
def test_execution_counts_are_one_to_n(nb):
    counts = [c.get("execution_count") for c in _cells(nb) if c["cell_type"] == "code" and _text(c).strip()]
    assert counts == list(range(1, len(counts) + 1)), f"{nb.name}: re-run top to bottom, then nbstripout --keep-output --keep-count"


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES, ids=lambda p: p.name)
def test_no_widget_state_and_small(nb):
    meta = json.loads(nb.read_text()).get("metadata", {})
    assert "widgets" not in meta, f"{nb.name} stores ipywidgets state"
    assert nb.stat().st_size < 2_000_000


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES, ids=lambda p: p.name)
def test_no_absolute_paths_in_outputs(nb):
    for cell in _cells(nb):
        for out in cell.get("outputs", []):
            text = json.dumps({k: v for k, v in out.items() if k != "data"}) + json.dumps(out.get("data", {}).get("text/plain", ""))
            m = ABS_PATH.search(text)
            assert not m, f"{nb.name}: absolute path {m.group(0)!r} in an output"


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES, ids=lambda p: p.name)
def test_standard_header_and_footer(nb):
    cells = _cells(nb)
    first, last = cells[0], cells[-1]
    assert first["cell_type"] == "markdown" and _text(first).startswith(f"# {nb.name[:2]} ")
    for field in HEADER_FIELDS:
        assert field in _text(first), f"{nb.name}: header lacks {field}"
    assert last["cell_type"] == "markdown"
    for field in FOOTER_FIELDS:
        assert field in _text(last), f"{nb.name}: last cell lacks {field}"


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES, ids=lambda p: p.name)
def test_plots_end_with_show_not_semicolon(nb):
    for cell in _cells(nb):
        if cell["cell_type"] == "code":
            lines = [l for l in _text(cell).strip().splitlines() if l.strip()]
            assert not (lines and lines[-1].rstrip().endswith(";")), f"{nb.name}: cell ends with ';': use plt.show()"


# ---- the course frame of issue 15: roadmap, captions, Discussion and References, runtimes, solutions ----
import importlib.util  # noqa: E402

from minimuse.viz import LESSONS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "solutions"
_spec = importlib.util.spec_from_file_location("time_notebooks", ROOT / "benchmarks" / "time_notebooks.py")
time_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(time_notebooks)


def _has_png(cell):
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_the_roadmap_lists_every_lesson_in_order():
    assert [stem for stem, _, _ in LESSONS] == [nb.stem for nb in NOTEBOOKS]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_second_cell_draws_the_roadmap_at_this_notebook(nb):
    cell = _cells(nb)[1]
    assert cell["cell_type"] == "code" and f'roadmap("{nb.stem}")' in _text(cell), f"{nb.name}: cell 1 must call roadmap"


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES, ids=lambda p: p.name)
def test_every_figure_has_a_numbered_caption_under_it(nb):
    cells, n = _cells(nb), 0
    for i, cell in enumerate(cells[2:], start=2):  # cell 1 is the roadmap, which is navigation, not a figure
        if cell["cell_type"] == "code" and _has_png(cell):
            n += 1
            nxt = cells[i + 1] if i + 1 < len(cells) else {}
            assert nxt.get("cell_type") == "markdown" and _text(nxt).startswith(f"**Figure {n}.**"), \
                f"{nb.name}: the figure of cell {i} needs a caption cell starting '**Figure {n}.**' under it"
    captions = [c for c in cells if c["cell_type"] == "markdown" and _text(c).startswith("**Figure ")]
    assert len(captions) == n, f"{nb.name}: {len(captions)} captions for {n} figures"


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES, ids=lambda p: p.name)
def test_footer_has_discussion_and_references_with_links(nb):
    last = _text(_cells(nb)[-1])
    assert last.index("## Where this lives in the package") < last.index("## Discussion") < last.index("## References")
    refs = last[last.index("## References"):]
    assert re.search(r"arxiv\.org/abs/\d{4}\.\d{4,5}", refs) or "github.com/" in refs, f"{nb.name}: references need links"


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES + sorted(SOLUTIONS.glob("*.ipynb")), ids=lambda p: p.name)
def test_header_runtime_is_the_recorded_measurement(nb):
    """Lessons, appendices and solutions alike: the header states the time benchmarks/time_notebooks.py recorded."""
    record = json.loads((ROOT / "notebooks" / "timings.json").read_text())
    times = record.get(nb.parent.name, {})  # the folder names the record: notebooks, appendix or solutions
    assert nb.stem in times, f"{nb.name} has no timing: run benchmarks/time_notebooks.py {time_notebooks.name_of(nb)}"
    assert time_notebooks.name_of(nb) in record["measured_on"], f"{nb.name}: timings.json does not say on which day"
    header = _text(_cells(nb)[0])
    line = next(l for l in header.splitlines() if l.startswith("**Runtime on a 2-core CPU:**"))
    phrase = time_notebooks.runtime_phrase(times[nb.stem])
    assert phrase in line and "timings.json" in header, f"{nb.name}: header says {line!r}, timings.json says {phrase!r}"


def test_the_lesson_sequence_fits_in_thirty_minutes_as_recorded():
    record = json.loads((ROOT / "notebooks" / "timings.json").read_text())
    assert set(record["notebooks"]) == {nb.stem for nb in NOTEBOOKS}
    assert record["preset"] == "laptop" and record["machine"]["cpus"] <= 2 and not record["machine"]["gpu"]
    assert record["total_s"] == pytest.approx(sum(record["notebooks"].values()), abs=0.5)
    assert record["total_s"] <= 30 * 60


def _exercises(cell_text):
    block = cell_text.split("## Exercises", 1)[1].split("\n## ", 1)[0]
    return [int(m) for m in re.findall(r"^(\d+)\. ", block, flags=re.M)]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_has_a_solution(nb):
    sol = SOLUTIONS / f"{nb.name[:2]}_solutions.ipynb"
    assert sol.exists(), f"{nb.name}: no {sol.relative_to(ROOT)}"
    wanted = _exercises(_text(_cells(nb)[-1]))
    assert wanted == list(range(1, len(wanted) + 1)) and wanted
    cells = _cells(sol)
    headings = [int(m.group(1)) for c in cells if c["cell_type"] == "markdown"
                for m in [re.match(r"## Exercise (\d+)\b", _text(c))] if m]
    assert headings == wanted, f"{sol.name}: exercises {headings}, the lesson has {wanted}"
    answers = sum(_text(c).startswith("**Answer.**") for c in cells if c["cell_type"] == "markdown")
    assert answers >= len(wanted), f"{sol.name}: {answers} answers for {len(wanted)} exercises"


SOLUTION_NOTEBOOKS = sorted(SOLUTIONS.glob("*.ipynb"))


@pytest.mark.parametrize("nb", SOLUTION_NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_are_clean_executed_and_banded(nb):
    cells = _cells(nb)
    counts = [c.get("execution_count") for c in cells if c["cell_type"] == "code" and _text(c).strip()]
    assert counts == list(range(1, len(counts) + 1)), f"{nb.name}: re-run top to bottom, then nbstripout"
    assert _text(cells[0]).startswith(f"# {nb.name[:2]} · Solutions")
    assert "**Runtime on a 2-core CPU:**" in _text(cells[0])
    assert any("assert" in _text(c) for c in cells if c["cell_type"] == "code"), f"{nb.name}: no checked band"
    for cell in cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{nb.name}: a stored output is an error"
            text = json.dumps({k: v for k, v in out.items() if k != "data"}) + json.dumps(out.get("data", {}).get("text/plain", ""))
            assert not ABS_PATH.search(text), f"{nb.name}: absolute path in an output"
        if cell["cell_type"] == "code":
            lines = [l for l in _text(cell).strip().splitlines() if l.strip()]
            assert not (lines and lines[-1].rstrip().endswith(";")), f"{nb.name}: cell ends with ';'"


def test_readme_lesson_table_is_viz_lessons():
    """The README's lesson table and viz.LESSONS (the roadmap strip, notebook 00's map) name the same lessons, in order,
    with the same package files: one list, shown in two places."""
    rows = re.findall(r"^\| `(\d\d_\w+)` \| [^|]+ \| (.+) \|$", (ROOT / "README.md").read_text(), flags=re.M)
    assert [(stem, files.replace("`", "")) for stem, files in rows] == [(stem, files) for stem, _, files in LESSONS]



# --- numbers quoted in markdown ---------------------------------------------------------------------------------------
# A number in a notebook's text must come from somewhere a reader can check: a stored output of that notebook (to the
# digits quoted), its code, or a file its text cites (docs/..., data/...). The rest are listed here with their source;
# an entry that no longer occurs fails too, so the list cannot go stale.
QUOTED = re.compile(r"(?<![\w.§/-])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(?![\w.]*\d)")
CITED = re.compile(r"((?:docs|data|notebooks|benchmarks|minimuse|tests)/[\w./-]+\.\w+)")
NOT_QUANTITIES = [r"\$[^$]*\$", r"arXiv[ :]*\d+\.\d+", r"https?://\S+", r"doi:\S+", r"§\s*[\d.]+", r"App\.\s*[A-Z][\d.]*"]
CAPTIONS = "2,214 canonical captions: len({canonical_caption(s) for k in CAPTION_KINDS for s in data.specs_of_kind(k)})"
SOURCED = {
    "00_overview": {"7.88": "Muse, abstract (zero-shot COCO FID of Muse-3B)"},
    "01_shapes_world": {"2,214": CAPTIONS},
    "A1_judge": {"0.83": "the fill ratios behind Figure 1 (the smallest square's, 0.826)",
                 "0.91": "the fill ratios behind Figure 1 (the largest circle's, 0.906)"},
    "A2_engineering": {"2,214": CAPTIONS},
    "02_tokenizer": {"0.45": "read off Figure 4 (the tiny tokenizer's loss curve)", "32,768": "512 images x 64 tokens"},
    "03_text_encoder": {"30,522": "BERT's uncased WordPiece vocabulary (Devlin et al. 2019), which MiniLM keeps",
                        "0.85": "read off Figure 2 (cosine similarity of the token states)", "2,214": CAPTIONS},
    "05_training": {"0.24": "read off Figure 2 (the accuracy's moving average)"},
    "06_sampling": {"61.9": "notebook 09's guidance sweep (w = 4), which the sentence cites",
                    "0.17": "read off Figure 9 (attention shares per text token)", "0.18": "read off Figure 9",
                    "0.055": "read off Figure 9", "0.06": "read off Figure 9", "0.12": "read off Figure 9"},
    "07_superres": {"2.88": "read off Figure 3 (the inline run's loss)", "2.29": "read off Figure 3",
                    "6.3": "read off Figure 4 (per-scene PSNR under the images)", "4.8": "read off Figure 7 (per-scene PSNR)",
                    "0.35": "the 64 px tokenizer's decoder, 0.35M parameters (data/checkpoints/README.md)"},
    "09_experiments": {"6.06": "Muse, Table 1 (CC3M FID of Muse-3B)", "7.88": "Muse, abstract", "0.32": "Muse, abstract (CLIP score)"},
    "04_solutions": {"0.156": "1 - arccos(0.9) / (pi / 2), the arccos law's tail P(r > 0.9)"},
    "05_solutions": {"0.044": "2.036 minus 1.992, the two held-out cross-entropies printed above", "2,500": "read off the stored log's steps (about)"},
    "06_solutions": {"4.1": "read off the exercise's figure (log p of the likeliest codes)", "1.1": "read off the same figure"},
    "07_solutions": {"3.3": "32.3 - 29.0 dB, both printed", "95.5": "read off the exercise's attention figure",
                     "87.4": "read off the same figure"},
    "09_solutions": {"1,024": "the 32 x 32 token grid of the 1024-token timing"},
    "10_solutions": {"20,000": "the training split's size (the nouns preset's dataset command)",
                     "2,000": "the nouns preset's train.steps"},
}


@functools.cache
def _numbers_of(path):
    """{number: [markdown cell index]} over the quantities quoted in a notebook's markdown."""
    found = {}
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "markdown":
            text = _text(cell)
            for pattern in NOT_QUANTITIES:
                text = re.sub(pattern, "", text)
            for m in QUOTED.finditer(text):
                found.setdefault(m.group(1), []).append(i)
    return found


@functools.cache
def _evidence(path) -> tuple[str, list[float]]:
    """(the text a quoted number may come from, the decimals in it): outputs, code and the files the text cites."""
    cells = _cells(path)
    outputs = [_text({"source": o.get("text", "")}) + _text({"source": o.get("data", {}).get("text/plain", "")})
               for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    code = [_text(c).replace("_", "") for c in cells if c["cell_type"] == "code"]
    prose = "\n".join(_text(c) for c in cells if c["cell_type"] == "markdown")
    files = [ROOT / p for p in CITED.findall(prose) if (ROOT / p).is_file() and (ROOT / p).stat().st_size < 5_000_000]
    text = "\n".join(outputs + code + [f.read_text(errors="ignore") for f in files]).replace(",", "")
    return text, [float(x) for x in re.findall(r"\d+\.\d+", text)]


@pytest.mark.parametrize("nb", NOTEBOOKS + APPENDICES + SOLUTION_NOTEBOOKS, ids=lambda p: p.stem)
def test_numbers_in_markdown_are_printed_cited_or_sourced(nb):
    text, decimals = _evidence(nb)
    listed = SOURCED.get(nb.stem, {})
    unsourced = []
    for number, where in _numbers_of(nb).items():
        plain = number.replace(",", "")
        places = len(plain.split(".")[1]) if "." in plain else 0
        rounded = places and any(abs(round(v, places) - float(plain)) < 1e-9 for v in decimals)  # "about 0.40" of 0.398
        if plain not in text and not rounded and number not in listed:
            unsourced.append((number, where))
    assert not unsourced, f"{nb.name}: numbers in markdown (number, cells) with no output, citation or source: {unsourced}"
    stale = [n for n in listed if n not in _numbers_of(nb)]
    assert not stale, f"{nb.name}: SOURCED lists numbers its text no longer quotes: {stale}"


MYMUSE = ROOT / "notebooks" / "mymuse"
WRITEFILE = re.compile(r"%%writefile( -a)? (mymuse/\w+\.py)\n")


def _written_by_lessons() -> tuple[dict, dict]:
    """({path under notebooks/: the text the lessons' %%writefile cells leave there, run in order}, {path: its lesson})."""
    files, lessons = {}, {}
    for nb in NOTEBOOKS:
        for cell in _cells(nb):
            m = WRITEFILE.match(_text(cell))
            if cell["cell_type"] == "code" and m:
                body = _text(cell)[m.end():]
                body += "" if body.endswith("\n") else "\n"  # IPython ends what it writes with one newline
                files[m.group(2)] = (files.get(m.group(2), "") if m.group(1) else "") + body
                lessons.setdefault(m.group(2), nb.name)
    return files, lessons


def test_mymuse_is_what_the_lessons_write():
    """notebooks/mymuse/ is the learner's package: each file is exactly what its lesson's cells write (a rerun of the
    lessons leaves the repository unchanged), and no file is there that no lesson writes."""
    files, _ = _written_by_lessons()
    assert files, "no lesson writes into mymuse/"
    on_disk = {f"mymuse/{p.name}" for p in MYMUSE.glob("*.py")} - {"mymuse/__init__.py"}
    assert on_disk == set(files), f"in mymuse/ but written by no lesson, or the other way: {on_disk ^ set(files)}"
    for path, text in files.items():
        assert (ROOT / "notebooks" / path).read_text() == text, f"notebooks/{path} differs from what its lesson writes"


def test_every_mymuse_module_is_used_by_a_later_lesson():
    """A learner's module is imported by a later lesson (d2l's and rasbt's pattern: what you write, you reuse), not
    written and forgotten."""
    files, lessons = _written_by_lessons()
    for path, lesson in lessons.items():
        name = path[len("mymuse/"):-3]
        pattern = re.compile(rf"from mymuse(\.{name} import| import (\w+, )*{name}\b)")
        users = {nb.name for nb in NOTEBOOKS
                 for c in _cells(nb) if c["cell_type"] == "code" and not WRITEFILE.match(_text(c)) and pattern.search(_text(c))}
        later = {u for u in users if u > lesson}
        assert later, f"{path} (written in {lesson}) is imported by no later lesson (only by {sorted(users)})"
