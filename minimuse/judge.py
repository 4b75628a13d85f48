"""The judge: does an image show what its caption says? The faithfulness metric of every notebook and of `minimuse eval`.

Muse reports CLIP score and FID; the shapes world can be judged exactly instead (docs/JUDGE.md). `score(image, spec)`
segments the non-black pixels into 4-connected blobs, names each blob's palette color and its shape from three
coverage-weighted moments, then compares the multiset of (color, shape) with the spec and, for a relation, the
centroids. `judge_agreement` measures how often it accepts real dataset images (docs/JUDGE.md: 100% at 32 px).
Taught in notebooks/01_shapes_world.ipynb (what it does) and notebooks/appendix/A1_judge.ipynb (how).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .config import CAPTION_KINDS
from .data import PALETTE, Spec, make_sample, relation_holds


def _as_uint8_hwc(image) -> np.ndarray:
    """uint8 (S, S, 3), or float (3, S, S) / (S, S, 3) in [0, 1] (tensor or array) -> uint8 (S, S, 3)."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim != 3 or 3 not in (a.shape[0], a.shape[-1]):
        raise ValueError(f"expected an image of shape (S, S, 3) uint8 or (3, S, S) float in [0, 1], got {a.shape}")
    if a.dtype == np.uint8:
        return a if a.shape[-1] == 3 else a.transpose(1, 2, 0)
    a = a.transpose(1, 2, 0) if a.shape[0] == 3 else a                       # (S, S, 3)
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a bool (H, W) mask; -1 off the mask. Each pixel repeatedly takes the smallest
    label among itself and its neighbours, and jumps to its label's label (pointer jumping), until nothing changes."""
    H, W = mask.shape
    none = H * W                                                               # larger than any pixel index
    lab = np.where(mask, np.arange(H * W).reshape(H, W), none)
    while True:
        p = np.pad(lab, 1, constant_values=none)
        new = np.minimum.reduce([lab, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        new = np.append(new.ravel(), none)[new]                                # jump: label of my label
        new = np.where(mask, new, none)
        if np.array_equal(new, lab):
            return np.where(mask, lab, -1)
        lab = new


_PAL = np.array(list(PALETTE.values()), dtype=np.float64)     # (6, 3)


def shape_cues(xs: np.ndarray, ys: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """Moments of a blob, pixels (xs, ys) weighted by coverage w, that tell the shapes apart at any size:
    skew   vertical skewness: an upward triangle has its mass low (-0.57); circles and squares are symmetric (0);
    corner diagonal minus axis kurtosis: a square reaches further along its diagonals (+0.6), a circle does not (0);
    aspect the larger over the smaller standard deviation (1 for circles and squares, 1.15 for triangles).
    A bounding-box fill ratio (1, 0.79, 0.5) says the same in words, but on 8-12 px shapes a +-1 px box swamps it."""
    E = lambda v: float((w * v).sum() / w.sum())
    x, y = xs - E(xs), ys - E(ys)
    u, v = (x + y) / np.sqrt(2), (x - y) / np.sqrt(2)                        # diagonal axes
    kurt = lambda a: E(a ** 4) / (E(a ** 2) ** 2 + 1e-9)                    # eps: a one-pixel-wide line has no spread
    skew = E(y ** 3) / (E(y ** 2) ** 1.5 + 1e-9)
    corner = (kurt(u) + kurt(v) - kurt(x) - kurt(y)) / 2
    sx, sy = math.sqrt(E(x ** 2)), math.sqrt(E(y ** 2))
    return skew, corner, max(sx, sy) / max(min(sx, sy), 1e-6)


def classify_shape(skew: float, corner: float, aspect: float) -> str:
    """Thresholds halfway between the ideal values, with room for the soft edges of small and generated shapes."""
    if aspect > 1.5:
        return "blob"
    if skew < -0.2:
        return "triangle"
    return "square" if corner > 0.3 else "circle"


def find_objects(image, threshold: int = 32) -> list[dict]:
    """Blobs of non-black pixels: color, shape, coverage-weighted centroid (x, y) and area in pixels.

    Color: the palette entry nearest to the mean of the blob's bright core (its anti-aliased rim is darker).
    Coverage of a pixel: its brightness over that color's, since an edge pixel is color x covered fraction.
    Specks smaller than 1% of the canvas (and 4 px) are ignored."""
    img = _as_uint8_hwc(image).astype(np.float64)                            # (S, S, 3)
    S = img.shape[0]
    bright = img.max(axis=-1)                                                # (S, S)
    labels = label_components(bright >= threshold)
    objects = []
    for lab in np.unique(labels[labels >= 0]):
        ys, xs = np.nonzero(labels == lab)
        px, b = img[ys, xs], bright[ys, xs]                                  # (N, 3), (N,)
        core = px[b >= 0.75 * b.max()].mean(axis=0)
        ci = int(((_PAL - core) ** 2).sum(axis=1).argmin())
        w = np.clip(px.sum(axis=1) / _PAL[ci].sum(), 0, 1)
        if w.sum() < max(4.0, 0.01 * S * S):
            continue
        cues = shape_cues(xs, ys, w)
        objects.append(dict(color=list(PALETTE)[ci], shape=classify_shape(*cues), area=float(w.sum()), cues=cues,
                            centroid=(float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum()))))
    return objects


def score(image, spec: Spec) -> tuple[bool, str]:
    """Does `image` show `spec`? The same (color, shape) multiset, and the relation between centroids if any."""
    objects = find_objects(image)
    found, want = {}, {}
    for o in objects:
        found[o["color"], o["shape"]] = found.get((o["color"], o["shape"]), 0) + 1
    for n, c, s in spec.objects:
        want[c, s] = want.get((c, s), 0) + n
    wrong = [f"expected {want.get(k, 0)} {k[0]} {k[1]}, found {found.get(k, 0)}"
             for k in sorted(set(want) | set(found)) if want.get(k, 0) != found.get(k, 0)]
    if wrong:
        return False, "; ".join(wrong)
    if spec.relation is not None:
        (_, c0, s0), (_, c1, s1) = spec.objects
        a, b = (next(o["centroid"] for o in objects if (o["color"], o["shape"]) == k) for k in ((c0, s0), (c1, s1)))
        if not relation_holds(spec.relation, a, b):
            return False, f"relation: {c0} {s0} is not {spec.relation} {c1} {s1} (dx={a[0] - b[0]:+.1f}, dy={a[1] - b[1]:+.1f})"
    return True, "ok"


def judge_agreement(n_per_kind: int = 2000, size: int = 32, seed: int = 10_000, kinds=CAPTION_KINDS) -> dict:
    """Fraction of generated images (held-out seed) that `score` accepts for their own spec, per kind and overall."""
    result, failures = {}, []
    for kind in kinds:
        ok = 0
        for i in range(n_per_kind):
            s = make_sample(seed, i, size, kinds=(kind,))
            good, reason = score(s["image"], s["spec"])
            ok += good
            if not good:
                failures.append((kind, i, s["caption"], reason))
        result[kind] = ok / n_per_kind
    result["overall"] = sum(result[k] for k in kinds) / len(kinds)
    return dict(size=size, seed=seed, n_per_kind=n_per_kind, agreement=result, failures=failures)
