"""Checkpoints: a directory with `config.json` and `model.safetensors`, written atomically.

The Hugging Face convention (`save_pretrained` / `from_pretrained`), kept tiny: every file is written to a
temporary name and renamed into place, so a kill mid-write never leaves a half checkpoint; loading is
`strict=True`, and a checkpoint saved under another config fails with the first field that differs.
Used by the tokenizer, the transformer and the pipeline; taught in notebooks/02_tokenizer.ipynb.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, of another kind, or saved under another config."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(out_dir, kind: str, config: dict, state_dict: dict[str, torch.Tensor], extra: dict | None = None) -> Path:
    """Save `state_dict` and its config. `kind` names the model type ("tokenizer", "transformer", ...)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{WEIGHTS_NAME}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"kind": kind})
        os.replace(tmp, out_dir / WEIGHTS_NAME)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    meta = {"kind": kind, "config": config, **(extra or {})}
    atomic_write_bytes(out_dir / CONFIG_NAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return out_dir


def read_config(ckpt_dir, kind: str | None = None) -> dict:
    """Return the full config.json of a checkpoint, checking it exists, parses and is of `kind`."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / CONFIG_NAME
    if not ckpt_dir.is_dir() or not path.is_file() or not (ckpt_dir / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"no checkpoint at {ckpt_dir}: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {path}: {e}") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{path} is not a minimuse checkpoint config (no 'config' key)")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{ckpt_dir} holds a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
    return meta


def load_checkpoint(ckpt_dir, kind: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (config.json contents, state_dict on CPU)."""
    meta = read_config(ckpt_dir, kind)
    try:
        state = load_file(Path(ckpt_dir) / WEIGHTS_NAME, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt {Path(ckpt_dir) / WEIGHTS_NAME}: {e}") from None
    return meta, state


def config_diff(saved, current, prefix: str = "") -> str | None:
    """Path of the first field that differs between two nested config dicts, or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for k in sorted(set(saved) | set(current)):
            d = config_diff(saved.get(k, "<missing>"), current.get(k, "<missing>"), f"{prefix}{k}.")
            if d:
                return d
        return None
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # JSON stores tuples as lists
    if norm(saved) != norm(current):
        return f"{prefix.rstrip('.')} (checkpoint {saved!r}, requested {current!r})"
    return None


def check_config(saved: dict, current: dict, ckpt_dir) -> None:
    diff = config_diff(saved, current)
    if diff:
        raise CheckpointError(f"checkpoint {ckpt_dir} was saved with another config: field {diff}")


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], ckpt_dir) -> None:
    """load_state_dict(strict=True), turning PyTorch's long message into one line that names the problem."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape of {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"checkpoint {ckpt_dir} does not fit this model: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
