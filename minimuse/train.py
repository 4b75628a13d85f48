"""Training loops: explicit `for step in range(...)` on Hugging Face Accelerate, with checkpointing and exact resume.

The shared pieces (Accelerator setup, warmup + cosine learning rate, a JSONL logger, the run-directory guard, an
atomic pickle-free training-state file holding model, optimizer, RNG states and step) are small functions every loop
reuses. The tokenizer loop
follows Muse §2.2 (VQGAN: reconstruction + commitment, optional hinge GAN); the transformer loops follow §2.3 and §2.6.
Data is addressed by (seed, index), and step s always reads indices [s*B, (s+1)*B), so the data position is the step.
Taught in notebooks/02_tokenizer.ipynb (tokenizer) and notebooks/04_training.ipynb (transformer).
"""
from __future__ import annotations

import ctypes
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpoint import CheckpointError
from .config import Config
from .pool import build_token_pool, text_table, train_step_inputs  # noqa: F401 (notebook 05 imports them from here)
from .runs import (LOG_NAME, POOL_NAME, STATE_NAME, SUPERRES_STATE, TRANSFORMER_STATE, JsonlLogger, _last_ckpt,  # noqa: F401
                   load_training_state, prepare_run_dir, rng_states, save_training_state, set_rng_states)

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


def cosine_lr(step: int, peak: float, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to `peak` over `warmup` steps, then cosine decay to peak * min_ratio at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1], over the whole batch."""
    mse = (recon.clamp(0, 1) - target).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _saved(state: dict) -> dict:
    """The config a run was trained with, read back as a Config: a field added to minimuse since takes its default,
    so a run resumes under a newer version exactly when nothing it trained with has changed."""
    return Config.from_dict(state["config"]).to_dict()


def _progress(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, disable=not enabled or bool(os.environ.get("TQDM_DISABLE")), dynamic_ncols=True)


# --------------------------------------------------------------------------------------------- tokenizer training
def train_tokenizer(cfg: Config, out_dir, resume: bool = False, stage: str = "base", on_step=None,
                    overwrite: bool = False, finetune_from=None) -> list[dict]:
    """Train the base (or super-res) tokenizer of `cfg`; checkpoints and log.jsonl go to out_dir. Returns the log.

    on_step(step, record) is called after every step with the step's loss and PSNR (and, at log steps, the logged
    record), e.g. for a live plot in a notebook. An out_dir holding a run needs resume=True or overwrite=True.
    finetune_from (a tokenizer checkpoint of this stage) is `finetune-decoder` (Muse §2.5): its encoder and codebook
    are loaded and frozen, so every token keeps its meaning, and a decoder of cfg.superres.decoder's size is trained
    from scratch for cfg.superres.decoder.steps on the reconstruction loss.
    """
    from .data import ShapesDataset  # the data module is only needed once training starts
    from .tokenizer import PatchDiscriminator, Tokenizer, codebook_usage, hinge_d_loss, hinge_g_loss, perplexity

    if stage not in ("base", "superres"):
        raise ValueError(f"stage must be 'base' or 'superres', got {stage!r}")
    if stage == "superres" and cfg.superres is None:
        raise ValueError(f"preset '{cfg.name}' has no super-res stage; choose a preset with a superres section")
    tcfg = cfg.tokenizer if stage == "base" else cfg.superres.tokenizer
    size = cfg.data.image_size if stage == "base" else cfg.superres.image_size
    frozen = None
    if finetune_from is not None:
        import dataclasses
        if stage != "superres":
            raise ValueError("finetune-decoder finetunes the super-res stage's decoder, the one the cascade draws with")
        frozen = Tokenizer.from_pretrained(finetune_from, cfg)  # refuses a tokenizer of another stage or architecture
        dc = cfg.superres.decoder
        tcfg = dataclasses.replace(tcfg, decoder_channels=dc.channels, decoder_res_blocks=dc.res_blocks, steps=dc.steps,
                                   batch_size=dc.batch_size, lr=dc.lr, disc_weight=0.0)
    # "auto" was measured for the transformer only (docs/TRAINING.md); the tokenizer keeps fp32 under it
    accelerator = make_accelerator(cfg, "no" if cfg.train.mixed_precision == "auto" else None)
    out_dir = prepare_run_dir(out_dir, STATE_NAME, ("model.safetensors",), resume, overwrite, accelerator)
    seed_everything(cfg.train.seed)
    model = Tokenizer(tcfg)
    model.full_config, model.stage = cfg, stage
    trained = model.parameters()
    if frozen is not None:
        import dataclasses
        # the saved config describes the bigger decoder, so from_pretrained builds it; the encoder and codebook are the
        # frozen tokenizer's, bit for bit
        model.full_config = dataclasses.replace(cfg, superres=dataclasses.replace(cfg.superres, tokenizer=tcfg))
        model.encoder.load_state_dict(frozen.encoder.state_dict())
        model.quantizer.load_state_dict(frozen.quantizer.state_dict())
        model.encoder.requires_grad_(False)
        model.quantizer.requires_grad_(False)
        trained = model.decoder.parameters()
    optimizer = torch.optim.Adam(trained, lr=tcfg.lr, betas=tcfg.betas)
    use_gan = tcfg.disc_weight > 0
    disc = PatchDiscriminator() if use_gan else None
    disc_opt = torch.optim.Adam(disc.parameters(), lr=tcfg.lr, betas=tcfg.betas) if use_gan else None

    start, history, elapsed = 0, [], 0.0  # elapsed: wall seconds of earlier runs of this training
    if resume:
        state = load_training_state(out_dir / STATE_NAME)
        if _saved(state) != cfg.to_dict() or state["stage"] != stage:
            raise ValueError(f"cannot resume {out_dir}: it was trained with another config or stage; use a new --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if use_gan:
            disc.load_state_dict(state["disc"])
            disc_opt.load_state_dict(state["disc_optimizer"])
        start, history, elapsed = state["step"], state["history"], state["elapsed_s"]
        set_rng_states(state["rng"])

    model, optimizer = accelerator.prepare(model, optimizer)
    if use_gan:
        disc, disc_opt = accelerator.prepare(disc, disc_opt)
    raw = accelerator.unwrap_model(model)

    train_set = ShapesDataset(size=size, seed=cfg.data.train_seed, length=tcfg.steps * tcfg.batch_size * accelerator.num_processes)
    # A fixed held-out batch for usage and perplexity: the eval seed is never trained on.
    monitor = load_batch(ShapesDataset(size=size, seed=cfg.data.eval_seed, length=256), range(256)).to(accelerator.device)
    logger = JsonlLogger(out_dir / LOG_NAME, resume_step=start if resume else None, enabled=accelerator.is_main_process)

    def checkpoint(step: int):
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        save_training_state(out_dir / STATE_NAME, {
            "step": step, "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_states(),
            "history": history, "config": cfg.to_dict(), "stage": stage, "elapsed_s": elapsed + time.time() - t0,
            **({"disc": accelerator.unwrap_model(disc).state_dict(), "disc_optimizer": disc_opt.state_dict()} if use_gan else {})})
        raw.save_pretrained(out_dir)  # the user-facing checkpoint, written after the state so both describe `step`

    t0, last_ckpt = time.time(), start if resume else None
    bar = _progress(tcfg.steps, start, accelerator.is_main_process)
    for step in range(start, tcfg.steps):
        lr = cosine_lr(step, tcfg.lr, tcfg.warmup_steps, tcfg.steps, cfg.train.min_lr_ratio)
        set_lr(optimizer, lr)
        images = load_batch(train_set, batch_indices(step, tcfg.batch_size, accelerator.process_index,
                                                     accelerator.num_processes)).to(accelerator.device)
        model.train()
        if frozen is not None:  # eval mode: no EMA codebook update, no dead-code restart; the tokens stay the same
            raw.encoder.eval()
            raw.quantizer.eval()
        with accelerator.autocast():
            recon, aux = model(images)
            loss = aux["loss"]
            gan_on = use_gan and step >= tcfg.disc_start
            if gan_on:
                loss = loss + tcfg.disc_weight * hinge_g_loss(disc(recon))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"tokenizer loss became {loss.item()} at step {step}; {_last_ckpt(last_ckpt, out_dir)}. "
                                     "Lower tokenizer.lr and retrain, or --resume.")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        if gan_on:  # the discriminator sees detached reconstructions, so its loss never reaches the tokenizer
            set_lr(disc_opt, lr)
            with accelerator.autocast():
                d_loss = hinge_d_loss(disc(images), disc(recon.detach()))
            disc_opt.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            disc_opt.step()

        record = {"step": step + 1, "loss": loss.item(), "psnr": psnr(recon.detach().float(), images)}
        if (step + 1) % tcfg.log_every == 0 or step + 1 == tcfg.steps:
            model.eval()
            with torch.no_grad():
                ids = raw.encode(monitor)
            record.update(recon_loss=aux["recon_loss"].item(), quant_loss=aux["quant_loss"].item(), lr=lr,
                          usage=codebook_usage(ids, raw.codebook_size), perplexity=perplexity(ids, raw.codebook_size),
                          elapsed_s=round(elapsed + time.time() - t0, 1), **({"d_loss": d_loss.item()} if gan_on else {}))
            history.append(record)
            logger.log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['psnr']:.1f}", usage=f"{record['usage']:.2f}")
        bar.update(1)
        if (step + 1) % tcfg.ckpt_every == 0 or step + 1 == tcfg.steps:
            checkpoint(step + 1)
            last_ckpt = step + 1
        if on_step is not None:
            on_step(step + 1, record)
    bar.close()
    return history


# ------------------------------------------------------------------------------------------- transformer training
def _resolve_tokenizer_dir(out_dir: Path, tokenizer_dir, name: str = "tokenizer") -> Path:
    from .checkpoint import WEIGHTS_NAME
    from .pipeline import DEFAULT_CHECKPOINT
    flag = "--" + name.replace("_", "-")
    if tokenizer_dir is not None:  # a path the user typed is used or refused, never silently replaced
        if not (Path(tokenizer_dir) / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{flag} {tokenizer_dir} is not a tokenizer checkpoint (no {WEIGHTS_NAME} there)")
        return Path(tokenizer_dir)
    for cand in (out_dir / name, DEFAULT_CHECKPOINT / name):
        if (cand / WEIGHTS_NAME).is_file():
            return cand
    stage = " --stage superres" if name == "superres_tokenizer" else ""
    raise FileNotFoundError(f"no trained {name.replace('_', ' ')}: pass {flag} DIR, or run "
                            f"`minimuse train-tokenizer{stage} --out {out_dir / name}` first")


def train_superres(cfg: Config, out_dir, resume: bool = False, tokenizer_dir=None, superres_tokenizer_dir=None,
                   on_step=None, overwrite: bool = False, report: bool = False) -> list[dict]:
    """Train the super-res transformer of `cfg` (Muse §2.4) with the base model's loop and cfg.superres.train: pairs
    of one scene at both sizes (the base tokenizer reads the 2x box-decimated render, the super-res tokenizer the full
    one), the high-res tokens masked with the same cos(pi u / 2) law, loss on them only, 10% of the text dropped to "".
    The low-res tokens are never dropped: the unconditional half of guidance still upsamples the same image, so the
    model never needs to draw a high-res image from nothing, and a dropped grid would only teach it to ignore its
    input. out_dir ends with tokenizer/, superres_tokenizer/, superres/, log.jsonl and the training state."""
    return train_transformer(cfg, out_dir, resume, tokenizer_dir, on_step, overwrite, report, stage="superres",
                             superres_tokenizer_dir=superres_tokenizer_dir)


def train_transformer(cfg: Config, out_dir, resume: bool = False, tokenizer_dir=None, on_step=None,
                      overwrite: bool = False, report: bool = False, stage: str = "base",
                      superres_tokenizer_dir=None) -> list[dict]:
    """Train the masked transformer of `cfg` on a trained tokenizer. out_dir ends as a pipeline checkpoint:
    out_dir/tokenizer, out_dir/transformer (safetensors + config), log.jsonl and the training state. Returns the log.

    Muse §2.6: mask r = cos(pi u / 2) of the tokens, predict them from the rest and the text, cross-entropy on the
    masked positions only. Every train.eval_every steps a quick sample-and-score of train.eval_prompts held-out
    prompts (eval.quick_eval_fn) joins the log, so a learner sees faithfulness, not just loss, go up.
    on_step(step, record, model), if given, is called after every step (notebooks draw live curves with it).
    An out_dir holding a run needs resume=True or overwrite=True. report=True ends by writing out_dir/report.json
    (bench.train_report: minutes, steps/s, achieved GFLOP/s and the fraction of the measured matmul peak).
    stage="superres" is `train_superres`: the same loop, on the super-res model, its pairs and cfg.superres.train.
    """
    import dataclasses
    from .scheduler import masked_ce
    from .superres import SuperResTransformer
    from .text_encoder import TextEncoder
    from .tokenizer import Tokenizer
    from .transformer import MaskedTransformer

    if stage not in ("base", "superres"):
        raise ValueError(f"stage must be 'base' or 'superres', got {stage!r}")
    if stage == "superres" and cfg.superres is None:
        raise ValueError(f"preset '{cfg.name}' has no super-res stage; choose a preset with a superres section")
    sr = stage == "superres"
    scfg = dataclasses.replace(cfg, train=cfg.superres.train) if sr else cfg  # the stage's own TrainConfig as .train
    cls, export_name, state_name = ((SuperResTransformer, "superres", SUPERRES_STATE) if sr
                                    else (MaskedTransformer, "transformer", TRANSFORMER_STATE))
    tc = scfg.train
    t_enter = time.time()  # the whole command's clock: the token pool and the text table count, as a user waits for them
    keep_freed_memory()
    accelerator = make_accelerator(scfg, compile=tc.torch_compile)
    tok_src = _resolve_tokenizer_dir(Path(out_dir), tokenizer_dir)  # a mistyped --tokenizer fails before any write
    sr_src = _resolve_tokenizer_dir(Path(out_dir), superres_tokenizer_dir, "superres_tokenizer") if sr else None
    out_dir = prepare_run_dir(out_dir, state_name, (export_name,), resume, overwrite, accelerator)
    tokenizer = Tokenizer.from_pretrained(tok_src, cfg)
    hi_tokenizer = Tokenizer.from_pretrained(sr_src, cfg) if sr else None
    seed_everything(tc.seed)
    for tok, src, name in ((tokenizer, tok_src, "tokenizer"), (hi_tokenizer, sr_src, "superres_tokenizer")):
        if tok is not None and src.resolve() != (out_dir / name).resolve() and accelerator.is_main_process:
            tok.save_pretrained(out_dir / name)  # out_dir becomes a complete (stage) checkpoint

    tokenizer.to(accelerator.device)
    if sr:
        hi_tokenizer.to(accelerator.device)
        pool = build_token_pool(cfg, hi_tokenizer, cfg.data.pool_size, out_dir if accelerator.is_main_process else None,
                                lowres_tokenizer=tokenizer)
    else:
        pool = build_token_pool(cfg, tokenizer, cfg.data.pool_size, out_dir if accelerator.is_main_process else None)
    text_encoder = TextEncoder(cfg.text)
    table = text_table(text_encoder, pool["vocab"])

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
    if resume:
        state = load_training_state(out_dir / state_name)
        if _saved(state) != cfg.to_dict():
            raise ValueError(f"cannot resume {out_dir}: it was trained with another config; use a new --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            for e, s in zip(ema, state["ema"]):
                e.copy_(s)
        start, history, window, elapsed = state["step"], state["history"], state["window"], state["elapsed_s"]
        timing = state.get("timing", timing)
        set_rng_states(state["rng"])

    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model, keep_torch_compile=False)  # plain module: its state_dict keys carry no prefix
    if ema is not None:
        ema = [e.to(accelerator.device) for e in ema]  # beside the weights it follows (a GPU's, after prepare)
    logger = JsonlLogger(out_dir / LOG_NAME, resume_step=start if resume else None, enabled=accelerator.is_main_process)
    b = tc.batch_size // accelerator.num_processes
    if b * accelerator.num_processes != tc.batch_size:
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by {accelerator.num_processes} processes")

    def export(step: int):
        """Save what a user loads (EMA weights if enabled) and, beside it, everything needed to resume."""
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        save_training_state(out_dir / state_name, {
            "step": step, "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_states(),
            "history": history, "config": cfg.to_dict(), "ema": ema, "window": window,
            "elapsed_s": elapsed + time.time() - t0, "timing": timing})
        if ema is None:
            raw.save_pretrained(out_dir / export_name, cfg)
        else:
            shadow = cls.from_config(cfg)
            for p, e in zip(shadow.parameters(), ema):
                p.data.copy_(e)
            shadow.save_pretrained(out_dir / export_name, cfg)

    eval_fn = None
    if tc.eval_every and accelerator.is_main_process:
        from .eval import quick_eval_fn, quick_superres_eval_fn
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
        extra = {"lowres_ids": lowres[0]} if sr else {}  # the super-res model reads the base grid beside the text
        last_batch = (inputs, labels, text, text_mask, extra)
        model.train()
        with accelerator.autocast():
            logits = model(inputs, text, text_mask, **extra)  # (B, L, K)
            loss = masked_ce(logits, labels, tc.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"transformer loss became {loss.item()} at step {step}; {_last_ckpt(last_ckpt, out_dir)}. "
                                     f"Lower train.lr (now {tc.lr}) and --resume, or retrain.")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema, raw.parameters()):
                    e.lerp_(p.detach(), 1 - tc.ema_decay)
        masked = labels != -100
        acc = (logits.detach().argmax(-1)[masked] == labels[masked]).float().mean().item()
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
    if report and accelerator.is_main_process and last_batch is not None:
        from .bench import write_train_report
        write_train_report(out_dir, scfg, raw, timing, elapsed + time.time() - t0, last_batch, resolve_precision(tc.mixed_precision))
    return history

