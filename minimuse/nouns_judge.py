"""The judge of Nouns parts: whether a 32x32 image shows each of the five parts it was prompted with.

Like judge.py for the shapes world, it reads pixels, not a model: the parts that fit the image best are found by
coordinate descent (each part in turn replaced by the entry of least squared error given the others), and a prompted
part is shown when it fits as well as the best, is not hidden entirely, and its visible pixels lie within RMS
TOLERANCE of the image; occlusion (glasses over head over accessory over body) and `accessory-none` need no special
case. Measured on 2,000 train characters,
`python -c "from minimuse.nouns_judge import judge_report; print(judge_report(n=2000))"`: 100% of parts judged shown
on exact renders and under Gaussian noise std 8/255; 100% of 1,943 one-part swaps rejected, exact and noisy; 99.97%
of the other parts still visible judged shown (docs/NOUNS.md). Taught in notebook 10.
"""
from __future__ import annotations

import numpy as np

from .nouns import PARTS, SIZE, Nouns, load

TOLERANCE = 40.0  # RMS on 0..255 of a part's visible pixels: noise std 8 gives ~8


def alternatives(nouns: Nouns, idx: tuple[int, ...], layer: int) -> np.ndarray:
    """uint8 (N, 32, 32, 3): idx rendered with part `layer` swapped for each of its N entries."""
    part, covered = PARTS[layer], above(nouns, idx, layer)
    alts = np.where(nouns.masks[part][..., None], nouns.colors[part], nouns.draw(idx, layer))  # (N, 32, 32, 3)
    alts[:, covered] = nouns.draw(idx)[covered]  # what the later parts cover stays theirs
    return alts

def above(nouns: Nouns, idx, layer: int) -> np.ndarray:
    """bool (32, 32): the pixels that the parts of idx drawn after `layer` cover."""
    return np.logical_or.reduce([nouns.masks[p][i] for p, i in zip(PARTS[layer + 1:], idx[layer + 1:])]
                                + [np.zeros((SIZE, SIZE), bool)])

def fit(nouns: Nouns, image, parts) -> tuple[np.ndarray, list[int], dict]:
    """The image box-averaged to float (32, 32, 3), and the parts that fit it best, found by coordinate descent from
    the prompted `parts` (each part in turn, background first, replaced by the entry of least squared error given the
    others, until none changes), with each layer's squared errors over its entries."""
    x = np.asarray(image, np.float32)
    if x.ndim != 3 or x.shape[2] != 3 or x.shape[0] != x.shape[1] or x.shape[0] % SIZE or not x.shape[0]:
        raise ValueError(f"the judge reads (32k, 32k, 3) images, got shape {x.shape}")
    f = x.shape[0] // SIZE
    x = x.reshape(SIZE, f, SIZE, f, 3).mean((1, 3))  # (32, 32, 3)
    cur, sses = list(nouns.check_parts(parts)), {}
    for _ in range(8):  # converges in 1 to 3 rounds on renders with a part or two swapped
        changed = False
        for layer in range(5):
            alts = alternatives(nouns, tuple(cur), layer)
            sses[layer] = sse = ((alts.astype(np.float32) - x) ** 2).sum((1, 2, 3))  # (N,)
            if sse.min() < sse[cur[layer]]:
                cur[layer], changed = int(sse.argmin()), True
        if not changed:
            break
    return x, cur, sses


def judge(nouns: Nouns, image, parts, fitted: tuple | None = None) -> dict[str, bool]:
    """{part: whether `image` (uint8 (32k, 32k, 3), box-averaged to 32x32) shows the prompted part}.

    A part is shown when the prompted one fits as well as the best in the fitted context (`fit`), the pixels it would
    show in the prompted character are not all hidden, and its visible pixels lie within RMS TOLERANCE of the image.
    `fitted`, fit's result for this image and these parts, saves computing it twice."""
    x, cur, sses = fitted if fitted is not None else fit(nouns, image, parts)
    idx = nouns.check_parts(parts)
    shown = {}
    for layer, part in enumerate(PARTS):
        k, m = idx[layer], nouns.masks[part][idx[layer]]
        vis, vis_prompted = m & ~above(nouns, cur, layer), m & ~above(nouns, idx, layer)
        rms = np.sqrt(((x[vis] - nouns.colors[part][k][vis]) ** 2).mean()) if vis.any() else 0.0
        shown[part] = bool(sses[layer][k] <= sses[layer].min() and (vis.any() or not vis_prompted.any())
                           and rms <= TOLERANCE)
    return shown


def judge_report(n: int = 1000, seed: int = 0, noise: float = 8.0, nouns: Nouns | None = None) -> dict:
    """The judge on n train characters: the share of parts judged shown on exact renders and under Gaussian noise of
    std `noise` (on 0..255); on renders with one part swapped for one that changes the render, the share whose
    swapped part is rejected (exact and noisy), of the other parts still visible judged shown, and of the others
    that the swap hides entirely judged not shown."""
    nouns = nouns or load()
    rng = np.random.default_rng([seed, 10])
    noisy = lambda im: np.clip(np.round(im + rng.normal(0, noise, im.shape)), 0, 255).astype(np.uint8)  # noqa: E731
    hits = {k: [] for k in ("exact", "noisy", "swap_rejected", "swap_rejected_noisy", "others_kept", "hidden_rejected")}
    for parts in nouns.sample(n, "train", seed):
        im = nouns.render(parts)
        hits["exact"] += judge(nouns, im, parts).values()
        hits["noisy"] += judge(nouns, noisy(im), parts).values()
        layer = int(rng.integers(5))
        alts = alternatives(nouns, parts, layer)
        options = np.flatnonzero((alts != alts[parts[layer]]).any((1, 2, 3)))
        if not options.size:
            continue
        truth = list(parts)
        truth[layer] = int(rng.choice(options))
        hits["swap_rejected_noisy"].append(not judge(nouns, noisy(alts[truth[layer]]), parts)[PARTS[layer]])
        shown = judge(nouns, alts[truth[layer]], parts)
        hits["swap_rejected"].append(not shown[PARTS[layer]])
        for li, p in enumerate(PARTS):
            if li != layer:
                m = nouns.masks[p][parts[li]]  # hidden by the swap, though the prompted character shows it
                hidden = not (m & ~above(nouns, truth, li)).any() and (m & ~above(nouns, parts, li)).any()
                hits["hidden_rejected" if hidden else "others_kept"].append(shown[p] != hidden)
    return {k: round(float(np.mean(v)), 5) if v else None for k, v in hits.items()} | {
        "n_characters": n, "n_swapped": len(hits["swap_rejected"]),
        "n_hidden": len(hits["hidden_rejected"]), "noise_std": noise}
