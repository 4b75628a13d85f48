"""A stand-in for the Nouns artwork: a small image-data.json in the real format (nouns.py), drawn here.

For a machine without the artwork, since tests and CI never fetch it: the tests check the decoder, the contracts and
the judge on it, and notebook 10 runs on it under the `ci` preset. Each part is a pattern of its own inside its kind's
real bounds, named like the real files (with their odd cases: `accessory-none`, an accessory named `body-bege`), in a
10-colour palette. It looks nothing like a Noun; only the format and the caption contract are the same.
"""
from __future__ import annotations

import json

import numpy as np

from .checkpoint import atomic_write_text

PALETTE = ["", "ff0000", "00ff00", "0000ff", "ffff00", "ff00ff", "00ffff", "202020", "808080", "f0f0f0"]
NAMES = {"bodies": ["body-gold", "body-blue", "body-ice-cold"],
         "accessories": ["accessory-chain-logo", "accessory-none", "accessory-owl", "body-bege"],
         "heads": [f"head-{w}" for w in ("bear", "aardvark", "egg", "pipe", "fir", "saw", "ghost-B", "hanger", "igloo",
                                         "weed", "onion", "bag")],
         "glasses": ["glasses-square-red", "glasses-hip-rose", "glasses-grass"]}
BOUNDS = {"bodies": (21, 31, 9, 23), "accessories": (23, 29, 12, 20), "heads": (4, 20, 6, 26),
          "glasses": (11, 16, 7, 23)}  # top, bottom (inclusive), left, right (exclusive), as the real parts'


def part_ids(key: str, i: int) -> np.ndarray:
    """int (32, 32) palette indices of part i of `key`: a pattern of its own inside the kind's bounds."""
    ids = np.zeros((32, 32), np.int64)
    if NAMES[key][i] == "accessory-none":
        return ids
    top, bottom, left, right = BOUNDS[key]
    r, c = np.mgrid[top:bottom + 1, left:right]
    k = list(BOUNDS).index(key)
    ids[top:bottom + 1, left:right] = np.where((r * 3 + c * (i + 2) + k) % (4 + k) == 0, 0,
                                               1 + (r // (i % 3 + 1) + c * (k + 1) + 2 * i) % 9)
    return ids


def rle(ids: np.ndarray) -> str:
    """The inverse of nouns.decode_part: header (0, top, right, bottom, left), then (length, index) runs row by row."""
    ys, xs = np.nonzero(ids)
    if not len(ys):
        return "0x0000000000"
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max() + 1
    out, flat = [0, top, right, bottom, left], ids[top:bottom + 1, left:right].ravel().tolist()
    i = 0
    while i < len(flat):
        j = i
        while j < len(flat) and flat[j] == flat[i] and j - i < 255:
            j += 1
        out += [j - i, flat[i]]
        i = j
    return "0x" + bytes(int(v) for v in out).hex()


def standin() -> dict:
    """The stand-in artwork as the JSON object image-data.json holds."""
    return {"bgcolors": ["d5d7e1", "e1d7d5"], "palette": list(PALETTE),
            "images": {k: [{"filename": n, "data": rle(part_ids(k, i))} for i, n in enumerate(v)]
                       for k, v in NAMES.items()}}


def write_standin(path) -> str:
    """Write the stand-in artwork to `path` (atomically) and return the path, for `--assets` or nouns.load."""
    atomic_write_text(path, json.dumps(standin()))
    return str(path)
