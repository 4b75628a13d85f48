"""Measuring the edits of Muse §3.3 on held-out shapes scenes: `minimuse eval --task inpaint|edit|outpaint`.

Each task makes a scene whose answer the judge knows:
- inpaint: mask one object's cells, ask for that object in another colour; success is the new spec judged true;
  preservation is PSNR outside the region and the share of outside tokens kept (the sampler guarantees 100%);
- edit (mask-free): ask for one object in another colour or shape; success and "kept in place" (the edited
  object's centroid moved at most 2 px) after 25, 50, 75 and 100 iterations;
- outpaint: extend a single-object scene by half a canvas under a pair prompt; success is the pair judged true.
Scenes come from the held-out eval seed. Taught in notebooks/08_editing.ipynb.
"""
from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import torch

from .data import PALETTE, SHAPES, Spec, canonical_caption, centroid, make_sample
from .editing import cell_mask
from .judge import find_objects, score
from .metrics import psnr_from_mse, wilson

KEPT_PX = 2.0  # "kept in place": the edited object's centroid moved at most this many pixels


def _scenes(pipe, n: int, seed: int, kinds) -> list[dict]:
    return [make_sample(seed, i, pipe.config.data.image_size, kinds) for i in range(n)]


def another_value(value: str, taken, options) -> str:
    """The first option after `value` (in a fixed cyclic order) that nothing in the scene already has."""
    options = list(options)
    i = options.index(value)
    return next(o for o in options[i + 1:] + options[:i] if o not in taken)


def edit_spec(spec: Spec, j: int, attr: str) -> tuple[Spec, tuple[str, str]]:
    """`spec` with object j's colour (attr "color") or shape ("shape") changed to one no object has; the new (c, s)."""
    objs = [list(o) for o in spec.objects]
    k = 1 if attr == "color" else 2
    objs[j][k] = another_value(objs[j][k], {o[k] for o in objs}, PALETTE if attr == "color" else SHAPES)
    return Spec(tuple(tuple(o) for o in objs), spec.relation), (objs[j][1], objs[j][2])


def _rate(oks: list[bool]) -> dict:
    n = len(oks)
    p = sum(oks) / n if n else float("nan")
    lo, hi = wilson(p, n) if n else (float("nan"), float("nan"))
    return {"rate": round(p, 4), "n": n, "wilson_95": [round(lo, 4), round(hi, 4)]}


def object_box_mask(size: int, box, pad: float = 1.0) -> np.ndarray:
    """bool (S, S): the object's box (x0, y0, d) grown by `pad` px, the pixels an inpainting mask must cover."""
    x, y, d = box
    Y, X = np.mgrid[0:size, 0:size]
    return (X + 1 > x - pad) & (X < x + d + pad) & (Y + 1 > y - pad) & (Y < y + d + pad)


def eval_inpaint(pipe, n: int = 256, seed: int | None = None, batch_size: int = 64) -> dict:
    seed = pipe.config.data.eval_seed if seed is None else seed
    S = pipe.config.data.image_size
    oks, kept, sq, count, fails = [], [], 0.0, 0, []
    scenes = _scenes(pipe, n, seed, ("single", "pair", "relation"))
    for start in range(0, n, batch_size):
        chunk = scenes[start:start + batch_size]
        images = np.stack([s["image"] for s in chunk])                                     # (b, S, S, 3)
        specs = [edit_spec(s["spec"], 0, "color")[0] for s in chunk]
        masks = np.stack([object_box_mask(S, s["boxes"][0]) for s in chunk])                # (b, S, S)
        ids = pipe.inpaint(images, masks, [canonical_caption(sp) for sp in specs], seed=seed + start, output_type="ids")
        out = pipe.decode(ids)
        region = cell_mask(masks, pipe.transformer.grid)                                    # (b, h, w)
        known = pipe.encode_images(images).cpu().numpy()
        got = ids.cpu().numpy()
        kept += [float((got[i][~region[i]] == known[i][~region[i]]).mean()) for i in range(len(chunk))]
        f = S // pipe.transformer.grid[0]
        outside = ~region.repeat(f, 1).repeat(f, 2)                                         # (b, S, S) pixels
        diff = (out.astype(np.float64) - images.astype(np.float64)) / 255
        sq += float((diff ** 2)[outside].sum())
        count += int(outside.sum()) * 3
        for s, sp, img in zip(chunk, specs, out):
            ok, why = score(img, sp)
            oks.append(ok)
            if not ok and len(fails) < 10:
                fails.append({"caption": canonical_caption(sp), "reason": why})
    return {"success": _rate(oks), "unmasked_tokens_kept": round(min(kept), 6),
            "psnr_outside_db": round(psnr_from_mse(sq / max(count, 1)), 2), "n": n,
            "examples_failed": fails}


def eval_edit(pipe, n: int = 128, seed: int | None = None, iters=(25, 50, 75, 100), batch_size: int = 64,
              guidance_scale: float | None = None, top_k: int | None = None) -> dict:
    seed = pipe.config.data.eval_seed if seed is None else seed
    e = dataclasses.replace(pipe.config.edit, **{k: v for k, v in (("guidance_scale", guidance_scale), ("top_k", top_k))
                                                  if v is not None})
    scenes = _scenes(pipe, n, seed, ("single", "pair"))
    res = {i: {"ok": [], "kept": [], "why": collections.Counter()} for i in iters}
    for start in range(0, n, batch_size):
        chunk = scenes[start:start + batch_size]
        attrs = ["color" if (start + i) % 2 == 0 else "shape" for i in range(len(chunk))]  # half colour, half shape
        edits = [edit_spec(s["spec"], 0, a) for s, a in zip(chunk, attrs)]
        images = np.stack([s["image"] for s in chunk])
        _, hist = pipe.edit(images, [canonical_caption(sp) for sp, _ in edits], num_iters=max(iters),
                            guidance_scale=e.guidance_scale, top_k=e.top_k, seed=seed + start, return_history=True,
                            history_at=iters)
        for it in iters:
            for s, (sp, target), img in zip(chunk, edits, hist[it]):
                ok, why = score(img, sp)
                res[it]["ok"].append(ok)
                if not ok:  # "expected 0 red blob, found 1; ..." -> its first clause, counted
                    res[it]["why"][why.split(";")[0].strip()] += 1
                if ok:  # where did the edited object end up, against where the original one was
                    cx, cy = centroid(s["spec"].objects[0][2], s["boxes"][0])
                    o = min((o for o in find_objects(img) if (o["color"], o["shape"]) == target),
                            key=lambda o: math.dist(o["centroid"], (cx, cy)))
                    res[it]["kept"].append(math.dist(o["centroid"], (cx, cy)) <= KEPT_PX)
    by_iter = {str(it): {"success": _rate(r["ok"]), "kept_in_place_of_successes": _rate(r["kept"]),
                         "commonest_failures": r["why"].most_common(3)} for it, r in res.items()}
    best = max(iters, key=lambda it: by_iter[str(it)]["success"]["rate"])
    return {"by_iteration": by_iter, "best_iteration": best, "n": n, "kept_px": KEPT_PX,
            "settings": {"guidance_scale": e.guidance_scale, "top_k": e.top_k, "resample_frac": e.resample_frac}}


def eval_outpaint(pipe, n: int = 128, seed: int | None = None, batch_size: int = 64) -> dict:
    seed = pipe.config.data.eval_seed if seed is None else seed
    S = pipe.config.data.image_size
    scenes = _scenes(pipe, n, seed, ("single",))
    oks, fails = [], []
    for start in range(0, n, batch_size):
        chunk = scenes[start:start + batch_size]
        specs = []
        for s in chunk:  # the known object, then a new one of another colour and shape to its right
            (_, c, sh), = s["spec"].objects
            specs.append(Spec(((1, c, sh), (1, another_value(c, {c}, PALETTE), another_value(sh, {sh}, SHAPES))), "left of"))
        wide = pipe.outpaint(np.stack([s["image"] for s in chunk]), [canonical_caption(sp) for sp in specs],
                             extend=f"right:{S // 2}", seed=seed + start)
        for sp, img in zip(specs, wide):
            ok, why = score(img, sp)
            oks.append(ok)
            if not ok and len(fails) < 10:
                fails.append({"caption": canonical_caption(sp), "reason": why})
    return {"success": _rate(oks), "n": n, "extend": f"right:{S // 2}", "examples_failed": fails}


def evaluate_edits(pipe, task: str, n: int, seed: int | None = None, **settings) -> dict:
    """settings: guidance_scale and top_k of mask-free editing (task "edit" only)."""
    fn = {"inpaint": eval_inpaint, "edit": eval_edit, "outpaint": eval_outpaint}[task]
    with torch.inference_mode():
        return fn(pipe, n, seed, **settings)
