"""diagrams: each schematic carries its key labels, and every label is readable (no overlaps, fits, >= 8 pt).

Nothing here needs torch: the figures are drawn with the Agg backend and measured in display pixels.
"""
import ast
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.text import Text

from minimuse.diagrams import DIAGRAMS, block_diagram, pipeline_diagram, superres_diagram, tokenizer_diagram

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "minimuse" / "diagrams.py"

KEY_LABELS = {
    "pipeline": ["prompt", "frozen text encoder", "MiniLM", "T5-XXL", "(B, T, E)", "text dropout", "10% of captions",
                 "base transformer", "8x8", "K = 256", "16x16, K = 8192", "parallel decoding", "guidance",
                 "VQ decoder", "32 px", "super-res transformer", "16x16 high-res", "finetuned", "64 px"],
    "tokenizer": ["(B, 3, 32, 32)", "CNN encoder", "f = 4", "latents", "(B, C, 8, 8)", "nearest codebook",
                  "codebook", "K = 256", "l2-normalised", "EMA", "dead-code", "token ids", "(B, 8, 8)",
                  "codebook lookup", "CNN decoder", "reconstruction", "commitment", "perceptual",
                  "adversarial"],
    "block": ["token embedding", "2-D position", "[MASK]", "id K", "(B, L, D)", "LayerNorm", "self-attention",
              "cross-attention", "projected text", "(B, T, D)", "keys", "MLP (GELU)", "residual", "+",
              "final LayerNorm", "head", "(B, L, K)"],
    "superres": ["low-res base tokens", "(B, 8, 8)", "self-attention encoder", "projected text", "cross-attention",
                 "(B, 16, 16)", "[MASK]", "super-res", "64 px tokenizer", "finetuned decoder", "§2.5", "64 px",
                 "training", "noise", "random codes"],
}


def drawn_texts(fig):
    """The non-empty, visible Text artists of a drawn figure; tick labels only count on axes that show them."""
    hidden = {t for ax in fig.axes if not ax.axison for axis in (ax.xaxis, ax.yaxis) for t in axis.findobj(Text)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and t not in hidden]


def overlapping_pairs(fig, tol=0.5):
    """Pairs of texts whose window extents share more than `tol` pixels in both directions."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in drawn_texts(fig)]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:]
            if min(ba.x1, bb.x1) - max(ba.x0, bb.x0) > tol and min(ba.y1, bb.y1) - max(ba.y0, bb.y0) > tol]


@pytest.fixture(params=sorted(DIAGRAMS))
def drawn(request):
    """(name, figure) for each diagram, closed after the test."""
    fig = DIAGRAMS[request.param]()
    yield request.param, fig
    plt.close(fig)


def test_registry_names_the_four_diagrams():
    assert DIAGRAMS == {"pipeline": pipeline_diagram, "tokenizer": tokenizer_diagram, "block": block_diagram,
                        "superres": superres_diagram}


def test_each_diagram_carries_its_key_labels(drawn):
    name, fig = drawn
    assert isinstance(fig, Figure)
    text = "\n".join(t.get_text() for t in fig.findobj(Text))
    missing = [label for label in KEY_LABELS[name] if label not in text]
    assert not missing, f"{name} lacks {missing}"
    assert fig.axes[0].get_title(), f"{name} has no title"


def test_no_two_labels_overlap(drawn):
    name, fig = drawn
    assert not overlapping_pairs(fig), f"{name}: overlapping labels {overlapping_pairs(fig)}"


def test_the_overlap_check_catches_an_overlap():
    fig = tokenizer_diagram()
    assert not overlapping_pairs(fig)
    fig.axes[0].text(0.8, 2.75, "a label on top of the image box's label", ha="center", va="center", fontsize=8)
    assert overlapping_pairs(fig)
    plt.close(fig)


def test_every_label_is_at_least_8_points(drawn):
    name, fig = drawn
    small = [(t.get_text(), t.get_fontsize()) for t in drawn_texts(fig) if t.get_fontsize() < 8]
    assert not small, f"{name}: {small}"


def test_box_labels_fit_inside_their_boxes_and_the_figure(drawn):
    name, fig = drawn
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    boxes = [p.get_window_extent(renderer) for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) >= 8, f"{name} draws only {len(boxes)} boxes"
    for t in drawn_texts(fig):
        e = t.get_window_extent(renderer)
        assert page.x0 <= e.x0 and e.x1 <= page.x1 and page.y0 <= e.y0 and e.y1 <= page.y1, f"{name}: {t.get_text()!r}"
        cx, cy = (e.x0 + e.x1) / 2, (e.y0 + e.y1) / 2
        for b in boxes:  # a label centred in a box must not spill over its edge
            if b.contains(cx, cy):
                assert b.x0 <= e.x0 and e.x1 <= b.x1 and b.y0 <= e.y0 and e.y1 <= b.y1, f"{name}: {t.get_text()!r}"


def test_draws_into_a_given_axes():
    fig, ax = plt.subplots(figsize=(10, 3.5))
    assert block_diagram(ax) is fig
    assert not ax.axison and ax.get_xlim() == (0, 10) and ax.get_aspect() == 1.0
    assert ax.patches and ax.texts
    plt.close(fig)


def test_imports_no_torch():
    code = "import sys, minimuse.diagrams; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_imports_only_matplotlib_and_the_standard_library():
    tree = ast.parse(SOURCE.read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0], "relative import"
    top = {m.split(".")[0] for m in modules}
    assert "matplotlib" in top
    assert top <= {"matplotlib", "__future__"} | set(sys.stdlib_module_names), top
