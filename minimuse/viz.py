"""Pictures: image grids, partly decoded grids, and per-step figures of the mask, commits, confidence and entropy.

The sampler's history (docs/CONTRACTS.md: one dict per step with `ids`, `mask`, `committed`, `confidence`, `entropy`)
is what makes Muse's parallel decoding watchable (MaskGIT Fig. 2). Plain numpy / PIL / matplotlib, no state;
`step_panels` is the tested logic behind the notebooks' step slider. Taught in notebooks/06_sampling.ipynb.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3)."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so 32 px pixels stay crisp on screen (`upscale` is the super-res stage's word)."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def decode_partial(tokenizer, ids: torch.Tensor, mask: torch.Tensor, mask_id: int) -> np.ndarray:
    """Decode a grid whose masked positions are not drawn yet; their patches show as mid-gray.

    ids, mask: (B, h, w). Returns uint8 (B, H, W, 3). Masked ids are swapped for id 0 only so the decoder
    has something valid to read; those pixels are then painted over, so the choice does not show.
    """
    ids = torch.where(mask, torch.zeros_like(ids), ids).clamp(max=mask_id - 1)
    images = to_uint8(tokenizer.decode(ids.to(next(tokenizer.parameters()).device)))  # (B, H, W, 3)
    f = images.shape[1] // ids.shape[1]
    pix = mask.cpu().numpy().repeat(f, axis=1).repeat(f, axis=2)                  # (B, H, W)
    images[pix] = MASKED_GREY
    return images


def _for_stage(x, step: dict):
    """A cascade's history names each step's stage ("base", "superres"); tokenizer and mask_id may then be dicts
    by stage (MusePipeline.stage_parts()). A plain tokenizer or id serves a one-stage history."""
    return x[step.get("stage", "base")] if isinstance(x, dict) else x


def step_panels(history: list[dict], tokenizer, mask_id, step: int, index: int = 0) -> dict[str, np.ndarray]:
    """Everything shown for one sampling step of one image: the logic behind the step slider.

    Returns `image` (H, W, 3) uint8, and (h, w) float arrays `mask`, `committed`, `confidence`, `entropy`.
    tokenizer and mask_id: one each, or dicts by stage for a cascade's history.
    """
    if not 0 <= step < len(history):
        raise ValueError(f"step {step} out of range: the history has {len(history)} steps")
    h = history[step]
    image = decode_partial(_for_stage(tokenizer, h), h["ids"][index:index + 1], h["mask"][index:index + 1],
                           _for_stage(mask_id, h))[0]
    return {"image": image, **{k: h[k][index].float().cpu().numpy() for k in ("mask", "committed", "confidence", "entropy")}}


MASKED_GREY = 96  # the one colour of a still-masked token, in decoded images and in mask panels alike


def default_steps(num_steps: int, n: int = 6) -> list[int]:
    """About n of a history's num_steps steps, first and last included: what a reader can take in at once."""
    return sorted({round(i * (num_steps - 1) / (n - 1)) for i in range(n)}) if num_steps > n else list(range(num_steps))


def _base_steps(history: list[dict]) -> int:
    """How many of a history's steps are the base stage's; a cascade's history lists them first."""
    return sum(h.get("stage", "base") == "base" for h in history)


def history_steps(history: list[dict], n: int = 6) -> list[int]:
    """The steps history_figure shows by default: about n spread over the base stage's steps; for a cascade, n - 2 of
    those and the super-res stage's first and last."""
    n_base = _base_steps(history)
    if n_base == len(history):
        return default_steps(n_base, n)
    return default_steps(n_base, n - 2) + [n_base + s for s in default_steps(len(history) - n_base, 2)]


def history_figure(history: list[dict], tokenizer, mask_id, index: int = 0, steps=None):
    """A matplotlib figure: one row per chosen step (default: about 6, history_steps) with the decoded image, the
    mask, the newly committed positions, the confidence and the entropy, each on a fixed scale with a colorbar
    under its column: mask and committed 0/1 (masked in the grey of the decoded image), confidence (the drawn
    token's probability) on [0, 1], entropy on [0, ln K] nats, K the codebook size."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    steps = history_steps(history) if steps is None else list(steps)
    n_base = _base_steps(history)
    K = max(int(_for_stage(mask_id, history[t])) for t in steps)  # mask_id = K, per stage
    grey = (MASKED_GREY / 255,) * 3
    cols = [("image", None, None, ""), ("mask", ListedColormap(["white", grey]), 1.0, "masked (1) or not (0)"),
            ("committed", ListedColormap(["white", "tab:green"]), 1.0, "committed this step (1)"),
            ("confidence", "viridis", 1.0, "p(drawn token)"), ("entropy", "magma", math.log(K), f"entropy, nats (ln {K} max)")]
    n = len(steps)  # a last, thin row holds the colorbars, so every row keeps the same height in every column
    fig, axes = plt.subplots(n + 1, len(cols), figsize=(2.0 * len(cols), 2.0 * n + 0.7), squeeze=False,
                             gridspec_kw={"height_ratios": [1.0] * n + [0.07]})
    shown = {}
    for r, t in enumerate(steps):
        p = step_panels(history, tokenizer, mask_id, t, index)
        for c, (key, cmap, vmax, _) in enumerate(cols):
            ax = axes[r][c]
            shown[key] = ax.imshow(p[key]) if key == "image" else ax.imshow(p[key], cmap=cmap, vmin=0.0, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(key, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"step {t + 1}" if t < n_base else f"super-res step {t + 1 - n_base}", fontsize=9)
    axes[n][0].remove()  # the image column has no scale
    for c, (key, _, _, label) in enumerate(cols[1:], start=1):  # one fixed-scale colorbar under each heat column
        bar = fig.colorbar(shown[key], cax=axes[n][c], orientation="horizontal")
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=6)
        if key in ("mask", "committed"):
            bar.set_ticks([0, 1])
    fig.tight_layout()
    return fig


def history_png(history: list[dict], tokenizer, mask_id, index: int = 0) -> bytes:
    """`minimuse generate --history`: history_figure at its default steps, as PNG bytes (the caller writes them
    atomically). tokenizer and mask_id: one each, or dicts by stage for a cascade (MusePipeline.stage_parts())."""
    import io

    import matplotlib.pyplot as plt
    fig = history_figure(history, tokenizer, mask_id, index)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def image_grid(images: np.ndarray, captions: list[str] | None = None, ncol: int = 8, scale: int = 3) -> Image.Image:
    """uint8 (B, H, W, 3) -> one labelled contact sheet."""
    B, H, W, _ = images.shape
    ncol = min(ncol, B)
    nrow = (B + ncol - 1) // ncol
    cw, chh = W * scale, H * scale + (12 if captions else 0)
    sheet = Image.new("RGB", (ncol * (cw + 4) + 4, nrow * (chh + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(B):
        r, c = divmod(i, ncol)
        x, y = 4 + c * (cw + 4), 4 + r * (chh + 4)
        sheet.paste(Image.fromarray(enlarge(images[i], scale)), (x, y))
        if captions:
            draw.text((x, y + H * scale), captions[i][: cw // 6], fill="black")
    return sheet


# The course, in order: (notebook stem, short title, the package file it teaches). notebooks/00 prints this map.
LESSONS = [  # the README's lesson table lists the same stems and files (tests/test_notebook_hygiene.py)
    ("00_overview", "overview", "config.py, presets.py, cli.py"),
    ("01_shapes_world", "shapes world", "data.py, judge.py"),
    ("02_tokenizer", "tokenizer", "tokenizer.py"),
    ("03_text_encoder", "text encoder", "text_encoder.py"),
    ("04_masking", "masking", "scheduler.py"),
    ("05_training", "training", "transformer.py, pool.py, train.py"),
    ("06_sampling", "sampling", "sampler.py, viz.py"),
    ("07_superres", "super-res", "superres.py, train_tokenizer.py"),
    ("08_editing", "editing", "editing.py, eval_edits.py"),
    ("09_experiments", "experiments", "eval.py, sweep.py, eval_counts.py, bench.py"),
    ("10_nouns", "your own data", "nouns.py, nouns_judge.py, eval_nouns.py"),
]


def roadmap(current: str | int):
    """The "you are here" strip at the top of every notebook: the lessons in order, those before `current` shaded,
    `current` (a stem like "06_sampling" or its number) filled and marked. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    stems = [stem for stem, _, _ in LESSONS]
    here = current if isinstance(current, int) else next((i for i, s in enumerate(stems) if s == current or s[:2] == current), None)
    if here is None or not 0 <= here < len(LESSONS):
        raise ValueError(f"unknown lesson {current!r}; choose one of: {', '.join(stems)}")
    n = len(LESSONS)
    fig, ax = plt.subplots(figsize=(11, 1.15))
    ax.set_xlim(-0.05, n - 0.15), ax.set_ylim(-0.55, 0.55), ax.axis("off")
    for i, (stem, title, _) in enumerate(LESSONS):
        done, now = i < here, i == here
        ax.add_patch(FancyBboxPatch((i, -0.3), 0.8, 0.6, boxstyle="round,pad=0.02", lw=1.6 if now else 0.8,
                                    fc="#3b6fb6" if now else "#dbe6f5" if done else "white", ec="#3b6fb6" if now or done else "#999999"))
        ax.text(i + 0.4, 0.07, stem[:2], ha="center", va="center", fontsize=8, color="white" if now else "black", weight="bold")
        ax.text(i + 0.4, -0.13, title, ha="center", va="center", fontsize=7, color="white" if now else "#333333")
        if i + 1 < n:
            ax.annotate("", xy=(i + 1.0, 0), xytext=(i + 0.82, 0), arrowprops=dict(arrowstyle="->", lw=0.8, color="#777777"))
    ax.text(here + 0.4, -0.46, "you are here", ha="center", va="center", fontsize=7.5, color="#3b6fb6", weight="bold")
    fig.tight_layout(pad=0.1)
    return fig
