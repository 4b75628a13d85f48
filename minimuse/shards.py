"""Pre-tokenized shards: every image encoded once by the frozen tokenizer, every caption once by the frozen text
encoder, so training reads tokens, not pixels (`minimuse pretokenize`, `minimuse train --data SHARDS`).

On 2 cores the tokenizer costs more than a transformer step and the text encoder more than both (pool.py), and at
scale the tokens of a dataset are read many times; Muse's training precomputes them too. The layout:
- `shard-00000/`, ...: Arrow datasets (`datasets.map` with batching, `save_to_disk`) of `ids` (h, w) int16 token grids
  (and `lowres_ids` for the super-res stage), `caption` and, where the data has one, `kind`. Each is written under a
  temporary name and renamed into place when whole, so a killed run resumes by skipping the shards that exist;
- `text_table.safetensors`: the distinct captions, each encoded once (U, T, E), with its padding mask;
- `manifest.json`: the source, sizes and the identity (a hash of config and weights) of the tokenizer(s) and text
  encoder. Training refuses shards made by another tokenizer or encoder, naming both.
`load_shards` turns them into the pool and text table that pool.train_step_inputs draws every batch from, so a run
from shards draws its batches exactly as a run from the shapes pool does: a pure function of (seed, step).
Commands in docs/REAL_DATA.md.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

from . import locks
from .checkpoint import (TMP_SUFFIX, CheckpointError, atomic_write_json, load_tree, save_tree, text_identity,
                         tokenizer_identity)
from .hfdata import DataError, caption_of, load_image_text, prepare_image
from .inputs import refuse_overlap
from .superres import decimate

FORMAT = "minimuse-shards/1"
MANIFEST, TABLE = "manifest.json", "text_table.safetensors"


class ShardError(CheckpointError):
    """Shards that are unfinished, corrupt, or made by another tokenizer or text encoder than the run's."""


def _encode_fn(tokenizer, size: int, caption_column: str, image_column: str, lowres_tokenizer=None, lowres_size=None):
    """The batched `datasets.map` function: decode and crop the images, tokenize them, keep caption (and kind)."""
    device = next(tokenizer.parameters()).device

    def fn(batch: dict) -> dict:
        rows = [dict(zip(batch, v)) for v in zip(*batch.values())]
        pixels = np.stack([prepare_image(r[image_column], size) for r in rows])  # (b, S, S, 3) uint8
        x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div(255)  # (b, 3, S, S)
        with torch.inference_mode():
            out = {"ids": tokenizer.encode(x).short().cpu().numpy()}  # (b, h, w)
            if lowres_tokenizer is not None:  # Muse §2.4: the same scene, box-decimated 2x and held as uint8
                small = decimate(x, size // lowres_size).mul(255).round().div(255)  # (b, 3, S', S')
                out["lowres_ids"] = lowres_tokenizer.encode(small).short().cpu().numpy()
        out["caption"] = [caption_of(r, caption_column, image_column) for r in rows]
        if "kind" in batch:
            out["kind"] = [str(k) for k in batch["kind"]]
        return out
    return fn


@locks.releasing  # the lock on out_dir is held until pretokenize returns or fails
def pretokenize(data, tokenizer, text_encoder, out_dir, size: int, caption_column: str = "text", split: str = "train",
                lowres_tokenizer=None, lowres_size: int | None = None, shard_size: int = 10_000, batch_size: int = 256,
                streaming: bool = False, overwrite: bool = False) -> dict:
    """Encode `data` (an image folder or a saved dataset) into shards in out_dir; returns the manifest.

    With `lowres_tokenizer` the shards are the super-res stage's: `ids` of the image at `size` through `tokenizer`
    (the high-res one) and `lowres_ids` of its box decimation to `lowres_size` through `lowres_tokenizer`. A killed run resumes:
    shards already in place are skipped. A folder of shards from another tokenizer, encoder or source is refused
    unless `overwrite`, which deletes only such a folder of shards: never `data`, a folder holding it or one inside it,
    nor a file or a folder without a manifest."""
    import datasets
    if lowres_tokenizer is not None and (lowres_size is None or size % lowres_size):
        raise ValueError(f"a super-res pretokenize needs lowres_size dividing size {size}, got {lowres_size}")
    out = refuse_overlap(out_dir, {"data": data}, name="out_dir")  # --overwrite would delete the dataset itself
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out} exists and is not a folder; minimuse never deletes it, even with --overwrite: "
                         "choose an empty or new --out")
    ds, image_column = load_image_text(data, caption_column, split, streaming)
    key = {"format": FORMAT, "source": str(Path(data).resolve()), "split": split, "caption_column": caption_column,
           "image_size": size, "lowres_size": lowres_size if lowres_tokenizer is not None else None, "shard_size": shard_size, "tokenizer": tokenizer_identity(tokenizer),
           "lowres_tokenizer": tokenizer_identity(lowres_tokenizer) if lowres_tokenizer is not None else None,
           "text_encoder": text_identity(text_encoder)}
    if not streaming:  # every image decodes before the first write: a bad one is named and nothing is left behind
        for batch in ds.select_columns([image_column]).iter(batch_size=batch_size):
            for value in batch[image_column]:
                prepare_image(value, size)
    _claim(out, key, overwrite)
    atomic_write_json(out / MANIFEST, {**key, "complete": False})

    h = size // tokenizer.downsample
    int_type = lambda tok: "int16" if tok.codebook_size <= 2 ** 15 else "int32"  # ids of any codebook, never wrapped
    feats = {"ids": datasets.Array2D((h, h), int_type(tokenizer)), "caption": datasets.Value("string")}
    if lowres_tokenizer is not None:
        lh = lowres_size // lowres_tokenizer.downsample
        feats["lowres_ids"] = datasets.Array2D((lh, lh), int_type(lowres_tokenizer))
    if "kind" in (ds.features or {}):
        feats["kind"] = datasets.Value("string")
    fn = _encode_fn(tokenizer, size, caption_column, image_column, lowres_tokenizer, lowres_size)
    tokenizer.eval()
    if lowres_tokenizer is not None:
        lowres_tokenizer.eval()
    names, n, wrote, stream = [], 0, False, None
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    while True:
        name = f"shard-{len(names):05d}"
        if (out / name / "state.json").is_file():  # renamed into place only when whole: a finished shard
            rows = datasets.load_from_disk(str(out / name)).num_rows
        else:
            if streaming:  # one pass over the stream: skip what the finished shards hold, then take shard by shard
                stream = stream if stream is not None else iter(ds.skip(n))
                chunk = list(itertools.islice(stream, shard_size))
                part = datasets.Dataset.from_list(chunk, features=ds.features) if chunk else None
            else:
                part = ds.select(range(n, min(n + shard_size, len(ds)))) if n < len(ds) else None
            if part is None:
                break
            enc = part.map(fn, batched=True, batch_size=batch_size, remove_columns=part.column_names,
                           features=datasets.Features(feats), keep_in_memory=True, desc=f"pretokenize {name}",
                           new_fingerprint=f"{fingerprint}-{name}")  # not a hash of the tokenizer's weights per shard
            tmp = out / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"  # unique per process and write
            try:
                enc.save_to_disk(str(tmp))
                shutil.rmtree(out / name, ignore_errors=True)  # a folder of that name without state.json is not a shard
                os.replace(tmp, out / name)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            rows, wrote = enc.num_rows, True
        names.append(name)
        n += rows
        if rows < shard_size or (not streaming and n >= len(ds)):
            break
    if n == 0:
        raise DataError(f"dataset {data} holds no images")

    if wrote or not (out / TABLE).is_file() or _table_text_id(out) != key["text_encoder"]:
        vocab = sorted(set().union(*(set(datasets.load_from_disk(str(out / s))["caption"]) for s in names)))
        vocab = [""] + [c for c in vocab if c != ""]  # index 0 is the unconditional prompt
        emb, mask = text_encoder(vocab)  # (U, T, E), (U, T): T is the longest caption, not text.max_length
        save_tree(out / TABLE, {"vocab": vocab, "emb": emb.cpu(), "mask": mask.cpu(), "text_encoder": key["text_encoder"]})
    manifest = {**key, "complete": True, "n": n, "shards": names}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _claim(out: Path, key: dict, overwrite: bool) -> None:
    """Take `out` for this pretokenize: its one-writer lock, then either the shards of the same `key` (a resume),
    or (with `overwrite`) the emptied folder of shards made under another key. Any other content is refused."""
    locks.acquire(out)  # one writer: a second pretokenize into `out` is refused, naming this one's PID
    # --overwrite deletes only a folder this function made: one holding a readable minimuse-shards manifest.
    if (out / MANIFEST).is_file():
        old = _read_manifest(out)  # a manifest of another format or a corrupt one: not ours to delete
        if {k: old.get(k) for k in key} != key:
            if not overwrite:
                diff = next(k for k in key if old.get(k) != key[k])
                raise ShardError(f"{out} holds shards made with another {diff} ({old.get(diff)!r}, now {key[diff]!r}); "
                                 "pass --overwrite to replace them, or choose another --out")
            for p in out.iterdir():  # everything but the lock this run holds
                if p.name == locks.LOCK_NAME:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    elif any(p.name != locks.LOCK_NAME for p in out.iterdir()):
        raise ShardError(f"{out} exists and holds no shards ({MANIFEST} missing); minimuse deletes only folders of "
                         "shards it wrote, even with --overwrite: choose an empty or new --out")
    for tmp in out.glob(f".shard-*{TMP_SUFFIX}"):  # a killed run's half-written shard: no live writer holds it now
        shutil.rmtree(tmp, ignore_errors=True)


def _table_text_id(out: Path):
    try:
        return load_tree(out / TABLE).get("text_encoder")
    except CheckpointError:
        return None


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ShardError(f"{path} holds no pre-tokenized shards ({MANIFEST} missing); run `minimuse pretokenize` "
                         f"--out {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"corrupt {path / MANIFEST}: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ShardError(f"{path / MANIFEST} is not a {FORMAT} manifest")
    return m


# Every field of a finished manifest, with its type: a tampered or truncated one is refused naming the field.
_OPTIONAL_INT, _OPTIONAL_STR = (int, type(None)), (str, type(None))
MANIFEST_FIELDS = {"format": str, "source": str, "split": str, "caption_column": str, "image_size": int,
                   "lowres_size": _OPTIONAL_INT, "shard_size": int, "tokenizer": str, "lowres_tokenizer": _OPTIONAL_STR,
                   "text_encoder": str, "complete": bool, "n": int, "shards": list}
_SHARD_NAME = re.compile(r"shard-\d{5}")  # names pretokenize gives: never a path out of the folder


def _check_manifest(m: dict, path: Path) -> None:
    where = f"{path / MANIFEST}"
    redo = f"re-run `minimuse pretokenize --out {path} --overwrite`"
    for field, kind in MANIFEST_FIELDS.items():
        if field not in m:
            raise ShardError(f"{where} lacks the field '{field}'; it was not written by minimuse pretokenize: {redo}")
        v = m[field]
        if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
            raise ShardError(f"{where}: field '{field}' holds {type(v).__name__} {str(v)[:40]!r}, not the "
                             f"{(kind if isinstance(kind, type) else kind[0]).__name__} pretokenize writes: {redo}")
    if m["n"] < 1 or not m["shards"]:
        raise ShardError(f"{where}: field '{'n' if m['n'] < 1 else 'shards'}' holds no images: {redo}")
    bad = next((s for s in m["shards"] if not isinstance(s, str) or not _SHARD_NAME.fullmatch(s)), None)
    if bad is not None or len(set(m["shards"])) != len(m["shards"]):
        raise ShardError(f"{where}: field 'shards' names {bad!r}, not a shard pretokenize writes (shard-NNNNN, each "
                         f"once): {redo}")


def _read_shard(path: Path, cols: list[str], codebooks: dict) -> tuple[dict, list, list]:
    """One shard's token grids (checked in [0, K) of the tokenizer that reads them), captions and kinds."""
    import datasets
    try:
        part = datasets.load_from_disk(str(path))
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError) as e:
        raise ShardError(f"cannot read shard {path} ({type(e).__name__}); run the same `minimuse pretokenize` again "
                         "or re-run it with --overwrite") from None
    missing = next((c for c in (*cols, "caption") if c not in part.column_names), None)
    if missing:
        raise ShardError(f"shard {path} lacks the column '{missing}'; re-run `minimuse pretokenize --overwrite`")
    arrays = part.with_format("numpy", columns=cols)[:]  # int16 (N, h, w) as stored ("torch" would widen to int64)
    for c in cols:
        a, K = arrays[c], codebooks[c]
        if not np.issubdtype(a.dtype, np.integer) or a.ndim != 3:
            raise ShardError(f"shard {path}: column '{c}' holds {a.dtype} of shape {a.shape}, not (N, h, w) token ids")
        if a.size and (int(a.min()) < 0 or int(a.max()) >= K):  # an id past the codebook would index out of range
            raise ShardError(f"shard {path}: column '{c}' holds token ids in [{int(a.min())}, {int(a.max())}], outside "
                             f"[0, {K}) of the codebook that reads them; re-run `minimuse pretokenize --overwrite`")
    kinds = [str(k) for k in part["kind"]] if "kind" in part.column_names else ["real"] * part.num_rows
    return arrays, list(part["caption"]), kinds


def _read_table(path: Path, text_dim: int) -> dict:
    table = load_tree(path / TABLE)
    vocab, emb, mask = (table.get(k) if isinstance(table, dict) else None for k in ("vocab", "emb", "mask"))
    ok = (isinstance(vocab, list) and all(isinstance(v, str) for v in vocab) and isinstance(emb, torch.Tensor)
          and isinstance(mask, torch.Tensor) and emb.dim() == 3 and emb.is_floating_point() and mask.dim() == 2
          and mask.dtype == torch.bool and emb.shape[0] == mask.shape[0] == len(vocab) and emb.shape[1] == mask.shape[1]
          and emb.shape[2] == text_dim)
    if not ok:
        raise ShardError(f"{path / TABLE} is not the text table pretokenize writes (vocab, emb (U, T, {text_dim}), "
                         "mask (U, T)); run the same `minimuse pretokenize` again")
    return table


def load_shards(path, tokenizer, text_encoder, lowres_tokenizer=None, tokenizer_src=None) -> tuple[dict, tuple]:
    """(pool, text table) from finished shards, after checking that they were made by this run's tokenizer(s) and
    text encoder. The pool has the keys pool.build_token_pool gives, so train_step_inputs reads it unchanged.
    Every field of the manifest and every token id (against the codebook of the tokenizer that reads it) is checked
    as the shards are opened, so a tampered shard is one ShardError naming it, not an index error mid-training."""
    path = Path(path)
    m = _read_manifest(path)
    if not m.get("complete"):
        raise ShardError(f"{path}: pretokenize did not finish; run the same `minimuse pretokenize` again to resume it")
    _check_manifest(m, path)
    made = f"re-run `minimuse pretokenize --out {path} --overwrite` with this run's models, or train with the ones that made them"
    for name, model, ident in (("tokenizer", tokenizer, tokenizer_identity),
                               ("lowres_tokenizer", lowres_tokenizer, tokenizer_identity),
                               ("text_encoder", text_encoder, text_identity)):
        if name == "lowres_tokenizer" and (model is None) != (m.get(name) is None):
            raise ShardError(f"{path} holds {'super-res' if m.get(name) else 'base-model'} shards; this run is a "
                             f"{'super-res' if model is not None else 'base-model'} training. Pretokenize "
                             f"{'with' if model is not None else 'without'} --superres-tokenizer")
        if model is not None and m.get(name) != ident(model):
            src = f" ({tokenizer_src})" if name == "tokenizer" and tokenizer_src else ""
            raise ShardError(f"{path} was tokenized by {name.replace('_', ' ')} {m.get(name)}, but this run's is "
                             f"{ident(model)}{src}; {made}")
    codebooks = {"ids": tokenizer.codebook_size, **({"lowres_ids": lowres_tokenizer.codebook_size} if lowres_tokenizer else {})}
    cols, grids, captions, kinds = list(codebooks), {c: [] for c in codebooks}, [], []
    for s in m["shards"]:
        arrays, caps, ks = _read_shard(path / s, cols, codebooks)
        for c in cols:
            grids[c].append(arrays[c])
        captions += caps
        kinds += ks
    if len(captions) != m["n"]:
        raise ShardError(f"{path / MANIFEST}: field 'n' says {m['n']} images, but its shards hold {len(captions)}; "
                         "run the same `minimuse pretokenize` again")
    table = _read_table(path, text_encoder.cfg.text_dim)
    index = {c: i for i, c in enumerate(table["vocab"])}
    stale = next((c for c in captions if c not in index), None)
    if stale is not None:
        raise ShardError(f"{path / TABLE} lacks the caption {stale!r}: run the same `minimuse pretokenize` again")
    pool = {"key": {k: m[k] for k in ("source", "split", "image_size", "tokenizer", "lowres_tokenizer", "text_encoder", "n")},
            "ids": torch.from_numpy(np.concatenate(grids["ids"])), "vocab": table["vocab"],
            "caption_idx": torch.tensor([index[c] for c in captions]), "kinds": kinds}
    if "lowres_ids" in cols:
        pool["lowres_ids"] = torch.from_numpy(np.concatenate(grids["lowres_ids"]))
    return pool, (table["emb"], table["mask"])
