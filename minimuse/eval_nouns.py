"""`minimuse eval --task nouns`: how often a model trained on the Nouns characters draws each prompted part.

n held-out characters (their head-glasses pairing never seen in training, nouns.is_heldout) are drawn from their
canonical captions, and the judge of parts (nouns_judge.py) says for each of the five parts whether the image shows
it: each part's accuracy and "all five right", with 95% Wilson intervals and n. Beside them, what the model confuses
(the parts that fit its images better than the prompted one, most frequent first) and the ceiling the tokenizer
sets: the share of held-out characters whose every part the judge still finds after the tokenizer's round trip.
Taught in notebook 10.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .measures import sampling_record
from .metrics import psnr_from_mse, wilson
from .nouns import PARTS, Nouns, load
from .nouns_judge import fit, judge


def _rate(hits: list[bool]) -> dict:
    p = float(np.mean(hits))
    return {"accuracy": round(p, 4), "interval": [round(v, 4) for v in wilson(p, len(hits))], "n": len(hits)}


def eval_nouns(pipe, n: int = 256, seed: int = 0, batch_size: int = 64, nouns: Nouns | None = None,
               top_confusions: int = 5, **sampling) -> dict:
    """Per-part and all-five accuracy of pipe's images of n held-out characters (seed picks them and seeds the
    sampler batch by batch), the most frequent confusions per part, and the tokenizer round trip's ceiling."""
    nouns = nouns or load()
    combos = nouns.sample(n, "heldout", seed)
    prompts = [nouns.caption(c) for c in combos]
    images = np.concatenate([pipe(prompts[i:i + batch_size], seed=seed + i, **sampling)
                             for i in range(0, n, batch_size)])  # (n, S, S, 3)
    hits, confused = {p: [] for p in (*PARTS, "all")}, {p: Counter() for p in PARTS}
    for image, parts in zip(images, combos):
        fitted = fit(nouns, image, parts)
        shown = judge(nouns, image, parts, fitted)
        for layer, part in enumerate(PARTS):
            hits[part].append(shown[part])
            if not shown[part] and fitted[1][layer] != parts[layer]:
                confused[part][(nouns.names[part][parts[layer]], nouns.names[part][fitted[1][layer]])] += 1
        hits["all"].append(all(shown.values()))
    return {"parts": {p: _rate(hits[p]) for p in PARTS}, "all_five": _rate(hits["all"]),
            "confusions": {p: [{"prompted": a, "drawn": b, "count": k} for (a, b), k in c.most_common(top_confusions)]
                           for p, c in confused.items()},
            "tokenizer_ceiling": tokenizer_ceiling(pipe, nouns, combos),
            "settings": {"seed": seed, "split": "heldout", **sampling_record(pipe, sampling)}}


def tokenizer_ceiling(pipe, nouns: Nouns, combos) -> dict:
    """The share of `combos`, rendered exactly, whose every part the judge finds after the base tokenizer's round
    trip (encode, decode): no model drawing through this tokenizer can do better."""
    S = pipe.config.data.image_size
    if S % 32:
        raise ValueError(f"the Nouns judge reads 32k px images; this pipeline draws {S} px")
    return round_trip(nouns, combos, lambda real: pipe.decode(pipe.encode_images(real)), S)


def round_trip(nouns: Nouns, combos, through, size: int = 32) -> dict:
    """What survives `through` (uint8 images (n, S, S, 3) in, the same out): the share of exact renders of `combos`
    whose every part the judge still finds, with its interval, each part's share, and the PSNR."""
    real = np.stack([nouns.render(c).repeat(size // 32, 0).repeat(size // 32, 1) for c in combos])  # (n, S, S, 3)
    back = through(real)
    shown = [judge(nouns, im, c) for im, c in zip(back, combos)]
    mse = float((((back.astype(np.float32) - real) / 255) ** 2).mean())
    return {**_rate([all(s.values()) for s in shown]), "psnr": round(psnr_from_mse(mse), 2),
            "per_part": {p: round(float(np.mean([s[p] for s in shown])), 4) for p in PARTS}}
