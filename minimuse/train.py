"""The masked transformers' training loop (Muse §2.3, §2.6), for the base model and the super-res stage (§2.4).

An explicit `for step in range(...)` on Hugging Face Accelerate: a batch from the token pool (pool.py), the masked
cross-entropy, AdamW or Adafactor, an optional weight EMA, a quick sample-and-score every eval_every steps, and atomic
pickle-free checkpoints with exact resume (runs.py holds those shared pieces; train_tokenizer.py the tokenizer's loop,
re-exported here). Step s always reads the same batch, so the data position is the step.
Taught in notebooks/05_training.ipynb; the super-res stage in notebooks/07_superres.ipynb.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from .bench import write_train_report
from .checkpoint import WEIGHTS_NAME, CheckpointError
from .config import Config
from .critic import TokenCritic, critic_batch, critic_loss
from .eval import quick_eval_fn, quick_superres_eval_fn
from .limits import check_config_memory
from .locks import releasing
from .pipeline import DEFAULT_CHECKPOINT, transformer_class
from .pool import build_token_pool, text_table, train_step_inputs  # noqa: F401 (notebook 05 imports them from here)
from .runs import (CRITIC_STATE, LOG_NAME, SUPERRES_STATE, TRANSFORMER_STATE,
                   TRANSFORMER_STATE_KEYS, JsonlLogger, _last_ckpt, _progress, _saved, cosine_lr,
                   full_state, keep_freed_memory, load_full_state, load_training_state, make_accelerator,
                   prepare_run_dir, resolve_precision, restore, restore_rng, rng_states, save_training_state,
                   seed_everything, set_lr)
from .scheduler import masked_ce
from .shards import identity, load_shards
from .superres import SuperResTransformer
from .text_encoder import TextEncoder
from .tokenizer import Tokenizer
from .train_tokenizer import train_tokenizer  # noqa: F401 (notebooks and tests import it from here)
from .vqmodel import is_diffusers_vq

TIMING_KEYS = ("setup_s", "step_s", "eval_s", "ckpt_s", "steps")  # where a run's seconds went (--report)


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
    prompts (eval.quick_eval_fn) joins the log, so a learner sees faithfulness, not just loss, go up.
    on_step(step, record, model), if given, is called after every step (notebooks draw live curves with it).
    An out_dir holding a run needs resume=True or overwrite=True. report=True ends by writing out_dir/report.json
    (bench.train_report: minutes, steps/s, achieved GFLOP/s and the fraction of the measured matmul peak).
    stage="superres" is `train_superres`: the same loop, on the super-res model, its pairs and cfg.superres.train.
    data, if given, is a folder of shards from `minimuse pretokenize` (shards.py), read instead of the shapes pool;
    they must come from this run's tokenizer(s) and text encoder. train.grad_accum splits each step's batch into
    that many micro-batches, each weighted by its share of the masked tokens, so the step's gradient is the batch's.
    """
    import dataclasses

    if stage not in ("base", "superres", "critic"):
        raise ValueError(f"stage must be 'base', 'superres' or 'critic', got {stage!r}")
    if (stage == "critic") != (cfg.transformer.kind == "critic") or (stage == "critic") != (generator is not None):
        raise ValueError("a critic (transformer.kind=critic, e.g. preset laptop-critic) trains with `minimuse train-critic "
                         "--generator CHECKPOINT`, and train-critic trains critics only")
    if stage == "superres" and cfg.superres is None:
        raise ValueError(f"preset '{cfg.name}' has no super-res stage; choose a preset with a superres section")
    sr = stage == "superres"
    scfg = dataclasses.replace(cfg, train=cfg.superres.train) if sr else cfg  # the stage's own TrainConfig as .train
    critic = stage == "critic"
    cls, export_name, state_name = ((SuperResTransformer, "superres", SUPERRES_STATE) if sr
                                    else (TokenCritic, "critic", CRITIC_STATE) if critic
                                    else (transformer_class(cfg.transformer.kind), "transformer", TRANSFORMER_STATE))
    ar = cls.ARCH == "autoregressive"
    tc = scfg.train
    check_config_memory(cfg, ("tokenizer", "superres_tokenizer", "superres") if sr else ("tokenizer", "transformer"),
                        f"config '{cfg.name}'")  # before any model is built or any file written
    t_enter = time.time()  # the whole command's clock: the token pool and the text table count, as a user waits for them
    keep_freed_memory()
    accelerator = make_accelerator(scfg, compile=tc.torch_compile)
    tok_src = _resolve_tokenizer_dir(Path(out_dir), tokenizer_dir)  # a mistyped --tokenizer fails before any write
    sr_src = _resolve_tokenizer_dir(Path(out_dir), superres_tokenizer_dir, "superres_tokenizer") if sr else None
    out_dir = prepare_run_dir(out_dir, state_name, (export_name,), resume, overwrite, accelerator)
    tokenizer = Tokenizer.from_pretrained(tok_src, cfg)
    hi_tokenizer = Tokenizer.from_pretrained(sr_src, cfg) if sr else None
    if sr and hi_tokenizer.stage != "superres":
        raise CheckpointError(f"--superres-tokenizer {sr_src} is not a super-res stage tokenizer (a pretrained VQModel "
                              "serves the base stage only)")
    path = out_dir / state_name  # read (and its keys checked) before anything is written: a bad state refuses early
    keys = {**TRANSFORMER_STATE_KEYS, **({"ema": list} if tc.ema_decay > 0 else {})}
    state = load_training_state(path, keys) if resume else None
    if resume and _saved(state) != cfg.to_dict():
        raise ValueError(f"cannot resume {out_dir}: it was trained with another config; use a new --out")
    seed_everything(tc.seed)
    tokenizer.to(accelerator.device)
    text_encoder = TextEncoder(cfg.text)
    if sr:
        hi_tokenizer.to(accelerator.device)
    if data is not None:  # tokens read from shards, after checking they are this run's tokenizer's and encoder's
        pool, table = load_shards(data, hi_tokenizer if sr else tokenizer, text_encoder, tokenizer if sr else None,
                                  tokenizer_src=sr_src if sr else tok_src)
        grid = (cfg.superres.image_size // hi_tokenizer.downsample,) * 2 if sr else cfg.grid
        for name, want in (("ids", grid), ("lowres_ids", cfg.grid)):
            if name in pool and tuple(pool[name].shape[1:]) != tuple(want):
                raise ValueError(f"shards in {data} hold {tuple(pool[name].shape[1:])} {name} grids; preset "
                                 f"'{cfg.name}' trains on {tuple(want)} (pretokenize at its image sizes)")
        if tc.kind_weights and not set(pool["kinds"]) <= set(cfg.data.kinds):
            raise ValueError(f"train.kind_weights weighs caption kinds, but the shards in {data} have none; set "
                             "train.kind_weights=[] to train on them")
    elif sr:
        pool = build_token_pool(cfg, hi_tokenizer, cfg.data.pool_size, out_dir if accelerator.is_main_process else None,
                                lowres_tokenizer=tokenizer)
    else:
        pool = build_token_pool(cfg, tokenizer, cfg.data.pool_size, out_dir if accelerator.is_main_process else None)
    if data is None:
        table = text_table(text_encoder, pool["vocab"])
    for tok, src, name in ((tokenizer, tok_src, "tokenizer"), (hi_tokenizer, sr_src, "superres_tokenizer")):
        if tok is not None and src.resolve() != (out_dir / name).resolve() and accelerator.is_main_process:
            tok.save_pretrained(out_dir / name)  # out_dir becomes a complete (stage) checkpoint, once its data loaded
    data_key = pool["key"] if data is not None else None  # a resume must read the same shards
    gen = None
    if critic:  # the frozen generator whose samples the critic learns to judge; a resume must use the same one
        gen = transformer_class("masked").from_pretrained(Path(generator) / "transformer").to(accelerator.device)
        if (gen.codebook_size, gen.grid, gen.text_dim) != (cfg.tokenizer.codebook_size, cfg.grid, cfg.text.text_dim):
            raise ValueError(f"the generator {generator} draws {gen.grid} grids of K={gen.codebook_size} codes from "
                             f"{gen.text_dim}-d text; preset '{cfg.name}' describes {cfg.grid}, K="
                             f"{cfg.tokenizer.codebook_size}, {cfg.text.text_dim}-d")
        data_key = {"data": data_key, "generator": identity(gen.cfg.__dict__, gen)}

    model = cls.from_config(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tc.optimizer == "adafactor":
        from transformers.optimization import Adafactor
        optimizer = Adafactor(groups, lr=tc.lr, relative_step=False, scale_parameter=False, warmup_init=False)
    else:
        # fused: one kernel for all parameters instead of a dozen elementwise passes per step (CPU and CUDA alike)
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, fused=True)
    ema = [p.detach().clone() for p in model.parameters()] if tc.ema_decay > 0 else None

    # window: (loss, acc) of the steps since the last log line, saved with the state so that a resume between two
    # log steps logs the same average; elapsed: wall seconds of earlier runs of this training; timing: where the
    # seconds went (setup = pool, text table, model; step = forward, backward, optimizer; eval; ckpt), for --report
    start, history, window, elapsed = 0, [], [], 0.0
    timing = {"setup_s": 0.0, "step_s": 0.0, "eval_s": 0.0, "ckpt_s": 0.0, "steps": 0}
    # FSDP (configs/accelerate/fsdp.yaml) shards every Block's weights across the processes: exports and the training
    # state gather them, with the optimizer's state keyed by parameter name (runs.full_state), so a run resumes exactly
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and (ema is not None or tc.eval_every):
        raise ValueError("under FSDP, set train.ema_decay=0 and train.eval_every=0: the EMA and the quick eval are not "
                         "sharded yet")
    if resume:
        if state.get("data") != data_key:
            raise ValueError(f"cannot resume {out_dir}: it was trained on other data "
                             f"({(state.get('data') or {}).get('source', 'the shapes pool')}); pass the same --data")
        restore(model, state, "model", path)
        if not fsdp:  # FSDP's optimizer state loads onto the shards, after prepare
            restore(optimizer, state, "optimizer", path)
        if ema is not None:
            if [tuple(e.shape) for e in ema] != [tuple(getattr(s, "shape", ())) for s in state["ema"]]:
                raise CheckpointError(f"{path}: key 'ema' does not hold this model's weights; start over with --overwrite")
            for e, s in zip(ema, state["ema"]):
                e.copy_(s)
        start, history, window, elapsed = state["step"], state["history"], state["window"], state["elapsed_s"]
        timing = state.get("timing", timing)
        if not isinstance(timing, dict) or not all(isinstance(timing.get(k), (int, float)) for k in TIMING_KEYS):
            raise CheckpointError(f"{path}: key 'timing' is not the timing minimuse wrote; start over with --overwrite")
        restore_rng(state["rng"], path)

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

    def export(step: int):
        """Save what a user loads (EMA weights if enabled) and, beside it, everything needed to resume."""
        accelerator.wait_for_everyone()
        weights, moments = full_state(raw, optimizer.optimizer) if fsdp else (raw.state_dict(), optimizer.state_dict())
        if not accelerator.is_main_process:
            return
        save_training_state(out_dir / state_name, {
            "step": step, "model": weights, "optimizer": moments, "rng": rng_states(),
            "history": history, "config": cfg.to_dict(), "ema": ema, "window": window, "data": data_key,
            "elapsed_s": elapsed + time.time() - t0, "timing": timing})
        if fsdp:
            shadow = cls.from_config(cfg)
            shadow.load_state_dict(weights)
            shadow.save_pretrained(out_dir / export_name, cfg)
            return
        if ema is None:
            raw.save_pretrained(out_dir / export_name, cfg)
        else:
            shadow = cls.from_config(cfg)
            for p, e in zip(shadow.parameters(), ema):
                p.data.copy_(e)
            shadow.save_pretrained(out_dir / export_name, cfg)

    eval_fn = None
    shapes = set(pool["kinds"]) <= set(cfg.data.kinds)  # the quick eval's judge reads the shapes world only
    if tc.eval_every and accelerator.is_main_process and shapes and not critic:
        eval_fn = (quick_superres_eval_fn(cfg, tokenizer, hi_tokenizer, text_encoder, tc.eval_prompts) if sr
                   else quick_eval_fn(cfg, tokenizer, text_encoder, tc.eval_prompts))
    t0, last_ckpt = t_enter, start if resume else None
    timing["setup_s"] += time.time() - t_enter
    last_batch = None  # the report counts the FLOPs of the last step's batch
    bar = _progress(tc.steps, start, accelerator.is_main_process)
    for step in range(start, tc.steps):
        t_step = time.time()
        lr = cosine_lr(step, tc.lr, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        set_lr(optimizer, lr)
        inputs, labels, text, text_mask, *lowres = (x.to(accelerator.device) for x in train_step_inputs(
            pool, table, scfg, step, b, raw.mask_id, accelerator.process_index, accelerator.num_processes))
        if critic:  # the generator fills the gaps; the labels become "differs from the real token", every position
            rng = torch.Generator().manual_seed(tc.seed * 1_000_003 + step + 7_919)  # its own stream: pure in (seed, step)
            inputs, labels = critic_batch(gen, inputs, labels, text, text_mask, rng)
        if ar:  # the same rows and text dropout; the mask is not used: every token is a target, read from the ones before
            inputs = labels = torch.where(labels == -100, inputs, labels)  # (B, L) the true tokens
        extra = {"lowres_ids": lowres[0]} if sr else {}  # the super-res model reads the base grid beside the text
        last_batch = (inputs, labels, text, text_mask, extra)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        masked = labels != -100
        loss, correct, n_masked = 0.0, 0, masked.sum()
        for k, sl in enumerate(micro_batches(b, tc.grad_accum)):
            # every micro-batch but the last skips DDP's gradient all-reduce; its loss is weighted by its share of
            # the batch's masked tokens, so the summed gradient is the whole batch's mean (exactly 1 x when A = 1)
            with (accelerator.no_sync(model) if k < tc.grad_accum - 1 else contextlib.nullcontext()):
                with accelerator.autocast():
                    logits = model(inputs[sl], text[sl], text_mask[sl], **{n: v[sl] for n, v in extra.items()})  # (B/A, L, K)
                    part = ((critic_loss(logits, labels[sl]) if critic else masked_ce(logits, labels[sl], tc.label_smoothing))
                            * (masked[sl].sum() / n_masked))
                if not torch.isfinite(part):
                    raise FloatingPointError(f"transformer loss became {part.item()} at step {step}; "
                                             f"{_last_ckpt(last_ckpt, out_dir)}. Lower train.lr (now {tc.lr}) and "
                                             "--resume, or retrain.")
                accelerator.backward(part)
            loss = loss + part.detach()
            pred = (logits.detach() > 0).float() if critic else logits.detach().argmax(-1)  # (B/A, L)
            correct += (pred[masked[sl]] == labels[sl][masked[sl]]).sum()
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema, raw.parameters()):
                    e.lerp_(p.detach(), 1 - tc.ema_decay)
        acc = (correct / n_masked).item()
        window.append([loss.item(), acc])
        record = {"step": step + 1, "loss": loss.item(), "masked_acc": acc}
        timing["step_s"] += time.time() - t_step
        timing["steps"] += 1
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps:
            losses, accs = zip(*window)
            record = {"step": step + 1, "loss": sum(losses) / len(losses), "masked_acc": sum(accs) / len(accs),
                      "lr": lr, "elapsed_s": round(elapsed + time.time() - t0, 1)}
            window = []
            if eval_fn is not None and tc.eval_every and ((step + 1) % tc.eval_every == 0 or step + 1 == tc.steps):
                t_eval = time.time()
                record.update(eval_fn(raw, step + 1))
                timing["eval_s"] += time.time() - t_eval
            if step + 1 == tc.steps:  # the last log line says where the time went (train --report reads it)
                record["timing"] = {k: round(v, 2) for k, v in timing.items()}
            history.append(record)
            logger.log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['masked_acc']:.3f}")
        bar.update(1)
        if (step + 1) % tc.ckpt_every == 0 or step + 1 == tc.steps:
            t_ckpt = time.time()
            export(step + 1)
            timing["ckpt_s"] += time.time() - t_ckpt
            last_ckpt = step + 1
        if on_step is not None:  # after the checkpoint, as in train_tokenizer: a stop here leaves this step saved
            on_step(step + 1, record, raw)
    bar.close()
    if report and accelerator.is_main_process and last_batch is not None and not fsdp and not critic:
        write_train_report(out_dir, scfg, raw, timing, elapsed + time.time() - t0, last_batch, resolve_precision(tc.mixed_precision))
    return history

