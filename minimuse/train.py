"""The masked transformers' training (Muse §2.3, §2.6): the base model, the autoregressive baseline, the Token-Critic
and the super-res stage (§2.4), each a `Stage` of the one loop (loop.py).

What is the transformer's own: a batch from the token pool (pool.py), pure in (seed, step); the masked cross-entropy
over train.grad_accum micro-batches; AdamW or Adafactor; an optional weight EMA; a quick sample-and-score every
eval_every steps; the export and its training state (runs.py: atomic, pickle-free, exact resume, FSDP gathered).
train_tokenizer.py holds the tokenizer's stage.
Taught in notebooks/05_training.ipynb; the super-res stage in notebooks/07_superres.ipynb.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from .checkpoint import WEIGHTS_NAME, CheckpointError, identity
from .config import Config
from .critic import TokenCritic, critic_batch, critic_loss
from .limits import check_config_memory
from .locks import releasing
from .peak import write_train_report
from .pipeline import DEFAULT_CHECKPOINT, transformer_class
from .loop import Clock, Schedule, Stage, run_loop
from .measures import quick_eval_fn, quick_superres_eval_fn
from .pool import train_step_inputs
from .runs import (CRITIC_STATE, LOG_NAME, SUPERRES_STATE, TRANSFORMER_STATE, TRANSFORMER_STATE_KEYS, JsonlLogger,
                   _saved, keep_freed_memory, load_full_state, load_training_state, make_accelerator, prepare_run_dir,
                   resolve_precision, seed_everything)
from .scheduler import masked_ce, md4_weight, weighted_masked_ce
from .superres import SuperResTransformer
from .text_encoder import TextEncoder
from .transformer_setup import (TIMING, exporter, load_generator, load_tokenizers,
                                make_optimizer, resume_state, token_data)
from .vqmodel import is_diffusers_vq


# ------------------------------------------------------------------------------------------- transformer training
def micro_batches(batch: int, accum: int) -> list[slice]:
    """The `accum` equal slices of a batch of `batch` rows that gradient accumulation runs one after another."""
    m = batch // accum
    return [slice(k * m, (k + 1) * m) for k in range(accum)]


def _resolve_tokenizer_dir(out_dir: Path, tokenizer_dir, name: str = "tokenizer") -> Path:
    flag = "--" + name.replace("_", "-")
    if tokenizer_dir is not None:  # a path the user typed is used or refused, never silently replaced
        if not (Path(tokenizer_dir) / WEIGHTS_NAME).is_file() and not is_diffusers_vq(tokenizer_dir):
            raise CheckpointError(f"{flag} {tokenizer_dir} is not a tokenizer checkpoint (no {WEIGHTS_NAME} there)")
        return Path(tokenizer_dir)
    for cand in (out_dir / name, DEFAULT_CHECKPOINT / name):
        if (cand / WEIGHTS_NAME).is_file() or is_diffusers_vq(cand):
            return cand
    stage = " --stage superres" if name == "superres_tokenizer" else ""
    raise FileNotFoundError(f"no trained {name.replace('_', ' ')}: pass {flag} DIR, or run "
                            f"`minimuse train-tokenizer{stage} --out {out_dir / name}` first")


def train_superres(cfg: Config, out_dir, resume: bool = False, tokenizer_dir=None, superres_tokenizer_dir=None,
                   on_step=None, overwrite: bool = False, report: bool = False, data=None) -> list[dict]:
    """Train the super-res transformer of `cfg` (Muse §2.4) with the base model's loop and cfg.superres.train: pairs
    of one scene at both sizes (the base tokenizer reads the 2x box-decimated render, the super-res tokenizer the full
    one), the high-res tokens masked with the same cos(pi u / 2) law, loss on them only, 10% of the text dropped to "".
    The low-res tokens are never dropped: the unconditional half of guidance still upsamples the same image, so the
    model never needs to draw a high-res image from nothing, and a dropped grid would only teach it to ignore its
    input. out_dir ends with tokenizer/, superres_tokenizer/, superres/, log.jsonl and the training state."""
    return train_transformer(cfg, out_dir, resume, tokenizer_dir, on_step, overwrite, report, stage="superres",
                             superres_tokenizer_dir=superres_tokenizer_dir, data=data)


def train_critic(cfg: Config, out_dir, generator, resume: bool = False, on_step=None, overwrite: bool = False,
                 data=None) -> list[dict]:
    """Train the Token-Critic of `cfg` (transformer.kind "critic", critic.py) on the samples of the frozen generator
    in the pipeline checkpoint `generator`, with its tokenizer and the base model's loop: the same masked batches,
    the gaps filled by the generator, binary cross-entropy against "differs from the real token" at every position.
    out_dir ends with tokenizer/, critic/, log.jsonl and the training state; copy critic/ beside the generator's
    transformer/ to sample with sampler="critic"."""
    return train_transformer(cfg, out_dir, resume, Path(generator) / "tokenizer", on_step, overwrite, stage="critic",
                             generator=generator, data=data)


@releasing  # the lock prepare_run_dir takes on out_dir is held until training returns or fails
def train_transformer(cfg: Config, out_dir, resume: bool = False, tokenizer_dir=None, on_step=None,
                      overwrite: bool = False, report: bool = False, stage: str = "base",
                      superres_tokenizer_dir=None, data=None, generator=None) -> list[dict]:
    """Train the masked transformer of `cfg` on a trained tokenizer. out_dir ends as a pipeline checkpoint:
    out_dir/tokenizer, out_dir/transformer (safetensors + config), log.jsonl and the training state. Returns the log.

    Muse §2.6: mask r = cos(pi u / 2) of the tokens, predict them from the rest and the text, cross-entropy on the
    masked positions only. Every train.eval_every steps a quick sample-and-score of train.eval_prompts held-out
    prompts (measures.quick_eval_fn) joins the log, so a learner sees faithfulness, not just loss, go up.
    on_step(step, record, model), if given, is called after every step (notebooks draw live curves with it).
    An out_dir holding a run needs resume=True or overwrite=True. report=True ends by writing out_dir/report.json
    (peak.train_report: minutes, steps/s, achieved GFLOP/s and the fraction of the measured matmul peak).
    stage="superres" is `train_superres`: the same loop, on the super-res model, its pairs and cfg.superres.train.
    data, if given, is a folder of shards from `minimuse pretokenize` (shards.py), read instead of the shapes pool;
    they must come from this run's tokenizer(s) and text encoder. train.grad_accum splits each step's batch into
    that many micro-batches, each weighted by its share of the masked tokens, so the step's gradient is the batch's.
    """
    scfg, cls, export_name, state_name = _stage_parts(cfg, stage, generator)
    sr, critic, tc = stage == "superres", stage == "critic", scfg.train
    check_config_memory(cfg, ("tokenizer", "superres_tokenizer", "superres") if sr else ("tokenizer", "transformer"),
                        f"config '{cfg.name}'")  # before any model is built or any file written
    t_enter = time.time()  # the whole command's clock: the token pool and the text table count, as a user waits for them
    keep_freed_memory()
    accelerator = make_accelerator(scfg, compile=tc.torch_compile)
    tok_src = _resolve_tokenizer_dir(Path(out_dir), tokenizer_dir)  # a mistyped --tokenizer fails before any write
    sr_src = _resolve_tokenizer_dir(Path(out_dir), superres_tokenizer_dir, "superres_tokenizer") if sr else None
    out_dir = prepare_run_dir(out_dir, state_name, (export_name,), resume, overwrite, accelerator)
    tokenizer, superres_tokenizer = load_tokenizers(cfg, tok_src, sr_src)
    path = out_dir / state_name  # read (and its keys checked) before anything is written: a bad state refuses early
    keys = {**TRANSFORMER_STATE_KEYS, **({"ema": list} if tc.ema_decay > 0 else {})}
    state = load_training_state(path, keys) if resume else None
    if resume and _saved(state) != cfg.to_dict():
        raise ValueError(f"cannot resume {out_dir}: it was trained with another config; use a new --out")
    seed_everything(tc.seed)
    tokenizer.to(accelerator.device)
    text_encoder = TextEncoder(cfg.text)
    if sr:
        superres_tokenizer.to(accelerator.device)
    pool, table = token_data(cfg, tc, data, tokenizer, superres_tokenizer, text_encoder, tok_src, sr_src,
                              out_dir if accelerator.is_main_process else None)
    for tok, src, name in ((tokenizer, tok_src, "tokenizer"), (superres_tokenizer, sr_src, "superres_tokenizer")):
        if tok is not None and src.resolve() != (out_dir / name).resolve() and accelerator.is_main_process:
            tok.save_pretrained(out_dir / name)  # out_dir becomes a complete (stage) checkpoint, once its data loaded
    data_key = pool["key"] if data is not None else None  # a resume must read the same shards
    gen = load_generator(cfg, generator, accelerator.device) if critic else None
    if critic:  # a resume must use the same generator
        data_key = {"data": data_key, "generator": identity(gen.cfg.__dict__, gen)}

    model = cls.from_config(cfg)
    optimizer = make_optimizer(model, tc, accelerator.mixed_precision)
    ema = [p.detach().clone() for p in model.parameters()] if tc.ema_decay > 0 else None
    # window: (loss, acc) of the steps since the last log line, saved with the state so that a resume between two
    # log steps logs the same average; elapsed: wall seconds of earlier runs of this training; timing: where the
    # seconds went (setup = pool, text table, model; step = forward, backward, optimizer; eval; ckpt), for --report
    start, history, window, elapsed = 0, [], [], 0.0
    timing = dict(TIMING)
    # FSDP (configs/accelerate/fsdp.yaml) shards every Block's weights across the processes: exports and the training
    # state gather them, with the optimizer's state keyed by parameter name (runs.full_state), so a run resumes exactly
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and (ema is not None or tc.eval_every):
        raise ValueError("under FSDP, set train.ema_decay=0 and train.eval_every=0: the EMA and the quick eval are not "
                         "sharded yet")
    if resume:
        start, history, window, elapsed, timing = resume_state(state, path, out_dir, data_key, model, optimizer, ema, fsdp)

    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model, keep_torch_compile=False)  # plain module: its state_dict keys carry no prefix
    if resume and fsdp:
        load_full_state(raw, optimizer.optimizer, state["model"], state["optimizer"])
    if ema is not None:
        ema = [e.to(accelerator.device) for e in ema]  # beside the weights it follows (a GPU's, after prepare)
    logger = JsonlLogger(out_dir / LOG_NAME, resume_step=start if resume else None, enabled=accelerator.is_main_process)
    b = tc.batch_size // accelerator.num_processes
    if b * accelerator.num_processes != tc.batch_size or b % tc.grad_accum:
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by {accelerator.num_processes} processes "
                         f"times train.grad_accum {tc.grad_accum}")
    clock = Clock(elapsed, t_enter)
    save = exporter(accelerator, raw, optimizer, fsdp, cfg, cls, out_dir / state_name, out_dir / export_name,
                     {"history": history, "config": cfg.to_dict(), "ema": ema, "window": window, "data": data_key,
                      "timing": timing}, clock)
    eval_fn = None
    shapes = set(pool["kinds"]) <= set(cfg.data.kinds)  # the quick eval's judge reads the shapes world only
    if tc.eval_every and accelerator.is_main_process and shapes and not critic:
        eval_fn = (quick_superres_eval_fn(cfg, tokenizer, superres_tokenizer, text_encoder, tc.eval_prompts) if sr
                   else quick_eval_fn(cfg, tokenizer, text_encoder, tc.eval_prompts))
    timing["setup_s"] += time.time() - t_enter
    now = {}  # what the last step left: its batch, which the report counts the FLOPs of
    run = _transformer_stage(model, raw, accelerator, scfg, (pool, table, b), gen, sr, cls.MODEL_KIND == "autoregressive",
                             ema, window, eval_fn, timing, clock, save, now)
    run_loop(run, Schedule(tc.steps, tc.lr, tc.warmup_steps, tc.min_lr_ratio, tc.log_every, tc.ckpt_every, tc.grad_clip,
                           tc.lr_schedule, tc.decay_fraction),
             start, optimizer, accelerator, model, history, logger, "transformer",
             f"Lower train.lr (now {tc.lr}) and --resume, or retrain.", out_dir, timing,
             on_step=None if on_step is None else lambda step, record: on_step(step, record, raw))
    if report and accelerator.is_main_process and "batch" in now and not fsdp and not critic:
        write_train_report(out_dir, scfg, raw, timing, clock(), now["batch"], resolve_precision(tc.mixed_precision))
    return history


def _stage_parts(cfg: Config, stage: str, generator):
    """(the config with the stage's TrainConfig as .train, the model class, its export folder, its state file)."""
    if stage not in ("base", "superres", "critic"):
        raise ValueError(f"stage must be 'base', 'superres' or 'critic', got {stage!r}")
    if (stage == "critic") != (cfg.transformer.kind == "critic") or (stage == "critic") != (generator is not None):
        raise ValueError("a critic (transformer.kind=critic, e.g. preset laptop-critic) trains with `minimuse train-critic "
                         "--generator CHECKPOINT`, and train-critic trains critics only")
    if stage == "superres" and cfg.superres is None:
        raise ValueError(f"preset '{cfg.name}' has no super-res stage; choose a preset with a superres section")
    if stage == "superres":  # the stage's own TrainConfig as .train
        return dataclasses.replace(cfg, train=cfg.superres.train), SuperResTransformer, "superres", SUPERRES_STATE
    if stage == "critic":
        return cfg, TokenCritic, "critic", CRITIC_STATE
    return cfg, transformer_class(cfg.transformer.kind), "transformer", TRANSFORMER_STATE


def _transformer_stage(model, raw, accelerator, scfg: Config, data: tuple, gen, sr: bool, ar: bool, ema, window: list,
                       eval_fn, timing: dict, clock, save, now: dict) -> Stage:
    """The transformer's step for the one loop: step s's batch from the token pool (pure in (seed, s)), the masked
    cross-entropy (the critic's binary one, the autoregressive model's next-token one) over train.grad_accum
    micro-batches, then the EMA; log lines average the steps since the last one and add the quick eval."""
    tc, (pool, table, b) = scfg.train, data
    critic = gen is not None
    md4 = tc.loss_weighting == "md4"  # the Config refuses it for the critic and the autoregressive model

    def losses(step: int):
        inputs, labels, text, text_mask, *lowres = (x.to(accelerator.device) for x in train_step_inputs(
            pool, table, scfg, step, b, raw.mask_id, accelerator.process_index, accelerator.num_processes))
        if critic:  # the generator fills the gaps; the labels become "differs from the real token", every position
            rng = torch.Generator().manual_seed(tc.seed * 1_000_003 + step + 7_919)  # its own stream: pure in (seed, step)
            inputs, labels = critic_batch(gen, inputs, labels, text, text_mask, rng)
        if ar:  # the same rows and text dropout; the mask is not used: every token is a target, read from the ones before
            inputs = labels = torch.where(labels == -100, inputs, labels)  # (B, L) the true tokens
        extra = {"lowres_ids": lowres[0]} if sr else {}  # the super-res model reads the base grid beside the text
        now["batch"] = (inputs, labels, text, text_mask, extra)
        model.train()
        masked = labels != -100  # (B, L)
        loss, correct, n_masked = 0.0, 0, masked.sum()
        if md4:  # each masked token weighs md4_weight(its grid's mask share); the batch's loss is the weighted mean
            weights = md4_weight(masked.float().mean(1, keepdim=True)) * masked  # (B, L)
            total = weights.sum()
        for k, sl in enumerate(micro_batches(b, tc.grad_accum)):
            # every micro-batch but the last skips DDP's gradient all-reduce (the loop's backward runs inside no_sync);
            # its loss is weighted by its share of the batch's masked tokens, so the summed gradient is the whole
            # batch's mean (exactly 1 x when A = 1)
            with (accelerator.no_sync(model) if k < tc.grad_accum - 1 else contextlib.nullcontext()):
                with accelerator.autocast():
                    logits = model(inputs[sl], text[sl], text_mask[sl], **{n: v[sl] for n, v in extra.items()})  # (B/A, L, K)
                    if md4:
                        part = weighted_masked_ce(logits, labels[sl], weights[sl], tc.label_smoothing) / total
                    else:
                        part = ((critic_loss(logits, labels[sl]) if critic else masked_ce(logits, labels[sl], tc.label_smoothing))
                                * (masked[sl].sum() / n_masked))
                yield part
            loss = loss + part.detach()
            pred = (logits.detach() > 0).float() if critic else logits.detach().argmax(-1)  # (B/A, L)
            correct += (pred[masked[sl]] == labels[sl][masked[sl]]).sum()
        now.update(loss=loss, acc=correct / n_masked)

    ema_from = round(tc.ema_start * tc.steps)  # an EMA over the last part of the run: before this step it follows the
    # weights exactly, so no early weights (the random init included) are averaged into the model it exports

    def after(step: int, lr: float) -> dict:
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema, raw.parameters()):
                    if step < ema_from:
                        e.copy_(p.detach())
                    else:
                        e.lerp_(p.detach(), 1 - tc.ema_decay)
        loss, acc = now["loss"].item(), now["acc"].item()
        window.append([loss, acc])
        return {"step": step + 1, "loss": loss, "masked_acc": acc}

    def log(step: int, lr: float, record: dict) -> dict:
        seen, accs = zip(*window)  # the losses and accuracies of the steps since the last log line
        record = {"step": step + 1, "loss": sum(seen) / len(seen), "masked_acc": sum(accs) / len(accs),
                  "lr": lr, "elapsed_s": round(clock(), 1)}
        window.clear()  # the list the training state saves: emptied in place
        if eval_fn is not None and tc.eval_every and ((step + 1) % tc.eval_every == 0 or step + 1 == tc.steps):
            t_eval = time.time()
            record.update(eval_fn(raw, step + 1))
            timing["eval_s"] += time.time() - t_eval
        if step + 1 == tc.steps:  # the last log line says where the time went (train --report reads it)
            record["timing"] = {k: round(v, 2) for k, v in timing.items()}
        return record

    def show(r: dict) -> dict:
        return {"loss": f"{r['loss']:.3f}", "acc": f"{r['masked_acc']:.3f}"}

    return Stage(losses, after, log, save, show)
