"""A training run on disk: its directory guard, its pickle-free training state, its RNG capture and its JSONL log.

Every trainer (tokenizer, base transformer, and the stages after them) keeps its run in one directory. Three rules
make a run survive a careless user and a SIGKILL (see the README's "Safety and reliability"):
- a directory that holds a run is never trained over unless the user says --resume (continue) or --overwrite;
- the training state is one safetensors file with a JSON skeleton (checkpoint.save_tree), renamed into place;
- the log is rewritten atomically, and on resume cut back to the resumed step, so it reads as one straight run.
Taught in notebooks/05_training.ipynb; the loops that use it are in train.py.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from .checkpoint import TMP_SUFFIX, CheckpointError, atomic_write_text, load_tree, save_tree

STATE_NAME = "training_state.safetensors"   # the tokenizer's; the transformer's is TRANSFORMER_STATE
TRANSFORMER_STATE = "transformer_state.safetensors"
SUPERRES_STATE = "superres_state.safetensors"
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


def load_training_state(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: no {path.name} in {path.parent}; train without --resume first")
    return load_tree(path)


def prepare_run_dir(out_dir, state_name: str, outputs: tuple[str, ...], resume: bool, overwrite: bool,
                    accelerator=None) -> Path:
    """Refuse to train over an existing run unless told how: --resume continues it, --overwrite starts over.

    A run is recognised by its training state, its log or its exported model (`outputs`, relative to out_dir).
    Under several processes every one checks, only the main one deletes, and all wait before anyone writes, so no
    process mistakes another's fresh log for an old run."""
    main = accelerator is None or accelerator.is_main_process
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ValueError("give --resume (continue the run) or --overwrite (start over), not both")
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"--out {out_dir} is a file, not a directory")
    legacy = out_dir / (Path(state_name).stem + ".pt")
    if resume and legacy.is_file() and not (out_dir / state_name).is_file():
        raise CheckpointError(f"{legacy} was written by an older minimuse as a pickle, which is never loaded (it could run "
                              "code); start over with --overwrite")
    if resume and not (out_dir / state_name).is_file():  # refuse before anything is written
        raise CheckpointError(f"cannot resume: no {state_name} in {out_dir}; train without --resume first")
    if not resume:
        found = [n for n in (state_name, legacy.name, LOG_NAME, *outputs) if (out_dir / n).exists()]
        if found and not overwrite:
            raise RunExistsError(f"{out_dir} already holds a run ({', '.join(found)}); pass --resume to continue it "
                                 "or --overwrite to start over")
        if main:
            for n in (state_name, legacy.name, LOG_NAME):
                (out_dir / n).unlink(missing_ok=True)
    if main and out_dir.is_dir():  # temp files of writes a kill cut short: never read, only clutter
        for tmp in [*out_dir.glob(f".*{TMP_SUFFIX}"), *out_dir.glob(f"*/.*{TMP_SUFFIX}")]:
            tmp.unlink(missing_ok=True)
    if accelerator is not None:  # (no mkdir here: the first atomic write creates the directory, a refused run none)
        accelerator.wait_for_everyone()
    return out_dir


class JsonlLogger:
    """One JSON object per line, the whole file rewritten atomically at each record (a log is a few hundred lines).
    On resume, drops lines after the resumed step so the log matches a straight run."""

    def __init__(self, path, resume_step: int | None = None, enabled: bool = True):
        self.path, self.enabled, self.lines = Path(path), enabled, []
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            for i, line in enumerate(self.path.read_text().splitlines(), 1):
                try:
                    step = json.loads(line).get("step", 0) if line else None
                except json.JSONDecodeError:
                    raise CheckpointError(f"{self.path} line {i} is not JSON; the log is corrupt") from None
                if step is not None and step <= resume_step:
                    self.lines.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))

    def log(self, record: dict) -> None:
        if self.enabled:
            self.lines.append(json.dumps(record))
            atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))


def _last_ckpt(step, out_dir) -> str:
    return f"the last good checkpoint (step {step}) is in {out_dir}" if step else "no checkpoint was saved yet"
