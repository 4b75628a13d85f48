"""Everything minimuse writes to or reads from disk: checkpoints, training states, logs, images.

Checkpoints follow the Hugging Face convention (`save_pretrained` / `from_pretrained`): a directory with
`config.json` and `model.safetensors`, loaded `strict=True`; a checkpoint saved under another config fails with the
first field that differs, and one holding a NaN or inf fails naming the tensor. Two rules hold for every file:
- every write is atomic (a unique temp file in the same directory, fsync, rename, fsync of the directory), so a kill
  mid-write leaves the old file or the new one, never half of one;
- nothing read is unpickled: tensors come from safetensors and everything else from JSON. Training states and the
  token pool are nested dicts, stored as one safetensors file whose metadata holds the JSON skeleton (`save_tree`).
Used by every trainer, the pipeline and the CLI; taught in notebooks/02_tokenizer.ipynb.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import secrets
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from .config import Config, ConfigError
from .limits import check_config_memory

CONFIG_NAME = "config.json"
TMP_SUFFIX = ".tmp"  # atomic writes go through hidden `.NAME.PID.RANDOM.tmp` files in the target's directory
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, of another kind, or saved under another config."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a unique temp file in the same directory, fsync, rename over `path`, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name unique per process and call; O_EXCL never reuses one. Mode 0o666 minus the umask, like open(): mkstemp's
    # 0o600 would make every checkpoint unreadable to the user's group on a shared machine.
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
    try:  # the rename itself survives a power cut only once the directory entry is on disk
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems refuse to fsync a directory; the rename is still atomic
        pass
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_save_image(path, image) -> Path:
    """Save a PIL image (or a uint8 (H, W, 3) array) as PNG through the atomic writer."""
    if not hasattr(image, "save"):
        from PIL import Image
        image = Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def check_finite(state: dict[str, torch.Tensor], source) -> None:
    """Refuse weights holding NaN or inf, naming the first such tensor: they would draw plausible-looking noise."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{source} holds non-finite values (NaN or inf) in tensor '{k}'; retrain or use another checkpoint")


def save_checkpoint(out_dir, kind: str, config: dict, state_dict: dict[str, torch.Tensor], extra: dict | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Save `state_dict` and its config. `kind` names the model type ("tokenizer", "transformer", ...). With `dtype`
    (torch.float16 for shipped checkpoints that must fit data/'s budget), floating tensors are stored in it; loading
    casts them back to the model's dtype."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().to("cpu").contiguous()
               for k, v in state_dict.items()}
    atomic_write_bytes(out_dir / WEIGHTS_NAME, st_save(tensors, metadata={"kind": kind}))
    atomic_write_json(out_dir / CONFIG_NAME, {"kind": kind, "config": config, **(extra or {})})
    return out_dir


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_checkpoint(name_or_path) -> Path:
    """A local folder as it is; otherwise a Hugging Face Hub repo id ("owner/name"), fetched with
    huggingface_hub.snapshot_download into its cache, so a checkpoint folder pushed to the Hub loads by name as
    ModelHubMixin's from_pretrained does (same config.json + model.safetensors layout). A path whose first folder
    exists here (runs/typo) is a local path, never a repo id. Under HF_HUB_OFFLINE=1 (as `make demo` and the tests
    run) only the local cache is read; otherwise a typed repo id is downloaded, and nothing else ever is."""
    p = Path(name_or_path)
    if p.exists() or not _REPO_ID.fullmatch(str(name_or_path)) or Path(p.parts[0]).exists():
        return p
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors"]))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as e:
        raise CheckpointError(f"no checkpoint at {name_or_path}: no such local folder, and no such Hub repo in the "
                              f"Hugging Face cache ({type(e).__name__}; with network and HF_HUB_OFFLINE unset it is "
                              "fetched)") from None


def read_config(ckpt_dir, kind: str | None = None) -> dict:
    """Return the full config.json of a checkpoint, checking it exists, parses and is of `kind`."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    path = ckpt_dir / CONFIG_NAME
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint {ckpt_dir} is a file; give the directory that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    if not ckpt_dir.is_dir() or not path.is_file() or not (ckpt_dir / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"no checkpoint at {ckpt_dir}: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{path} is not a minimuse checkpoint config (no 'config' key)")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{ckpt_dir} holds a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
    return meta


def saved_config(ckpt_dir, kind: str, parts):
    """The Config in a checkpoint's config.json, checked before a single weight is read or allocated: an invalid field
    or models (`parts`, see config_numel) too large for this machine is one CheckpointError naming the file."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    path = Path(ckpt_dir) / CONFIG_NAME
    meta = read_config(ckpt_dir, kind)
    try:
        cfg = Config.from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None
    try:
        check_config_memory(cfg, parts, str(path))
    except ConfigError as e:  # a checkpoint's fault, not the user's config: the class its loaders raise
        raise CheckpointError(str(e)) from None
    return cfg


def load_checkpoint(ckpt_dir, kind: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (config.json contents, state_dict on CPU)."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    meta = read_config(ckpt_dir, kind)
    try:
        state = load_file(Path(ckpt_dir) / WEIGHTS_NAME, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt {Path(ckpt_dir) / WEIGHTS_NAME}: {_one_line(e)}") from None
    check_finite(state, Path(ckpt_dir) / WEIGHTS_NAME)
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
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None) if isinstance(state, dict) else ""
    if bad is not None:
        raise CheckpointError(f"checkpoint {ckpt_dir} holds no weights{f' under {bad!r}' if bad else ''}: not a state "
                              "dict of tensors; retrain or use another checkpoint")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    # load_state_dict casts silently: int32 ids where a float weight belongs would load as garbage weights. Floats of
    # another width (the fp16 of shipped checkpoints) are cast back on purpose.
    kinds = [k for k in own if k in state and _dtype_kind(own[k]) != _dtype_kind(state[k])]
    if kinds:
        k = kinds[0]
        raise CheckpointError(f"checkpoint {ckpt_dir} holds tensor '{k}' as {state[k].dtype}, but the model's is "
                              f"{own[k].dtype}: the file was not written by minimuse; retrain or use another checkpoint")
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


def _dtype_kind(t: torch.Tensor) -> str:
    return ("bool" if t.dtype == torch.bool else "complex" if t.is_complex() else "float" if t.is_floating_point()
            else "integer")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


# ---------------------------------------------------------------------------------------------------------------------
# Nested state (training states, the token pool) without pickle: tensors and arrays go into safetensors under their
# path in the tree; the rest (ints, floats, strings, lists, tuples, dicts with int keys) is a JSON skeleton stored in
# the same file's metadata, so one atomic rename writes the whole state.

def _encode(obj, path: str, tensors: dict):
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):  # numpy's RNG key is uint32, which safetensors cannot hold as such
        tensors[path] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}  # optimizer: int keys
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} without pickle")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__items__"]}
    if "__float__" in obj:
        return float(obj["__float__"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_tree(path, tree: dict) -> Path:
    """Store a nested dict of tensors, arrays and JSON values as one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(tree, "", tensors)
    return atomic_write_bytes(path, st_save(tensors, metadata={"minimuse_tree": json.dumps(skeleton, allow_nan=False)}))


def load_tree(path) -> dict:
    """Inverse of save_tree. Reads tensors with safetensors and the rest with JSON: no code in the file can run."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a file written by minimuse")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        skeleton = json.loads(meta["minimuse_tree"])
        return _decode(skeleton, tensors)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is corrupt or not a minimuse state file ({_one_line(e)})") from None


# ----------------------------------------------------- which model made these tokens: shards and the pool record it
def identity(config, module: torch.nn.Module) -> str:
    """A short sha256 of a model's config and every tensor of its state (name, dtype, shape, bytes), in name order:
    equal exactly when the two models map the same inputs to the same outputs."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def tokenizer_identity(tokenizer) -> str:
    """identity of a tokenizer: which ids its images become. Shards and the token pool are keyed by it."""
    cfg = tokenizer.config  # a TokenizerConfig, or a diffusers VQModel's config dict (vqmodel.py), whose "_" keys
    # say where and by which version it was loaded, not what it computes
    cfg = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {k: v for k, v in cfg.items() if not k.startswith("_")}
    return identity(cfg, tokenizer)


def text_identity(text_encoder) -> str:
    return identity({"encoder": text_encoder.name, "max_length": text_encoder.cfg.max_length}, text_encoder.model)
