"""The one training loop every stage runs: the tokenizer (Muse §2.2) and its decoder finetuning (§2.5), the masked
transformer and its baselines (§2.3, §2.6), the super-res stage (§2.4), the Token-Critic and the FID feature net.

A plain `for step in range(start, steps)` that owns what every stage repeats: the learning rate's warmup and decay,
zero_grad, backward through Accelerate, gradient clipping and the optimizer step, the refusal of a non-finite loss,
the log cadence (every log_every steps and the last), the checkpoint cadence (every ckpt_every steps and the last),
the progress bar, the step and checkpoint seconds, and `on_step`. A stage says only what is its own (`Stage`): how
step s builds its batch and computes its loss, what follows the optimizer step, what a log line holds and how to
save. Step s always reads the same batch, so a run killed and resumed from its checkpoint ends bit-identical to one
that never stopped (the run directory, training state and log are runs.py's).
Taught in notebooks/05_training.ipynb.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .runs import JsonlLogger, _last_ckpt, _progress, cosine_lr, set_lr


class Clock:
    """The wall seconds of a training: those of its earlier runs (`elapsed`, read back from the training state) plus
    this run's since t0 (default: now). Log lines and the training state both read it."""

    def __init__(self, elapsed: float = 0.0, t0: float | None = None):
        self.elapsed, self.t0 = elapsed, time.time() if t0 is None else t0

    def __call__(self) -> float:
        return self.elapsed + time.time() - self.t0


@dataclass(frozen=True)
class Schedule:
    """How many steps, the learning rate's warmup and decay, and how often to log and checkpoint."""
    steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    log_every: int
    ckpt_every: int
    grad_clip: float = 0.0  # 0: no clipping
    shape: str = "cosine"   # the decay after warmup: "cosine", "linear" or "wsd" (runs.cosine_lr)
    decay_fraction: float = 0.2


@dataclass(frozen=True)
class Stage:
    """What one stage's training step is, as the functions the loop calls in this order at step s (0-based):

    losses(s)               builds the batch and yields the loss of each micro-batch (one without gradient
                            accumulation); the loop calls backward on each before asking for the next, so only
                            one micro-batch's activations are alive at a time
    after(s, lr) -> record  after the optimizer step: what follows it (EMA, the discriminator's step) and the step's
                            record {"step": s + 1, "loss": ...} that on_step receives
    log(s, lr, record)      at a log step: the record that goes to log.jsonl and the run's history
    save(step)              at a checkpoint step: the training state and the exported model, after `step` steps
    show(record)            the progress bar's postfix at a log step
    """
    losses: Callable[[int], Iterator[torch.Tensor]]
    after: Callable[[int, float], dict]
    log: Callable[[int, float, dict], dict]
    save: Callable[[int], None]
    show: Callable[[dict], dict] = lambda record: {}


def run_loop(stage: Stage, sched: Schedule, start: int, optimizer, accelerator, model, history: list,
             logger: JsonlLogger, what: str, advice: str, out_dir, timing: dict | None = None,
             on_step=None) -> list[dict]:
    """Train from step `start` to sched.steps; append each log record to `history` (and log.jsonl) and return it.

    model: the module whose gradients are clipped. what/advice name the loss and say what to do when it is not
    finite. timing, if given, gains step_s, steps and ckpt_s (where the seconds went, for --report).
    on_step(step, record), if given, runs after every step, after its checkpoint: a stop there leaves that step saved.
    """
    last_ckpt = start  # 0: no checkpoint yet
    bar = _progress(sched.steps, start, accelerator.is_main_process)
    for step in range(start, sched.steps):
        t_step = time.time()
        lr = cosine_lr(step, sched.lr, sched.warmup_steps, sched.steps, sched.min_lr_ratio, sched.shape, sched.decay_fraction)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        for loss in stage.losses(step):
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{what} loss became {loss.item()} at step {step}; "
                                         f"{_last_ckpt(last_ckpt, out_dir)}. {advice}")
            accelerator.backward(loss)  # the one backward of every stage (Accelerate scales it under fp16)
        if sched.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), sched.grad_clip)
        optimizer.step()
        record = stage.after(step, lr)
        if timing is not None:
            timing["step_s"] += time.time() - t_step
            timing["steps"] += 1
        if (step + 1) % sched.log_every == 0 or step + 1 == sched.steps:
            record = stage.log(step, lr, record)
            history.append(record)
            logger.log(record)
            bar.set_postfix(stage.show(record))
        bar.update(1)
        if (step + 1) % sched.ckpt_every == 0 or step + 1 == sched.steps:
            t_ckpt = time.time()
            stage.save(step + 1)
            if timing is not None:
                timing["ckpt_s"] += time.time() - t_ckpt
            last_ckpt = step + 1
        if on_step is not None:
            on_step(step + 1, record)
    bar.close()
    return history
