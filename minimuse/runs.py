"""A training run: its directory guard, its pickle-free training state, its RNG capture and its JSONL log on disk, and
the small pieces every loop shares (Accelerator setup, precision, warmup + cosine learning rate, seeding, PSNR).

Every trainer (tokenizer, base transformer, and the stages after them) keeps its run in one directory. Three rules
make a run survive a careless user and a SIGKILL (docs/SAFETY.md):
- a directory that holds a run is never trained over unless the user says --resume (continue) or --overwrite;
- the training state is one safetensors file with a JSON skeleton (checkpoint.save_tree), renamed into place;
- the log is rewritten atomically, and on resume cut back to the resumed step, so it reads as one straight run.
Taught in notebooks/05_training.ipynb; the one loop that uses it is loop.py, its stages in train.py,
train_tokenizer.py and features.py.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from . import locks
from .checkpoint import TMP_SUFFIX, CheckpointError, _one_line, atomic_write_text, load_state_strict, load_tree, save_tree
from .config import Config

STATE_NAME = "training_state.safetensors"   # the tokenizer's; the transformer's is TRANSFORMER_STATE
TRANSFORMER_STATE = "transformer_state.safetensors"
SUPERRES_STATE = "superres_state.safetensors"
CRITIC_STATE = "critic_state.safetensors"
POOL_NAME = "pool.safetensors"
LOG_NAME = "log.jsonl"


class RunExistsError(CheckpointError):
    """Training into a directory that already holds a run, without --resume or --overwrite."""



def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_training_state(path, state: dict) -> None:
    """One safetensors file (tensors) with a JSON skeleton (the rest), renamed into place: a kill mid-write leaves
    the previous state intact, and loading it can never run code."""
    save_tree(path, state)


# The keys every trainer reads back from its training state, with their types (a number may be an int or a float).
_NUMBER = (int, float)
STATE_KEYS = {"step": int, "model": dict, "optimizer": dict, "rng": dict, "history": list, "config": dict,
              "elapsed_s": _NUMBER}
TOKENIZER_STATE_KEYS = {**STATE_KEYS, "stage": str}
TRANSFORMER_STATE_KEYS = {**STATE_KEYS, "window": list}
RNG_KEYS = ("python", "numpy", "torch", "cuda")


def load_training_state(path, keys: dict | None = None) -> dict:
    """The training state at `path`; with `keys` ({name: type}), checked to hold each of them with its type, so a
    well-formed file that lacks one is one CheckpointError naming the key and the file, not a KeyError mid-resume."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: no {path.name} in {path.parent}; train without --resume first")
    state = load_tree(path)
    if keys is None:
        return state
    redo = "it was not written by this minimuse's trainer: start over with --overwrite"
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training state; {redo}")
    for key, kind in keys.items():
        if key not in state:
            raise CheckpointError(f"{path} lacks the key '{key}' of a training state; {redo}")
        v = state[key]
        if not isinstance(v, kind) or isinstance(v, bool) or (key == "step" and v < 0):
            raise CheckpointError(f"{path}: key '{key}' holds {type(v).__name__} {str(v)[:40]!r}, not a valid "
                                  f"{'step' if key == 'step' else getattr(kind, '__name__', 'number')}; {redo}")
    missing = [k for k in RNG_KEYS if k not in state["rng"]] if "rng" in keys else []
    if missing:
        raise CheckpointError(f"{path} lacks the key 'rng.{missing[0]}' of a training state; {redo}")
    return state


def restore(target, state: dict, key: str, path) -> None:
    """Load state[key] into a module (strictly, dtypes checked) or an optimizer: a part that does not fit this run is
    one CheckpointError naming the key and the file, not PyTorch's multi-line RuntimeError."""
    if isinstance(target, torch.nn.Module):
        load_state_strict(target, state[key], f"{path} (key '{key}')")
        return
    try:
        target.load_state_dict(state[key])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: key '{key}' does not fit this run ({_one_line(e)}); start over with --overwrite") from None


def restore_rng(states: dict, path) -> None:
    """set_rng_states, with a tampered RNG state named by its file instead of a TypeError from `random`."""
    try:
        set_rng_states(states)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: key 'rng' is not an RNG state minimuse wrote ({_one_line(e)}); start over "
                              "with --overwrite") from None


def full_state(model, optimizer) -> tuple[dict, dict]:
    """The whole model's and optimizer's state dicts, on the CPU, of a model sharded by FSDP2 (a collective: every
    process calls it, and the main one receives the gathered tensors). The optimizer's state is keyed by parameter
    name, so a run resumes onto any sharding of the same model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Inverse of full_state: every process reads the whole state and keeps its own shards of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))


def prepare_run_dir(out_dir, state_name: str, outputs: tuple[str, ...], resume: bool, overwrite: bool,
                    accelerator=None) -> Path:
    """Refuse to train over an existing run unless told how: --resume continues it, --overwrite starts over.

    A run is recognised by its training state, its log or its exported model (`outputs`, relative to out_dir).
    Under several processes every one checks, only the main one deletes, and all wait before anyone writes, so no
    process mistakes another's fresh log for an old run. The main process locks out_dir first (locks.py) and holds
    it until the trainer returns (`locks.releasing`) or the process ends: a second writer is refused, naming the PID."""
    main = accelerator is None or accelerator.is_main_process
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ValueError("give --resume (continue the run) or --overwrite (start over), not both")
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"--out {out_dir} is a file, not a directory")
    took = _lock_run(out_dir, main, accelerator)
    try:
        _check_run_dir(out_dir, state_name, outputs, resume, overwrite)
    except BaseException:
        if took:  # a refused run leaves nothing: no lock file, no folder the lock created
            locks.release(out_dir)
        raise
    if not resume and main:
        for n in (state_name, Path(state_name).stem + ".pt", LOG_NAME):
            (out_dir / n).unlink(missing_ok=True)
    if main and out_dir.is_dir():  # temp files of writes a kill cut short: never read, only clutter
        for tmp in [*out_dir.glob(f".*{TMP_SUFFIX}"), *out_dir.glob(f"*/.*{TMP_SUFFIX}")]:
            tmp.unlink(missing_ok=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out_dir


def _lock_run(out_dir: Path, main: bool, accelerator) -> bool:
    """Lock out_dir in the main process; every process raises if it is another's. True if this call took the lock."""
    err, took = None, False
    if main:
        took = not locks.holds(out_dir)
        try:
            locks.acquire(out_dir)
        except locks.FolderLockedError as e:
            err, took = str(e), False
    if accelerator is not None and accelerator.num_processes > 1:  # the others must not wait for a refused main
        from accelerate.utils import broadcast_object_list
        err = broadcast_object_list([err])[0]
    if err:
        raise locks.FolderLockedError(err)
    return took


def _check_run_dir(out_dir: Path, state_name: str, outputs: tuple[str, ...], resume: bool, overwrite: bool) -> None:
    legacy = out_dir / (Path(state_name).stem + ".pt")
    if resume and legacy.is_file() and not (out_dir / state_name).is_file():
        raise CheckpointError(f"{legacy} was written by an older minimuse as a pickle, which is never loaded (it could run "
                              "code); start over with --overwrite")
    if resume and not (out_dir / state_name).is_file():  # refuse before anything is written
        raise CheckpointError(f"cannot resume: no {state_name} in {out_dir}; train without --resume first")
    if resume and (out_dir / LOG_NAME).is_file():
        read_log(out_dir / LOG_NAME)  # a corrupt log is refused now, not after the models are built
    if not resume:
        found = [n for n in (state_name, legacy.name, LOG_NAME, *outputs) if (out_dir / n).exists()]
        if found and not overwrite:
            raise RunExistsError(f"{out_dir} already holds a run ({', '.join(found)}); pass --resume to continue it "
                                 "or --overwrite to start over")


def read_log(path) -> list[tuple[int, str]]:
    """(step, line) of every record of a log.jsonl (a record without a step counts as step 0); a line that is not a
    JSON object with an integer step is one CheckpointError naming the file and the line, before a resume writes."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (byte offset {e.start}); the log is corrupt") from None
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CheckpointError(f"{path} line {i} is not JSON; the log is corrupt") from None
        step = record.get("step", 0) if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):  # valid JSON, but not a record minimuse wrote
            raise CheckpointError(f"{path} line {i} is not a log record (a JSON object with an integer 'step'); the "
                                  "log is corrupt: fix or delete that line, then --resume")
        records.append((step, line))
    return records


class JsonlLogger:
    """One JSON object per line, the whole file rewritten atomically at each record (a log is a few hundred lines).
    On resume, drops lines after the resumed step so the log matches a straight run."""

    def __init__(self, path, resume_step: int | None = None, enabled: bool = True):
        self.path, self.enabled, self.lines = Path(path), enabled, []
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            self.lines = [line for step, line in read_log(self.path) if step <= resume_step]
        atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))

    def log(self, record: dict) -> None:
        if self.enabled:
            self.lines.append(json.dumps(record))
            atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))


def _last_ckpt(step, out_dir) -> str:
    return f"the last good checkpoint (step {step}) is in {out_dir}" if step else "no checkpoint was saved yet"


# ------------------------------------------------------------------------------------------ shared infrastructure
def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse. By default it hands blocks over 128 kB back to the OS, and a training
    step frees and re-allocates the same multi-MB activations every step, page-faulting them back in each time:
    1.25x on the laptop step (docs/TRAINING.md). Process-wide; a no-op where libc is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: allocations below 32 MB (glibc's maximum) come from the heap
        libc.mallopt(-1, 2**31 - 1)   # M_TRIM_THRESHOLD: never shrink the heap
    except (OSError, AttributeError):
        pass


def resolve_precision(mixed_precision: str) -> str:
    """"auto" is bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with oneDNN's AVX-512
    bf16 kernels) and "no" elsewhere, e.g. on AVX2 laptops, where emulated bf16 would be slower than fp32."""
    if mixed_precision != "auto":
        return mixed_precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def make_accelerator(cfg: Config, precision: str | None = None, compile: bool = False) -> Accelerator:
    """One Accelerator per run; mixed precision comes from the config (bf16 autocast keeps fp32 master weights).
    compile=True has Accelerate wrap the model in torch.compile (inductor) when it prepares it."""
    precision = resolve_precision(cfg.train.mixed_precision if precision is None else precision)
    backend = "INDUCTOR" if compile else "NO"
    from accelerate.state import AcceleratorState
    shared = AcceleratorState._shared_state
    plugin = shared.get("dynamo_plugin")
    if shared.get("_mixed_precision", precision) != precision or (plugin is not None and plugin.backend != backend):
        # Accelerate keeps one precision (and compile backend) per process; a notebook that trains a fp32 tokenizer
        # and then a bf16 transformer needs the second. The process group (PartialState) stays.
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(), dynamo_backend=backend)


def cosine_lr(step: int, peak: float, warmup: int, total: int, min_ratio: float = 0.0, shape: str = "cosine",
              decay_fraction: float = 0.2) -> float:
    """Linear warmup to `peak` over `warmup` steps, then a decay to peak * min_ratio at `total`: a half cosine
    (shape "cosine"), a straight line ("linear"), or warmup-stable-decay ("wsd": `peak` until the last
    `decay_fraction` of the steps after warmup, then a straight line)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if shape == "wsd":
        progress = max(0.0, progress - (1 - decay_fraction)) / decay_fraction if decay_fraction > 0 else 0.0
    left = 0.5 * (1 + math.cos(math.pi * progress)) if shape == "cosine" else 1 - progress
    return peak * (min_ratio + (1 - min_ratio) * left)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_indices(step: int, batch_size: int, rank: int = 0, world: int = 1) -> range:
    """Dataset indices for one process at one step: disjoint across processes, a pure function of the step."""
    start = (step * world + rank) * batch_size
    return range(start, start + batch_size)


def load_batch(dataset, indices) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in indices])  # (B, 3, S, S)


def _saved(state: dict) -> dict:
    """The config a run was trained with, read back as a Config: a field added to minimuse since takes its default,
    so a run resumes under a newer version exactly when nothing it trained with has changed."""
    return Config.from_dict(state["config"]).to_dict()


def _progress(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, disable=not enabled or bool(os.environ.get("TQDM_DISABLE")), dynamic_ncols=True)
