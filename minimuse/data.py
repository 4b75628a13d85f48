"""Data: the procedural shapes world and its caption grammar.

Muse (Chang et al. 2023) trains on image-text pairs; here a seeded generator draws 1-4 flat-colored circles,
squares and triangles on black, anti-aliased by 4x supersampling, with a caption in a small canonical grammar and
the structured `Spec` behind it (docs/CONTRACTS.md); judge.py checks an image against its spec. Real
image-text folders are read by hfdata.py.
Taught in notebooks/01_shapes_world.ipynb.
"""
from __future__ import annotations

import functools
import json
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .checkpoint import atomic_save_image, atomic_write_text
from .config import CAPTION_KINDS
from .inputs import check_outputs

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 220),
    "yellow": (240, 210, 40), "purple": (150, 60, 200), "cyan": (40, 200, 200)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")       # Spec.relation: objects[0] relative to objects[1]
NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
SIZE_RANGE = (0.25, 0.38)                                     # side or diameter as a fraction of S
SUPERSAMPLE = 4                                               # draw at 4x, then average 4x4 blocks (anti-aliasing)
_REL_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def min_gap(size: int) -> int:
    """Pixels between two objects' bounding boxes: 3 at S=32, scaled. At 2 px an 8x8 tokenizer merges neighbours."""
    return math.ceil(3 * size / 32)


@dataclass(frozen=True)
class Spec:
    """What an image shows: (count, color, shape) groups, and how objects[0] sits relative to objects[1]."""
    objects: tuple[tuple[int, str, str], ...]
    relation: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(tuple(o) for o in self.objects))
        for n, c, s in self.objects:
            if n not in NUMBERS or c not in PALETTE or s not in SHAPES:
                raise ValueError(f"bad object {(n, c, s)}: count 1-4, color in {list(PALETTE)}, shape in {SHAPES}")
        if not 1 <= sum(o[0] for o in self.objects) <= 4:
            raise ValueError(f"a spec holds 1 to 4 objects, got {sum(o[0] for o in self.objects)}")
        if self.relation is not None and (self.relation not in RELATIONS or [o[0] for o in self.objects] != [1, 1]
                                          or self.objects[0] == self.objects[1]):
            raise ValueError(f"a relation must be one of {RELATIONS}, between two different single objects")


# ---------------------------------------------------------------------------------------------------------------------
# Captions: the canonical grammar, its parser, and the paraphrases seen in training.

def _phrase(n: int, color: str, shape: str) -> str:
    return f"{NUMBERS[n]} {color} {shape}{'s' if n > 1 else ''}"


def canonical_caption(spec: Spec) -> str:
    """`a red circle`, `two blue squares`, `a red circle to the left of a blue square`, `... and ...`."""
    parts = [_phrase(*o) for o in spec.objects]
    if spec.relation is not None:
        return f"{parts[0]} {_REL_WORDS[spec.relation]} {parts[1]}"
    return " and ".join(parts)


_OBJ = rf"(a|two|three|four) ({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})(s?)"
_REL_RE = re.compile(rf"(.+?) ({'|'.join(_REL_WORDS.values())}) (.+)")


def _parse_object(text: str, caption: str) -> tuple[int, str, str]:
    m = re.fullmatch(_OBJ, text)
    words = {v: k for k, v in NUMBERS.items()}
    if m is None or (m[1] == "a") != (m[4] == ""):
        raise ValueError(f"cannot parse {text!r} in caption {caption!r}: expected '<number> <color> <shape>' with number "
                         f"in (a, two, three, four), color in ({', '.join(PALETTE)}), shape in ({', '.join(SHAPES)}), "
                         f"plural with 's' after two, three, four")
    return (words[m[1]], m[2], m[3])


def parse_caption(text: str) -> Spec:
    """Inverse of `canonical_caption` (case and spacing ignored); ValueError names the part it cannot read."""
    t = " ".join(str(text).lower().replace(".", " ").split())
    rel = _REL_RE.fullmatch(t)
    if rel is not None:
        relation = {v: k for k, v in _REL_WORDS.items()}[rel[2]]
        objs = (_parse_object(rel[1], text), _parse_object(rel[3], text))
    else:
        relation, objs = None, tuple(_parse_object(p, text) for p in t.split(" and "))
    try:
        return Spec(objs, relation)
    except ValueError as e:
        raise ValueError(f"caption {text!r}: {e}") from None


def paraphrases(spec: Spec, kind: str) -> list[str]:
    """Other wordings of the same spec (training only; the spec and image stay the same)."""
    P = [_phrase(*o) for o in spec.objects]
    (n0, c0, s0), base = spec.objects[0], canonical_caption(spec)
    out = [f"there {'is' if n0 == 1 else 'are'} {base}", f"a picture of {base}"]
    if kind == "single":
        out += [f"one {c0} {s0}", f"a single {c0} {s0}", f"a {s0} that is {c0}", f"a {c0} {s0} on a black background"]
    elif kind == "count":
        out += [f"{n0} {c0} {s0}s", f"{NUMBERS[n0]} {s0}s that are {c0}", f"{NUMBERS[n0]} {c0} {s0}s on black"]
    elif kind == "relation":
        r = spec.relation
        out += [f"{P[1]} {_REL_WORDS[_INVERSE[r]]} {P[0]}", f"{P[0]} is {_REL_WORDS[r]} {P[1]}"]
    else:  # pair, mixed
        out += [f"{P[1]} and {P[0]}", f"{P[0]} with {P[1]}", f"{P[0]} next to {P[1]}"]
    return out


@functools.lru_cache(maxsize=None)
def specs_of_kind(kind: str) -> tuple[Spec, ...]:
    """Every spec of one caption kind (single 18, count 54, relation 1224, pair 306, mixed 612)."""
    things = [(c, s) for c in PALETTE for s in SHAPES]
    others = [(a, b) for a in things for b in things if a != b]
    specs = {"single": [Spec(((1, c, s),)) for c, s in things],
             "count": [Spec(((n, c, s),)) for n in (2, 3, 4) for c, s in things],
             "relation": [Spec(((1, *a), (1, *b)), r) for a, b in others for r in RELATIONS],
             "pair": [Spec(((1, *a), (1, *b))) for a, b in others],
             "mixed": [Spec(((n, *a), (1, *b))) for n in (2, 3) for a, b in others]}
    if kind not in specs:
        raise ValueError(f"unknown caption kind {kind!r}; choose from {', '.join(CAPTION_KINDS)}")
    return tuple(specs[kind])


# ---------------------------------------------------------------------------------------------------------------------
# Rendering: place boxes by rejection sampling, draw at 4x, average down.

def centroid(shape: str, box: tuple[float, float, float]) -> tuple[float, float]:
    """Area centroid (x, y) of a shape in its box (x0, y0, d); a triangle's sits 2/3 of the way down from its apex."""
    x, y, d = box
    return x + d / 2, y + (2 * d / 3 if shape == "triangle" else d / 2)


def _box_gap(a, b) -> float:
    """Gap between two boxes (x0, y0, d): the larger of the x and y gaps (negative if they overlap on both axes)."""
    gx = max(b[0] - a[0] - a[2], a[0] - b[0] - b[2])
    gy = max(b[1] - a[1] - a[2], a[1] - b[1] - b[2])
    return max(gx, gy)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], margin: float = 1.0) -> bool:
    """Centroid a lies on the named side of centroid b along the dominant axis: along > margin * |across|.
    Image coordinates: y grows downwards, so "above" means a smaller y."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along > margin * abs(across)


def _layout(spec: Spec, size: int, rng: np.random.Generator):
    """One (color, shape) and box (x0, y0, d) per object: sizes in range, inside the canvas, gaps kept, relation clear."""
    items = [(c, s) for n, c, s in spec.objects for _ in range(n)]
    lo, hi, gap = SIZE_RANGE[0] * size, SIZE_RANGE[1] * size, min_gap(size)
    for _ in range(10_000):
        boxes = []
        for _ in items:
            for _ in range(50):
                d = rng.uniform(lo, hi)
                box = (*rng.uniform(0, size - d, 2), d)
                if all(_box_gap(box, b) >= gap for b in boxes):
                    boxes.append(box)
                    break
        if len(boxes) < len(items):
            continue
        # Margin 2 where the judge asks for 1, so neither a judge nor a person has to split hairs between
        # "left of" and "above".
        if spec.relation is None or relation_holds(spec.relation, *(centroid(s, box) for (_, s), box
                                                                    in zip(items, boxes)), margin=2.0):
            return items, boxes
    raise RuntimeError(f"could not place {spec} on a {size}px canvas")


def _shape_mask(shape: str, box, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    x, y, d = box
    if shape == "circle":
        return (X - x - d / 2) ** 2 + (Y - y - d / 2) ** 2 <= (d / 2) ** 2
    inside_y = (Y >= y) & (Y < y + d)
    if shape == "square":
        return (X >= x) & (X < x + d) & inside_y
    return inside_y & (np.abs(X - x - d / 2) <= (Y - y) / 2)  # triangle: apex at the top centre, base at the bottom


def draw(items, boxes, size: int) -> np.ndarray:
    """Flat shapes on black, anti-aliased: each pixel gets color x (fraction of its SUPERSAMPLE^2 sub-pixels covered).

    Inside a shape the color is the exact palette value; objects never overlap, so adding their coverage is exact.
    """
    img = np.zeros((size, size, 3))
    for (color, shape), box in zip(items, boxes):
        x, y, d = box
        x0, y0, x1, y1 = int(x), int(y), min(size, int(x + d) + 1), min(size, int(y + d) + 1)  # pixels the box touches
        X = (np.arange(x0 * SUPERSAMPLE, x1 * SUPERSAMPLE) + 0.5) / SUPERSAMPLE  # sub-pixel centres, in pixels
        Y = (np.arange(y0 * SUPERSAMPLE, y1 * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
        sub = _shape_mask(shape, box, X[None, :], Y[:, None])                    # (h*4, w*4) bool
        cover = sub.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3))  # (h, w)
        img[y0:y1, x0:x1] += cover[..., None] * PALETTE[color]
    return np.round(img).astype(np.uint8)


def _check_size(size: int):
    if not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"image size must be a positive multiple of 8 (16, 32, 64, ...), got {size!r}")


def render(spec: Spec, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 (S, S, 3) image of `spec`, laid out with `rng`."""
    _check_size(size)
    return draw(*_layout(spec, size, rng), size)


def make_sample(seed: int, index: int, size: int = 32, kinds=CAPTION_KINDS, paraphrase_prob: float = 0.0) -> dict:
    """Sample `index` of stream `seed`: a kind (uniform), a spec (uniform within the kind), its image and caption.

    Deterministic: everything comes from numpy.random.default_rng((seed, index)); the paraphrase choice has its own
    stream (seed, index, 1), so the image and spec do not depend on `paraphrase_prob`. `boxes` are (x0, y0, d) pixels.
    """
    _check_size(size)
    rng = np.random.default_rng((seed, index))
    kind = kinds[rng.integers(len(kinds))]
    pool = specs_of_kind(kind)
    spec = pool[rng.integers(len(pool))]
    items, boxes = _layout(spec, size, rng)
    caption = canonical_caption(spec)
    crng = np.random.default_rng((seed, index, 1))
    if crng.random() < paraphrase_prob:
        options = paraphrases(spec, kind)
        caption = options[crng.integers(len(options))]
    return dict(image=draw(items, boxes, size), caption=caption, spec=spec, kind=kind, boxes=boxes)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (S, S, 3) -> float32 (3, S, S) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)  # (3, S, S)


class ShapesDataset(torch.utils.data.Dataset):
    """Items {image float32 (3, S, S) in [0, 1], caption, spec, kind}, generated on the fly from (seed, index)."""

    def __init__(self, size: int = 32, seed: int = 0, length: int = 50_000, kinds=CAPTION_KINDS,
                 paraphrase_prob: float = 0.0):
        self.size, self.seed, self.length, self.kinds, self.paraphrase_prob = size, seed, length, tuple(kinds), paraphrase_prob

    def __len__(self):
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a ShapesDataset of length {self.length}")
        s = make_sample(self.seed, index, self.size, self.kinds, self.paraphrase_prob)
        return dict(image=to_tensor(s["image"]), caption=s["caption"], spec=s["spec"], kind=s["kind"])


def collate(batch: list[dict]) -> dict:
    """Stack images to (B, 3, S, S); keep captions, specs and kinds as lists."""
    return dict(image=torch.stack([b["image"] for b in batch]), caption=[b["caption"] for b in batch],
                spec=[b["spec"] for b in batch], kind=[b["kind"] for b in batch])


def eval_prompts(n_per_kind: int, seed: int = 10_000, kinds=CAPTION_KINDS) -> list[tuple[str, Spec, str]]:
    """Held-out (caption, spec, kind) triples, n_per_kind per kind, specs uniform within a kind.

    The caption set is finite (18 single, 54 count, ...), so prompts are not new words but new draws: each kind's
    specs are shuffled with rng (seed, kind) and cycled, so n_per_kind >= the kind's size covers every spec."""
    out = []
    for kind in kinds:
        pool = specs_of_kind(kind)
        rng = np.random.default_rng((seed, CAPTION_KINDS.index(kind)))
        order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-n_per_kind // len(pool)))])[:n_per_kind]
        out += [(canonical_caption(pool[i]), pool[i], kind) for i in order]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Writing the shapes dataset to disk (real image folders are read by hfdata.py).

def spec_to_json(spec: Spec) -> dict:
    return {"objects": [list(o) for o in spec.objects], "relation": spec.relation}


def contact_sheet(images: list[np.ndarray], captions: list[str], cols: int = 8, tile: int = 128) -> Image.Image:
    """Upscaled images in a grid, each with its caption written underneath (PIL only)."""
    font, line_h, chars = ImageFont.load_default(size=12), 15, tile // 6
    lines = [textwrap.wrap(c, chars) or [""] for c in captions]
    cell_h = tile + 4 + line_h * max(len(l) for l in lines) + 6
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * (tile + 8) + 8, rows * cell_h + 8), (255, 255, 255))
    draw_ = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(zip(images, lines)):
        x, y = 8 + (i % cols) * (tile + 8), 8 + (i // cols) * cell_h
        sheet.paste(Image.fromarray(img).resize((tile, tile), Image.NEAREST), (x, y))
        for j, line in enumerate(text):
            draw_.text((x, y + tile + 4 + j * line_h), line, fill=(0, 0, 0), font=font)
    return sheet


def write_dataset(n: int, out_dir, size: int = 32, seed: int = 0, kinds=CAPTION_KINDS, grid_max: int = 64,
                  overwrite: bool = False) -> Path:
    """DIR/000.png ..., DIR/captions.jsonl {"file", "caption", "kind", "spec"} per image, DIR/grid.png (first 64).

    Every file is written atomically; an existing one is refused, before anything is drawn, unless `overwrite`."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer of at least 1, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:  # numpy's SeedSequence takes no negatives
        raise ValueError(f"seed must be an integer of 0 or more, got {seed!r}")
    _check_size(size)
    out = Path(out_dir)
    digits, rows, shown = max(3, len(str(n - 1))), [], []
    names = [f"{i:0{digits}d}.png" for i in range(n)]
    check_outputs([out / name for name in names + ["captions.jsonl"] + (["grid.png"] if grid_max > 0 else [])], overwrite)
    for i, name in enumerate(names):
        s = make_sample(seed, i, size, kinds)
        atomic_save_image(out / name, s["image"])
        rows.append(json.dumps({"file": name, "caption": s["caption"], "kind": s["kind"], "spec": spec_to_json(s["spec"])}))
        if i < grid_max:
            shown.append((s["image"], s["caption"]))
    atomic_write_text(out / "captions.jsonl", "\n".join(rows) + "\n")
    if shown:
        atomic_save_image(out / "grid.png", contact_sheet(*map(list, zip(*shown))))
    return out
