"""Muse's stated limitation (§5: high counts, several counts in one prompt) measured on the shapes world:
`minimuse eval --task counts`.

A prompt's difficulty has three separate parts: how many objects it asks for, how many distinct (colour, shape) groups
they form, and whether it names a relation. The training kinds tie them together (every 4-object prompt is one group
of four or a three and a one), so each cell below fixes a partition of the object count into groups, e.g. "2+2" is
`two red circles and two blue squares`. Cells the training kinds never produce are held out: they ask for known words
in new combinations. Each cell reports judged faithfulness with its Wilson interval, and, to tell counting errors from
binding errors, how often the image holds the right number of objects at all. The judge's agreement with true renders
of the same prompts is reported beside it, so a low cell cannot be the judge's fault.

The shapes world stops at 4 objects: at 32 px, objects of 8 to 12 px with 3 px gaps leave no room for a fifth in a
random layout (three of the smallest with two gaps already span 30 of 32 px). Taught in notebooks/09_experiments.ipynb.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import CAPTION_KINDS, PALETTE, RELATIONS, SHAPES, Spec, canonical_caption, render, specs_of_kind
from .metrics import wilson
from .judge import find_objects, score

# (partition of the object count into groups, with a relation?); groups are listed largest first, like the captions
CELLS = (((1,), False), ((2,), False), ((3,), False), ((4,), False),
         ((1, 1), False), ((1, 1), True), ((2, 1), False), ((3, 1), False),
         ((2, 2), False), ((1, 1, 1), False), ((2, 1, 1), False), ((1, 1, 1, 1), False))


def cell_name(parts: tuple[int, ...], relation: bool) -> str:
    return "+".join(map(str, parts)) + (" rel" if relation else "")


def seen_in_training(parts: tuple[int, ...], relation: bool) -> bool:
    """Whether any training caption kind holds specs of this shape."""
    return (tuple(parts), relation) in {(tuple(o[0] for o in spec.objects), spec.relation is not None)
                                        for kind in CAPTION_KINDS for spec in specs_of_kind(kind)}


def draw_spec(parts: tuple[int, ...], relation: bool, rng: np.random.Generator) -> Spec:
    """A uniform spec of this shape: distinct (colour, shape) per group, and a uniform relation if asked."""
    things = [(c, s) for c in PALETTE for s in SHAPES]
    picks = rng.choice(len(things), size=len(parts), replace=False)
    objects = tuple((n, *things[i]) for n, i in zip(parts, picks))
    return Spec(objects, RELATIONS[rng.integers(len(RELATIONS))] if relation else None)


def cell_prompts(parts, relation, n: int, seed: int) -> list[Spec]:
    rng = np.random.default_rng((seed, *parts, 9, int(relation)))  # one stream per cell, apart from eval_prompts'
    return [draw_spec(parts, relation, rng) for _ in range(n)]


def eval_counts(pipe, n: int = 64, seed: int | None = None, batch_size: int = 128, cells=CELLS, **sampling) -> dict:
    """Faithfulness per cell (n held-out prompts each), the share of images with the right object count, and the
    judge's agreement with true renders of the same prompts."""
    cfg = pipe.config
    seed = cfg.data.eval_seed if seed is None else seed
    S, rows = cfg.data.image_size, []
    for parts, relation in cells:
        specs = cell_prompts(parts, relation, n, seed)
        ok = counted = agree = 0
        for start in range(0, n, batch_size):
            chunk = specs[start:start + batch_size]
            with torch.inference_mode():
                drawn = pipe([canonical_caption(s) for s in chunk], seed=seed + start, superres=False, **sampling)
            for spec, image in zip(chunk, drawn):
                ok += score(image, spec)[0]
                counted += len(find_objects(image)) == sum(o[0] for o in spec.objects)
        for i, spec in enumerate(specs):  # true renders, own stream: is the judge right on this kind of scene?
            agree += score(render(spec, S, np.random.default_rng((seed, i, 11))), spec)[0]
        lo, hi = wilson(ok / n, n)
        rows.append({"cell": cell_name(parts, relation), "objects": sum(parts), "groups": len(parts),
                     "relation": relation, "seen_in_training": seen_in_training(parts, relation), "n": n,
                     "faithfulness": round(ok / n, 4), "ci95": [round(lo, 4), round(hi, 4)],
                     "right_count": round(counted / n, 4), "judge_on_true_renders": round(agree / n, 4),
                     "example": canonical_caption(specs[0])})
    return {"cells": rows, "n_per_cell": n, "seed": seed, "settings": dict(sampling)}
