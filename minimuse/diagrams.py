"""Schematic diagrams of Muse's parts, drawn with matplotlib: no image files.

Used by notebooks/00_overview.ipynb (the pipeline), notebooks/02_tokenizer.ipynb (the VQ tokenizer),
notebooks/05_training.ipynb (the transformer block) and notebooks/07_superres.ipynb (the super-res stage).
The sections cited are Muse's (Chang et al. 2023): §2.1 the text encoder (a frozen T5-XXL in the paper; here
MiniLM), §2.2 the VQGAN tokenizer, §2.3 the base transformer, §2.4 the super-resolution transformer, §2.5 decoder
finetuning, §2.7 classifier-free guidance with text dropout (10% of captions replaced by the empty prompt in
training). Every diagram is laid out by hand on a canvas measured in inches; tests/test_diagrams.py checks that
no two labels overlap, so move a box there before making its text longer.
"""
from __future__ import annotations

import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

FONT = 8  # the smallest size that stays readable when a notebook shrinks the figure to its column
INK = "#222222"  # dark text and lines on light fills only, so every label keeps its contrast
BLUE, GREEN, ORANGE, PURPLE, GRAY, RED = "#dbe9f6", "#dcefd8", "#fde6cc", "#e8def3", "#eeeeee", "#f9dcdc"
SIZE = (10.0, 3.5)  # inches; the axes span about 10 x 3.2 data units, so the coordinates below read as inches


def _canvas(ax, title: str):
    """The figure and axes to draw on: a fresh SIZE figure unless `ax` is given (its size should be alike)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=SIZE)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9)  # room above for the title
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 3.2)
    ax.set_aspect("equal")  # a unit is as long across as up, so hand-placed boxes keep their shapes
    ax.axis("off")
    ax.set_title(title, fontsize=11, color=INK)
    return ax.figure, ax


def _box(ax, xy, w, h, text, color):
    """A rounded box of w x h centred on xy, with `text` centred in it."""
    x, y = xy
    ax.add_patch(mpatches.FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                         facecolor=color, edgecolor=INK, linewidth=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=FONT, color=INK)


def _arrow(ax, start, end, label=None):
    """An arrow from start to end; a label sits above a mostly horizontal arrow, right of a mostly vertical one."""
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=INK, linewidth=1, shrinkA=0, shrinkB=0))
    if label:
        (x0, y0), (x1, y1) = start, end
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        if abs(x1 - x0) >= abs(y1 - y0):
            ax.text(mx, my + 0.05, label, ha="center", va="bottom", fontsize=FONT, color=INK)
        else:
            ax.text(mx + 0.07, my, label, ha="left", va="center", fontsize=FONT, color=INK)


def _chain(ax, y, h, boxes, labels=None):
    """A row of boxes (cx, w, text, color), each joined to the next by an arrow from edge to edge (right to left when
    the row runs that way): the arrows follow from the boxes, so moving a box moves its arrows. labels: {i: label} of
    the arrow out of box i."""
    for cx, w, text, color in boxes:
        _box(ax, (cx, y), w, h, text, color)
    for i, ((x0, w0, *_), (x1, w1, *_)) in enumerate(zip(boxes, boxes[1:])):
        step = 1 if x1 > x0 else -1
        _arrow(ax, (x0 + step * w0 / 2, y), (x1 - step * w1 / 2, y), (labels or {}).get(i))


def pipeline_diagram(ax=None) -> Figure:
    """Muse end to end: the text path, the base stage (§2.3) and the super-res stage (§2.4), as run and as trained."""
    fig, ax = _canvas(ax, "Muse end to end: text encoder, base stage (32 px), super-res stage (64 px)")
    top, low = 2.45, 0.7
    _chain(ax, top, 0.8, [(0.6, 1.0, "prompt\n\"a red circle\"", GRAY),
                          (2.1, 1.4, "frozen text encoder\n(§2.1) MiniLM here;\nT5-XXL in Muse", BLUE),
                          (3.6, 1.1, "text embeddings\n(B, T, E)", BLUE),
                          (5.2, 1.6, "base transformer (§2.3)\n8x8 tokens, K = 256\n(Muse: 16x16, K = 8192)", GREEN),
                          (7.1, 1.7, "parallel decoding in\nnum_steps steps, guided:\n$(1+w)\\,\\ell_c - w\\,\\ell_u$",
                           GREEN),
                          (8.7, 0.95, "VQ decoder\n(§2.2)", ORANGE), (9.6, 0.6, "32 px\nimage", GRAY)])
    # Text dropout happens to captions only in training; at inference the empty prompt gives the l_u of guidance.
    _box(ax, (1.35, low), 2.3, 0.6, "training: 10% of captions → ''\n(text dropout, for guidance, §2.7)", RED)
    _arrow(ax, (0.6, top - 0.4), (0.6, low + 0.3), "training")
    _arrow(ax, (2.1, low + 0.3), (2.1, top - 0.4))
    _box(ax, (5.0, low), 1.9, 0.8, "super-res transformer\n(§2.4), conditioned on\nbase tokens and text", PURPLE)
    _chain(ax, low, 0.6, [(6.95, 1.3, "16x16 high-res\ntokens", PURPLE), (8.45, 1.15, "(finetuned)\ndecoder (§2.5)", ORANGE),
                          (9.6, 0.6, "64 px\nimage", GRAY)])
    _arrow(ax, (3.6, top - 0.4), (4.4, low + 0.4), "text")
    _arrow(ax, (6.6, top - 0.4), (5.8, low + 0.4), "8x8 base tokens")
    _arrow(ax, (5.95, low), (6.3, low))
    return fig


def tokenizer_diagram(ax=None) -> Figure:
    """The VQ tokenizer (Muse §2.2 uses a VQGAN): encode, snap to the nearest codebook entry, decode."""
    fig, ax = _canvas(ax, "The VQ tokenizer: 32 px image → 8x8 token ids → reconstruction")
    top, mid, low = 2.75, 1.6, 0.45
    _chain(ax, top, 0.6, [(0.8, 1.3, "image\n(B, 3, 32, 32)", GRAY), (2.65, 1.6, "CNN encoder\ndownsampling by f = 4", ORANGE),
                          (4.5, 1.3, "latents\n(B, C, 8, 8)", ORANGE),
                          (6.35, 1.6, "nearest codebook\nentry (l2 distance)", GREEN), (8.5, 1.4, "token ids\n(B, 8, 8)", GREEN)])
    # One codebook serves both directions: the ids index the very vectors the latents were snapped to.
    _box(ax, (6.6, mid), 2.1, 0.7, "codebook of K = 256 vectors\nl2-normalised, EMA updates,\ndead-code restarts",
         GREEN)
    _arrow(ax, (6.35, mid + 0.35), (6.35, top - 0.3))
    _arrow(ax, (7.6, mid - 0.35), (7.6, low + 0.3))
    _arrow(ax, (8.5, top - 0.3), (8.5, low + 0.3))
    _chain(ax, low, 0.6, [(8.3, 1.6, "codebook lookup\nids → vectors", GREEN), (5.9, 1.6, "CNN decoder\nupsampling by f = 4", ORANGE),
                          (3.6, 1.6, "reconstruction\n(B, 3, 32, 32)", GRAY)])
    # The losses compare the image with its reconstruction; the codebook terms keep encoder and codes close.
    _box(ax, (2.0, mid), 3.4, 0.7, "losses: reconstruction + commitment,\noptional adversarial; Muse's VQGAN\n"
         "(§2.2) adds a perceptual loss too", RED)
    _arrow(ax, (0.8, top - 0.3), (0.8, mid + 0.35))
    _arrow(ax, (3.0, low + 0.3), (2.6, mid - 0.35), "compare")
    return fig


def block_diagram(ax=None) -> Figure:
    """One pre-norm block of the base transformer, with the embedding before the blocks and the head after them."""
    fig, ax = _canvas(ax, "The base transformer: embeddings, one pre-norm block (x N), head")
    y0 = 0.5  # the residual stream: each sub-layer reads a normalised copy and adds its output back
    _box(ax, (0.9, 2.7), 1.6, 0.55, "token ids (B, L)\nmasked ones = id K", GRAY)
    _box(ax, (0.9, 1.6), 1.6, 0.95, "token embedding\n(K + 1 rows: [MASK]\nis the extra row)\n+ 2-D position emb.",
         BLUE)
    _box(ax, (0.9, y0), 1.3, 0.4, "x (B, L, D)", BLUE)
    _arrow(ax, (0.9, 2.425), (0.9, 2.075))
    _arrow(ax, (0.9, 1.125), (0.9, y0 + 0.2))
    adds = [1.55]
    for cx, text, color in [(2.8, "self-attention over\nthe L image tokens", GREEN),
                            (5.0, "cross-attention\nqueries: image tokens\nkeys/values: text", PURPLE),
                            (7.2, "MLP (GELU)\nD → 4D → D", ORANGE)]:
        _box(ax, (cx, 1.15), 0.9, 0.3, "LayerNorm", GRAY)
        _box(ax, (cx, 1.95), 1.7, 0.6, text, color)
        _box(ax, (cx + 1.0, y0), 0.28, 0.28, "+", GRAY)
        _arrow(ax, (adds[-1], y0), (cx + 0.86, y0))
        _arrow(ax, (cx, y0), (cx, 1.0))
        _arrow(ax, (cx, 1.3), (cx, 1.65))
        _arrow(ax, (cx + 0.75, 1.65), (cx + 1.0, y0 + 0.14))
        adds.append(cx + 1.14)
    # The text never enters the residual stream: it only supplies the keys and values of cross-attention.
    _box(ax, (5.0, 2.85), 1.5, 0.45, "projected text\n(B, T, D)", BLUE)
    _arrow(ax, (5.0, 2.625), (5.0, 2.25), "keys, values")
    ax.text(5.0, 0.12, "residual stream (B, L, D): add (residual) after each sub-layer", ha="center", va="center",
            fontsize=FONT, color=INK)
    _box(ax, (9.2, y0), 1.2, 0.4, "final LayerNorm", GRAY)
    _box(ax, (9.2, 1.6), 1.2, 0.5, "head\n(linear, D → K)", GRAY)
    _box(ax, (9.2, 2.7), 1.2, 0.55, "logits\n(B, L, K)", GRAY)
    _arrow(ax, (adds[-1], y0), (8.6, y0))
    _arrow(ax, (9.2, y0 + 0.2), (9.2, 1.35))
    _arrow(ax, (9.2, 1.85), (9.2, 2.425))
    return fig


def superres_diagram(ax=None) -> Figure:
    """The super-res stage (Muse §2.4): a masked transformer over 16x16 tokens reads the base model's 8x8 tokens."""
    fig, ax = _canvas(ax, "The super-res stage (Muse §2.4): 8x8 base tokens + text → 16x16 tokens → 64 px")
    top, low = 2.6, 1.35
    _box(ax, (0.95, top), 1.6, 0.7, "low-res base tokens\n(B, 8, 8)", GREEN)
    _box(ax, (3.0, top), 1.8, 0.7, "embedding + low-res\nself-attention encoder\n(a few layers)", PURPLE)
    _box(ax, (5.25, top), 1.75, 0.7, "concatenate:\n[projected text ;\nlow-res features]", PURPLE)
    _box(ax, (7.25, top), 1.4, 0.7, "projected text\n(B, T, D)", BLUE)
    _box(ax, (9.25, top), 1.0, 0.7, "64 px\nimage", GRAY)
    _arrow(ax, (1.75, top), (2.1, top))
    _arrow(ax, (3.9, top), (4.375, top))
    _arrow(ax, (6.55, top), (6.125, top))
    _arrow(ax, (5.25, top - 0.35), (5.25, low + 0.35), "keys, values of cross-attention")
    _chain(ax, low, 0.7, [(2.5, 1.9, "high-res tokens\n(B, 16, 16), some\nreplaced by [MASK]", GREEN),
                          (5.25, 1.9, "masked high-res\ntransformer (super-res)", PURPLE),
                          (7.25, 1.4, "logits over the\n64 px tokenizer's\ncodes", PURPLE),
                          (9.05, 1.5, "finetuned decoder\n(§2.5): same tokens,\nmore capacity", ORANGE)], {0: "queries"})
    _arrow(ax, (9.25, low + 0.35), (9.25, top - 0.35))
    # Trained on clean tokens, the stage would trust them blindly; the noise teaches it to repair the base model's.
    _box(ax, (5.0, 0.35), 8.2, 0.5, "training: the low-res tokens come from the base tokenizer on the downsampled "
         "image, with a little noise\n(a share of random codes), so the stage learns to read a base model's "
         "imperfect tokens", RED)
    return fig


DIAGRAMS = {"pipeline": pipeline_diagram, "tokenizer": tokenizer_diagram, "block": block_diagram,
            "superres": superres_diagram}
