"""Real image-text data through Hugging Face `datasets`: folders, saved datasets and streams, checked at the boundary.

Muse trains on image-text pairs (§3, Imagen's 460M-pair set); a user brings theirs in the field's own formats:
- an image folder (`load_dataset("imagefolder")`): images beside a `metadata.jsonl` of {"file_name", "text"} lines,
  with train/ and test/ sub-folders as splits;
- a dataset written by `Dataset.save_to_disk`;
- either as a stream (`streaming=True`), read once without an Arrow copy.
Images are decoded here, not by `datasets`, so a corrupt file is named; they are resized (shorter side to S) and
center-cropped, as aMUSEd's training does. `write_imagefolder` writes the shapes world, or the handwritten digits that
ship inside scikit-learn, in the same layout, so the path is exercised every day. Pre-tokenized shards are shards.py.
Taught in notebooks/appendix/A2_engineering.ipynb; the commands are in docs/REAL_DATA.md.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_save_image, atomic_write_text
from .data import make_sample, to_tensor
from .digits import digit_caption, load_digits
from .inputs import MAX_METADATA_BYTES, check_outputs, open_image, read_jsonl

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """Data that cannot be trained on: one line naming the file (and line) at fault."""


def _is_saved_dataset(p: Path) -> bool:
    return any((p / n).is_file() for n in ("dataset_dict.json", "state.json", "dataset_info.json"))


def check_imagefolder(root, caption_column: str = "text") -> int:
    """Refuse, before `datasets` reads a byte, a folder it would fail on deep inside or train on wrongly: no folder,
    an empty one, no metadata.jsonl, a line that is not JSON, a row without a caption, a listed image that is missing,
    Images no line names are left out, as `datasets` does, with a warning. Returns the number of captioned images."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else f"{root} is a file, not a folder")
    metas = sorted(root.rglob("metadata.jsonl"))
    images = {p.resolve() for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")}
    if not metas and not images:
        raise DataError(f"data folder {root} is empty: expected images and a metadata.jsonl")
    if not metas:
        raise DataError(f"{root / 'metadata.jsonl'} not found: an image folder needs metadata.jsonl with one "
                        f'{{"file_name": ..., "{caption_column}": ...}} per line (Hugging Face imagefolder)')
    captioned = set()
    for meta in metas:
        try:  # the one JSON-lines reader: bounded, a FIFO or non-UTF-8 file named, every line an object
            rows = read_jsonl(meta, "metadata file", MAX_METADATA_BYTES)
        except ValueError as e:
            raise DataError(str(e)) from None
        for n, row in rows:
            name = row.get("file_name")
            if not isinstance(name, str):
                raise DataError(f"{meta} line {n}: needs string fields 'file_name' and '{caption_column}', got "
                                f"{sorted(row)}")
            caption = row.get(caption_column)
            if not isinstance(caption, str) or not caption.strip():
                raise DataError(f"{meta} line {n}: image {name} has no caption: needs a non-empty string field "
                                f"'{caption_column}' (--caption-column picks another), got {sorted(row)}")
            path = (meta.parent / name).resolve()
            if path not in images:
                raise DataError(f"{meta} line {n}: image {meta.parent / name} not found")
            captioned.add(path)
    uncaptioned = sorted(images - captioned)
    if uncaptioned:  # `datasets` leaves them out, as it should (a contact sheet beside the data); say so once
        warnings.warn(f"{len(uncaptioned)} images in {root} are in no metadata.jsonl line and are left out, e.g. "
                      f"{uncaptioned[0]}", stacklevel=2)
    return len(captioned)


def load_image_text(source, caption_column: str = "text", split: str = "train", streaming: bool = False):
    """(dataset, image_column): a `datasets` Dataset (or IterableDataset when streaming) whose image column is left
    undecoded ({"bytes", "path"}), checked to hold images and a string caption column."""
    import datasets
    p = Path(source)
    if p.is_dir() and _is_saved_dataset(p):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"dataset {p} has no split {split!r}; it has {', '.join(ds)}")
            ds = ds[split]
        if streaming:
            ds = ds.to_iterable_dataset()
    else:
        check_imagefolder(p, caption_column)
        splits = {q.parent.name for q in p.rglob("metadata.jsonl")} & {"train", "test", "validation"}
        if splits and split not in splits:
            raise DataError(f"image folder {p} has no split {split!r}; it has {', '.join(sorted(splits))}")
        bars = datasets.utils.logging.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # the folder scan: three bars (six widgets in a notebook) before any work
        try:
            ds = datasets.load_dataset("imagefolder", data_dir=str(p), split=split, streaming=streaming)
        finally:
            if bars:
                datasets.enable_progress_bars()
    features = ds.features or {}
    image_cols = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    if not image_cols:
        raise DataError(f"dataset {p} has no image column; its columns are {', '.join(features) or 'unknown'}")
    if caption_column not in features:
        raise DataError(f"dataset {p} has no caption column {caption_column!r}; its columns are {', '.join(features)} "
                        "(--caption-column picks one)")
    return ds.cast_column(image_cols[0], datasets.Image(decode=False)), image_cols[0]


def prepare_image(value, size: int) -> np.ndarray:
    """An undecoded image ({"bytes", "path"}, a path, or a PIL image) -> uint8 (S, S, 3): the shorter side resized to
    S (bicubic), the middle S x S kept. Decoded by inputs.open_image, as every image minimuse reads: a decompression
    bomb or any decoder error is one DataError naming the file; EXIF rotation, 16-bit and alpha are handled."""
    where = value.get("path") if isinstance(value, dict) else value
    try:
        if isinstance(value, dict):
            im = open_image(value["bytes"] if value.get("bytes") else value["path"], where=where)
        else:
            im = open_image(value, where=where)
    except (ValueError, TypeError) as e:
        raise DataError(str(e)) from None
    if im.size != (size, size):
        scale = size / min(im.size)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8)


def caption_of(row: dict, caption_column: str, image_column: str) -> str:
    text = row[caption_column]
    if not isinstance(text, str) or not text.strip():
        img = row[image_column]
        raise DataError(f"image {img.get('path') if isinstance(img, dict) else '?'} has no caption "
                        f"(column {caption_column!r} holds {text!r})")
    return text


class ImageTextDataset(torch.utils.data.Dataset):
    """Items {image float32 (3, S, S) in [0, 1], caption, spec=None, kind="real"} of an image folder or saved dataset.

    Index i beyond the end wraps, in a fresh shuffle per epoch that is a pure function of (seed, epoch), so a trainer
    that reads images [s*B, (s+1)*B) at step s sees every image once per epoch and resumes exactly."""

    def __init__(self, source, size: int = 32, caption_column: str = "text", split: str = "train", seed: int = 0,
                 shuffle: bool = False):
        self.ds, self.image_column = load_image_text(source, caption_column, split)
        self.size, self.caption_column, self.seed, self.shuffle = size, caption_column, seed, shuffle
        self.n, self._perm = len(self.ds), {}
        if self.n == 0:
            raise DataError(f"dataset {source} holds no images")

    def __len__(self):
        return self.n

    def _row(self, index: int) -> int:
        if not self.shuffle:
            if not 0 <= index < self.n:
                raise IndexError(f"index {index} out of range for a dataset of {self.n} images")
            return index
        epoch = index // self.n
        if epoch not in self._perm:
            self._perm = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))}
        return int(self._perm[epoch][index % self.n])

    def __getitem__(self, index: int) -> dict:
        row = self.ds[self._row(index)]
        return dict(image=to_tensor(prepare_image(row[self.image_column], self.size)),
                    caption=caption_of(row, self.caption_column, self.image_column), spec=None, kind="real")


# ---------------------------------------------------------------------------------------------------------------------
# Writing image folders: the shapes world and scikit-learn's handwritten digits (digits.py).

def write_imagefolder(out_dir, source: str = "shapes", n: int = 1000, size: int = 32, seed: int = 0,
                      overwrite: bool = False) -> dict:
    """Write `source` as a Hugging Face image folder: PNGs and metadata.jsonl {"file_name", "text", ...}.
    shapes: n images of stream `seed` in OUT/ (with "kind"); digits: all 1,797 in OUT/train and OUT/test (with
    "digit"). Every file is written atomically; existing files are refused before any is written, unless `overwrite`.
    Returns {split: rows}."""
    out = Path(out_dir)
    if source == "shapes":
        width = max(3, len(str(n - 1)))
        splits = {".": [(f"{i:0{width}d}.png", i) for i in range(n)]}
    elif source == "digits":
        images, digits, is_test = load_digits(size)
        splits = {s: [(f"{i:04d}.png", i) for i in range(len(images)) if is_test[i] == (s == "test")]
                  for s in ("train", "test")}
    else:
        raise DataError(f"unknown dataset source {source!r}; choose 'shapes' or 'digits'")
    check_outputs([out / s / f for s, rows in splits.items() for f, _ in rows] +
                  [out / s / "metadata.jsonl" for s in splits], overwrite)
    counts = {}
    for split, rows in splits.items():
        lines = []
        for name, i in rows:
            if source == "shapes":
                s = make_sample(seed, i, size)
                image, meta = s["image"], {"text": s["caption"], "kind": s["kind"]}
            else:
                image, meta = images[i], {"text": digit_caption(int(digits[i])), "digit": int(digits[i])}
            atomic_save_image(out / split / name, image)
            lines.append(json.dumps({"file_name": name, **meta}))
        atomic_write_text(out / split / "metadata.jsonl", "\n".join(lines) + "\n")
        counts["train" if split == "." else split] = len(rows)
    return counts
