"""The Nouns characters: real CC0 pixel art with a caption contract and a held-out split.

The artwork is CC0 (public domain): `dist/image-data.json` of the npm package `@nouns/assets` 0.10.0, whose code
(GPL-3.0) is not used: this decoder was written from the data. A character is five parts drawn in order on 32x32:
background (2: cool d5d7e1, warm e1d7d5), body (30), accessory (143, with `accessory-none`), head (254), glasses (23).
A part's `data` is hex: a byte 0, bounds top, right, bottom, left (right exclusive, bottom inclusive), then (length,
palette index) runs filling the bounds row by row, exactly (all 450 parts do); index 0 is transparent.
Found: the `assets` path given, else the user cache (checked against the pinned sha256), else `npm pack` once (the
tarball checked against its sha256, one member's bytes read, cached atomically). Every field is checked: a corrupt
or tampered file is one ValueError naming the field.

Captions (a contract): "a pixel art character with {glasses}, {head}, {body} and {accessory} on a {cool|warm}
background"; a phrase is the file name less its part's prefix, hyphens as spaces, "an" before a vowel: "square red
glasses", "an aardvark head", "a gold body", "a chain logo accessory", "no accessory". Held out (a contract):
(head * 23 + glasses) % 10 == 0. The judge of parts is
nouns_judge.py. Data card: docs/NOUNS.md. Taught in notebook 10.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import atomic_save_image, atomic_write_bytes, atomic_write_text
from .data import contact_sheet
from .inputs import check_outputs, check_seed, read_text_input

VERSION = "0.10.0"
PACKAGE = f"@nouns/assets@{VERSION}"
TARBALL_SHA256 = "60ed1040e399e10113bd3e4a5c47b1618517c3bba082790b8bd5588af6ca3551"
JSON_SHA256 = "c87809b865e62d85ba8e3d1d6c4bf2eab12e50602623647f6ce9ac4b1c18af4e"
MEMBER = "package/dist/image-data.json"
MAX_ASSETS_BYTES = 4 * 2 ** 20     # the real file is 165 kB
MAX_TARBALL_BYTES = 16 * 2 ** 20   # the real tarball is 36 kB
MAX_PARTS = 1024                   # per kind; the real file has at most 254
SIZE = 32
PARTS = ("background", "body", "accessory", "head", "glasses")  # also the drawing order
KEYS = {"body": "bodies", "accessory": "accessories", "head": "heads", "glasses": "glasses"}
BACKGROUNDS = ("cool", "warm")
HELD_OUT_EVERY, GLASSES_STRIDE = 10, 23
_NAME = re.compile(r"[A-Za-z0-9+_.]+(-[A-Za-z0-9+_.]+)*")
_HEX6 = re.compile(r"[0-9a-fA-F]{6}")


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(root) if os.path.isabs(root) else Path.home() / ".cache"
    return root / "minimuse" / "nouns" / f"image-data-{VERSION}.json"


def _how() -> str:
    return (f"pass --assets PATH (dist/image-data.json of {PACKAGE}), or install npm so that minimuse fetches "
            f"{PACKAGE} once into {cache_path().parent}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(cache: Path, npm: str) -> str:
    """`npm pack` the pinned tarball into a temporary folder, check it, read image-data.json, cache it atomically."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            r = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ValueError(f"cannot run npm pack {PACKAGE} ({e}); {_how()}") from None
        tgz = [p for p in Path(tmp).iterdir() if p.name.endswith(".tgz")]
        if r.returncode or len(tgz) != 1:
            why = (r.stderr.decode(errors="replace").strip().splitlines() or [f"exit {r.returncode}"])[-1]
            raise ValueError(f"npm pack {PACKAGE} failed ({why}); {_how()}")
        if tgz[0].stat().st_size > MAX_TARBALL_BYTES:
            raise ValueError(f"the tarball npm fetched for {PACKAGE} is over {MAX_TARBALL_BYTES:,} bytes; refused")
        blob = tgz[0].read_bytes()
    if _sha(blob) != TARBALL_SHA256:
        raise ValueError(f"the tarball npm fetched for {PACKAGE} has sha256 {_sha(blob)}, not the pinned "
                         f"{TARBALL_SHA256}; refused (a changed or tampered package)")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:  # read one member's bytes: no path is written
        member = next((m for m in tar.getmembers() if m.name == MEMBER and m.isfile()), None)
        data = tar.extractfile(member).read(MAX_ASSETS_BYTES + 1) if member else b""
    if _sha(data) != JSON_SHA256:
        raise ValueError(f"{MEMBER} in {PACKAGE} has sha256 {_sha(data)}, not the pinned {JSON_SHA256}")
    text = data.decode("utf-8")
    parse_assets(text, f"{PACKAGE} {MEMBER}")
    atomic_write_bytes(cache, data)
    return text


def find_assets(assets=None) -> tuple[str, str]:
    """(the JSON text, where it came from): `assets` if given, else the cache, else fetched with npm; else a
    ValueError saying how to get it."""
    if assets is not None:
        return read_text_input(assets, "nouns assets file", MAX_ASSETS_BYTES), str(assets)
    cache = cache_path()
    if cache.exists() or cache.is_symlink():
        text = read_text_input(cache, "cached nouns assets", MAX_ASSETS_BYTES)
        if _sha(text.encode()) != JSON_SHA256:
            raise ValueError(f"cached nouns assets {cache} are not {PACKAGE}'s image-data.json (sha256 "
                             f"{_sha(text.encode())[:16]}..., pinned {JSON_SHA256[:16]}...): tampered or corrupt; "
                             "delete the file to fetch it again, or pass --assets PATH")
        return text, str(cache)
    npm = shutil.which("npm")
    if npm is None:
        raise ValueError(f"the Nouns artwork is not in {cache.parent} and npm is not installed: {_how()}")
    return _fetch(cache, npm), str(cache)


def _bad(where: str, field: str, what: str):
    return ValueError(f"nouns assets {where}: {field} {what}; the file is corrupt or not {PACKAGE}'s "
                      "dist/image-data.json")


def _list(obj, where: str, field: str, lo: int, hi: int) -> list:
    if not isinstance(obj, list) or not lo <= len(obj) <= hi:
        n = f"{len(obj)} entries" if isinstance(obj, list) else type(obj).__name__
        raise _bad(where, field, f"must be a list of {lo} to {hi} entries, got {n}")
    return obj


def _colours(obj, where: str, field: str, lo: int, hi: int) -> np.ndarray:
    """uint8 (N, 3) of a list of 'rrggbb' strings; the palette's entry 0 (transparent) may be ''."""
    for i, c in enumerate(_list(obj, where, field, lo, hi)):
        if not isinstance(c, str) or not (_HEX6.fullmatch(c) or (field == "palette" and i == 0 and c == "")):
            raise _bad(where, f"{field}[{i}]", f"must be a colour 'rrggbb', got {c!r}")
    return np.array([list(bytes.fromhex(c or "000000")) for c in obj], np.uint8)


def decode_part(data: str, palette: np.ndarray, where: str = "?", field: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """One part's run-length hex -> (uint8 (32, 32, 3) colours, bool (32, 32) mask of its opaque pixels)."""
    if not isinstance(data, str) or not data.startswith("0x") or len(data) > 2 + 2 * (5 + 2 * SIZE * SIZE):
        raise _bad(where, field, "must be a string '0x...' of at most 4,106 characters")
    try:
        b = bytes.fromhex(data[2:])
    except ValueError:
        raise _bad(where, field, "is not hexadecimal") from None
    if len(b) < 5 or len(b) % 2 == 0:
        raise _bad(where, field, "must hold a 5-byte header and whole (length, colour) runs")
    first, top, right, bottom, left = b[:5]
    lengths, ids = np.frombuffer(b[5:], np.uint8)[0::2], np.frombuffer(b[5:], np.uint8)[1::2]
    if first != 0 or not (left <= right <= SIZE and top <= bottom < SIZE):
        raise _bad(where, field, f"has header ({first}, {top}, {right}, {bottom}, {left}), not (0, top, right, "
                   "bottom, left) on the 32x32 canvas")
    h, w = bottom - top + 1, right - left
    if (lengths == 0).any() or int(lengths.sum(dtype=np.int64)) != h * w:
        raise _bad(where, field, f"runs cover {int(lengths.sum(dtype=np.int64))} pixels, not its bounds' {h * w}")
    if ids.size and int(ids.max()) >= len(palette):
        raise _bad(where, field, f"uses colour {int(ids.max())}, beyond the palette's {len(palette)}")
    canvas = np.zeros((SIZE, SIZE), np.int64)
    canvas[top:bottom + 1, left:right] = np.repeat(ids, lengths).reshape(h, w)
    mask = canvas != 0
    return np.where(mask[..., None], palette[canvas], 0).astype(np.uint8), mask


@dataclass(frozen=True)
class Nouns:
    """The decoded parts: for each of PARTS, file names, colours uint8 (N, 32, 32, 3) and masks bool (N, 32, 32);
    the background is a part whose two entries cover the canvas."""
    names: dict
    colors: dict
    masks: dict
    source: str

    def count(self, part: str) -> int:
        return len(self.names[part])

    def check_parts(self, parts) -> tuple[int, ...]:
        parts = tuple(parts)
        if len(parts) != 5:
            raise ValueError(f"parts must be 5 indices ({', '.join(PARTS)}), got {len(parts)}")
        for p, i in zip(PARTS, parts):
            if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= i < self.count(p):
                raise ValueError(f"{p} index must be an integer in [0, {self.count(p)}), got {i!r}")
        return tuple(int(i) for i in parts)

    def draw(self, idx, upto: int = 5) -> np.ndarray:
        out = np.zeros((SIZE, SIZE, 3), np.uint8)
        for p, i in zip(PARTS[:upto], idx[:upto]):
            m = self.masks[p][i]
            out[m] = self.colors[p][i][m]
        return out

    def render(self, parts) -> np.ndarray:
        """uint8 (32, 32, 3) of (background, body, accessory, head, glasses) indices, drawn in that order."""
        return self.draw(self.check_parts(parts))

    def phrase(self, part: str, index: int) -> str:
        if part == "background":
            return BACKGROUNDS[index]
        name = self.names[part][index]
        words = (name[len(part) + 1:] if name.startswith(part + "-") else name).replace("-", " ")
        if part == "glasses":
            return f"{words} glasses"
        if part == "accessory" and words == "none":
            return "no accessory"
        return f"{'an' if words[0] in 'aeiouAEIOU' else 'a'} {words} {part}"

    def caption(self, parts) -> str:
        bg, body, acc, head, gl = self.check_parts(parts)
        return (f"a pixel art character with {self.phrase('glasses', gl)}, {self.phrase('head', head)}, "
                f"{self.phrase('body', body)} and {self.phrase('accessory', acc)} on a "
                f"{self.phrase('background', bg)} background")

    def split_size(self, split: str) -> int:
        held = int(is_heldout(np.arange(self.count("head"))[:, None], np.arange(self.count("glasses"))).sum())
        pairs = held if check_split(split) == "heldout" else self.count("head") * self.count("glasses") - held
        return pairs * self.count("background") * self.count("body") * self.count("accessory")

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[tuple[int, ...]]:
        """n distinct combinations of `split`, uniform over it: a pure function of `seed` whose first k are those of
        sample(k) (draws in fixed blocks of 4,096, rejection by split, repeats dropped)."""
        check_seed(seed)
        total = self.split_size(split)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= total:
            raise ValueError(f"the {split} split of the Nouns holds {total:,} combinations; --n must lie in "
                             f"[1, {total:,}], got {n!r}")
        rng, out, seen = np.random.default_rng([seed, 31]), [], set()
        while len(out) < n:
            block = np.stack([rng.integers(0, self.count(p), 4096) for p in PARTS], 1)  # (4096, 5)
            keep = is_heldout(block[:, 3], block[:, 4]) == (split == "heldout")
            for row in map(tuple, block[keep].tolist()):
                if row not in seen and len(out) < n:
                    seen.add(row)
                    out.append(row)
        return out


def is_heldout(head, glasses):
    """The held-out rule (a contract): (head * 23 + glasses) % 10 == 0; works on arrays."""
    return (np.asarray(head) * GLASSES_STRIDE + np.asarray(glasses)) % HELD_OUT_EVERY == 0


def check_split(split: str) -> str:
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; choose train or heldout")
    return split


def parse_assets(text: str, where: str = "?") -> Nouns:
    """Check every field of image-data.json and decode every part; one ValueError naming the first bad field."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(where, "the file", f"is not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(obj, dict) or not {"bgcolors", "palette", "images"} <= set(obj):
        raise _bad(where, "the file", "must be an object with fields bgcolors, palette and images")
    palette, bg = _colours(obj["palette"], where, "palette", 1, 256), _colours(obj["bgcolors"], where, "bgcolors", 2, 2)
    names, colors = {"background": BACKGROUNDS}, {"background": np.broadcast_to(bg[:, None, None], (2, SIZE, SIZE, 3))}
    masks = {"background": np.ones((2, SIZE, SIZE), bool)}
    images = obj["images"]
    if not isinstance(images, dict):
        raise _bad(where, "images", "must be an object")
    for part, key in KEYS.items():
        items = _list(images.get(key), where, f"images.{key}", 1, MAX_PARTS)
        cs, ms, ns = [], [], []
        for i, item in enumerate(items):
            field = f"images.{key}[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                raise _bad(where, field, "must be an object with string fields filename and data")
            name = item["filename"]
            if len(name) > 100 or not _NAME.fullmatch(name) or name == part:
                raise _bad(where, f"{field}.filename", f"must be hyphenated words like '{part}-gold', got {name!r}")
            if name in ns:
                raise _bad(where, f"{field}.filename", f"repeats {name!r}")
            c, m = decode_part(item.get("data"), palette, where, f"{field}.data")
            cs.append(c), ms.append(m), ns.append(name)
        names[part], colors[part], masks[part] = tuple(ns), np.stack(cs), np.stack(ms)
    return Nouns(names, colors, masks, where)


def load(assets=None) -> Nouns:
    """The checked, decoded Nouns: from `assets` (a path to image-data.json), else the cache, else npm."""
    text, where = find_assets(assets)
    return parse_assets(text, where)


def render(parts, nouns: Nouns | None = None) -> np.ndarray:
    """uint8 (32, 32, 3) of (background, body, accessory, head, glasses) indices."""
    return (nouns or load()).render(parts)


def write_dataset(out_dir, n: int, split: str = "train", seed: int = 0, size: int = SIZE, fmt: str = "pngs",
                  assets=None, overwrite: bool = False) -> int:
    """n characters of `split` in the shapes layout (fmt "pngs": 000.png ..., captions.jsonl {"file", "caption",
    "kind": "nouns", "spec": {part: index}}, grid.png) or as an image folder (fmt "imagefolder": metadata.jsonl
    {"file_name", "text", "split", part: index}), scaled to `size` px (a multiple of 32) by pixel repetition.
    The artwork and n are checked, and existing files refused (unless `overwrite`), before anything is written."""
    check_split(split)
    if not isinstance(size, int) or size < SIZE or size % SIZE:
        raise ValueError(f"Nouns are 32x32 pixel art: --size must be a multiple of 32, got {size!r}")
    if fmt not in ("pngs", "imagefolder"):
        raise ValueError(f"unknown format {fmt!r}; choose pngs or imagefolder")
    nouns = load(assets)
    combos = nouns.sample(n, split, seed)
    out, width = Path(out_dir), max(3, len(str(n - 1)))
    names = [f"{i:0{width}d}.png" for i in range(n)]
    extra = ["captions.jsonl", "grid.png"] if fmt == "pngs" else ["metadata.jsonl"]
    check_outputs([out / f for f in names + extra], overwrite)
    rows, shown = [], []
    for name, parts in zip(names, combos):
        image, text = nouns.render(parts).repeat(size // SIZE, 0).repeat(size // SIZE, 1), nouns.caption(parts)
        atomic_save_image(out / name, image)
        spec = dict(zip(PARTS, parts))
        rows.append(json.dumps({"file": name, "caption": text, "kind": "nouns", "spec": spec} if fmt == "pngs" else
                               {"file_name": name, "text": text, "split": split, **spec}))
        if len(shown) < 64 and fmt == "pngs":
            shown.append((image, text))
    atomic_write_text(out / extra[0], "\n".join(rows) + "\n")
    if shown:
        atomic_save_image(out / "grid.png", contact_sheet(*map(list, zip(*shown))))
    return n
