"""The tokenizer's training loop (Muse §2.2, after VQGAN): reconstruction + commitment, an optional hinge GAN, and
decoder finetuning on a frozen encoder and codebook (Muse §2.5, `finetune_decoder`, `minimuse finetune-decoder`).

A `Stage` of the one loop (loop.py), with the run-directory guard, atomic pickle-free training state and exact resume
of runs.py; the discriminator's step, on its own optimizer, is the stage's. Data is addressed by (seed, index): step s
reads images [s*B, (s+1)*B).
Taught in notebooks/02_tokenizer.ipynb.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .checkpoint import atomic_write_json
from .config import Config
from .data import ShapesDataset
from .hfdata import ImageTextDataset
from .limits import check_param_memory, tokenizer_numel
from .locks import releasing
from .measures import eval_tokenizer
from .metrics import psnr
from .loop import Clock, Schedule, Stage, run_loop
from .runs import (LOG_NAME, STATE_NAME, TOKENIZER_STATE_KEYS, JsonlLogger, _saved, batch_indices, load_batch,
                   load_training_state, make_accelerator, prepare_run_dir, restore, restore_rng, rng_states, save_training_state, seed_everything, set_lr)
from .quantizer import codebook_usage, perplexity
from .tokenizer import PatchDiscriminator, Tokenizer, hinge_d_loss, hinge_g_loss


@releasing  # the lock prepare_run_dir takes on out_dir is held until training returns or fails
def train_tokenizer(cfg: Config, out_dir, resume: bool = False, stage: str = "base", on_step=None,
                    overwrite: bool = False, finetune_from=None, data=None, caption_column: str = "text") -> list[dict]:
    """Train the base (or super-res) tokenizer of `cfg`; checkpoints and log.jsonl go to out_dir. Returns the log.

    on_step(step, record) is called after every step with the step's loss and PSNR (and, at log steps, the logged
    record), e.g. for a live plot in a notebook. An out_dir holding a run needs resume=True or overwrite=True.
    finetune_from (a tokenizer checkpoint of this stage) is `finetune-decoder` (Muse §2.5): its encoder and codebook
    are loaded and frozen, so every token keeps its meaning, and a decoder of cfg.superres.decoder's size is trained
    from scratch for cfg.superres.decoder.steps on the reconstruction loss.
    data (an image folder or saved Hugging Face dataset, hfdata.py) replaces the shapes world: step s still reads
    images [s*B, (s+1)*B) of an endless stream, each epoch a fresh seeded shuffle, and the usage monitor is the
    data's first 256 images.
    """

    tcfg, size, frozen = _stage_config(cfg, stage, finetune_from)
    check_param_memory({"tokenizer": tokenizer_numel(tcfg)}, f"config '{cfg.name}'")  # before anything is built or written
    # "auto" was measured for the transformer only (docs/TRAINING.md); the tokenizer keeps fp32 under it
    accelerator = make_accelerator(cfg, "no" if cfg.train.mixed_precision == "auto" else None)
    out_dir = prepare_run_dir(out_dir, STATE_NAME, ("model.safetensors",), resume, overwrite, accelerator)
    use_gan, path = tcfg.disc_weight > 0, out_dir / STATE_NAME
    data_key = None if data is None else str(Path(data).resolve())  # a resume must read the same images
    if resume:  # read (and its keys checked) before anything is built or written
        gan_keys = {"disc": dict, "disc_optimizer": dict} if use_gan else {}
        state = load_training_state(path, {**TOKENIZER_STATE_KEYS, **gan_keys})
        if _saved(state) != cfg.to_dict() or state["stage"] != stage or state.get("data") != data_key:
            raise ValueError(f"cannot resume {out_dir}: it was trained with another config, stage or --data; use a new --out")
    seed_everything(cfg.train.seed)
    model, optimizer, disc, disc_opt = _build(cfg, stage, tcfg, frozen)

    start, history, elapsed = 0, [], 0.0  # elapsed: wall seconds of earlier runs of this training
    if resume:
        restore(model, state, "model", path)
        restore(optimizer, state, "optimizer", path)
        if use_gan:
            restore(disc, state, "disc", path)
            restore(disc_opt, state, "disc_optimizer", path)
        start, history, elapsed = state["step"], state["history"], state["elapsed_s"]
        restore_rng(state["rng"], path)

    model, optimizer = accelerator.prepare(model, optimizer)
    if use_gan:
        disc, disc_opt = accelerator.prepare(disc, disc_opt)

    if data is None:
        train_set = ShapesDataset(size=size, seed=cfg.data.train_seed, length=tcfg.steps * tcfg.batch_size * accelerator.num_processes)
        # A fixed held-out batch for usage and perplexity: the eval seed is never trained on.
        monitor = load_batch(ShapesDataset(size=size, seed=cfg.data.eval_seed, length=256), range(256)).to(accelerator.device)
    else:
        train_set = ImageTextDataset(data, size, caption_column, seed=cfg.data.train_seed, shuffle=True)
        monitor = load_batch(train_set, range(min(256, len(train_set)))).to(accelerator.device)
    logger = JsonlLogger(out_dir / LOG_NAME, resume_step=start if resume else None, enabled=accelerator.is_main_process)
    clock = Clock(elapsed)
    state_extra = {"config": cfg.to_dict(), "stage": stage, "data": data_key}

    def save(step: int):
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        raw = accelerator.unwrap_model(model)
        save_training_state(out_dir / STATE_NAME, {
            "step": step, "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_states(),
            "history": history, **state_extra, "elapsed_s": clock(),
            **({"disc": accelerator.unwrap_model(disc).state_dict(), "disc_optimizer": disc_opt.state_dict()} if use_gan else {})})
        raw.save_pretrained(out_dir)  # the user-facing checkpoint, written after the state so both describe `step`

    sched = Schedule(tcfg.steps, tcfg.lr, tcfg.warmup_steps, cfg.train.min_lr_ratio, tcfg.log_every, tcfg.ckpt_every)
    run = _tokenizer_stage(model, disc, disc_opt, accelerator, tcfg, train_set, monitor, frozen is not None, clock, save)
    return run_loop(run, sched, start, optimizer, accelerator, model, history, logger, "tokenizer",
                    "Lower tokenizer.lr and retrain, or --resume.", out_dir, on_step=on_step)


def _stage_config(cfg: Config, stage: str, finetune_from):
    """(the stage's TokenizerConfig, its image size, the frozen tokenizer whose decoder is finetuned or None)."""
    if stage not in ("base", "superres"):
        raise ValueError(f"stage must be 'base' or 'superres', got {stage!r}")
    if stage == "superres" and cfg.superres is None:
        raise ValueError(f"preset '{cfg.name}' has no super-res stage; choose a preset with a superres section")
    tcfg = cfg.tokenizer if stage == "base" else cfg.superres.tokenizer
    size = cfg.data.image_size if stage == "base" else cfg.superres.image_size
    frozen = None
    if finetune_from is not None:
        if stage != "superres":
            raise ValueError("finetune-decoder finetunes the super-res stage's decoder, the one the cascade draws with")
        frozen = Tokenizer.from_pretrained(finetune_from, cfg)  # refuses a tokenizer of another stage or architecture
        dc = cfg.superres.decoder
        tcfg = dataclasses.replace(tcfg, decoder_channels=dc.channels, decoder_res_blocks=dc.res_blocks, steps=dc.steps,
                                   batch_size=dc.batch_size, lr=dc.lr, disc_weight=0.0)
    return tcfg, size, frozen


def _build(cfg: Config, stage: str, tcfg, frozen):
    """The tokenizer, its optimizer, and the discriminator with its own (None, None without the GAN), drawn from the
    seeded RNG in this order."""
    model = Tokenizer(tcfg)
    model.full_config, model.stage = cfg, stage
    trained = model.parameters()
    if frozen is not None:
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
    return model, optimizer, disc, disc_opt


def _tokenizer_stage(model, disc, disc_opt, accelerator, tcfg, train_set, monitor, finetune: bool, clock, save) -> Stage:
    """The tokenizer's step for the one loop: reconstruction + commitment (+ the generator's hinge loss once the GAN is
    on), then the discriminator's own step on the same batch; log lines add the held-out codebook usage."""
    raw = accelerator.unwrap_model(model)
    now = {}  # what this step's losses() leaves for after() and log(): the batch, its reconstruction, the losses

    def losses(step: int):
        images = load_batch(train_set, batch_indices(step, tcfg.batch_size, accelerator.process_index,
                                                     accelerator.num_processes)).to(accelerator.device)  # (B, 3, S, S)
        model.train()
        if finetune:  # eval mode: no EMA codebook update, no dead-code restart; the tokens stay the same
            raw.encoder.eval()
            raw.quantizer.eval()
        with accelerator.autocast():
            recon, aux = model(images)  # (B, 3, S, S)
            loss = aux["loss"]
            gan_on = disc is not None and step >= tcfg.disc_start
            if gan_on:
                loss = loss + tcfg.disc_weight * hinge_g_loss(disc(recon))
        now.update(images=images, recon=recon, aux=aux, loss=loss, gan_on=gan_on)
        yield loss

    def after(step: int, lr: float) -> dict:
        images, recon = now["images"], now["recon"]
        if now["gan_on"]:  # the discriminator sees detached reconstructions, so its loss never reaches the tokenizer
            set_lr(disc_opt, lr)
            with accelerator.autocast():
                now["d_loss"] = hinge_d_loss(disc(images), disc(recon.detach()))
            disc_opt.zero_grad(set_to_none=True)
            accelerator.backward(now["d_loss"])  # its own loss and optimizer: the one step the loop does not take
            disc_opt.step()
        return {"step": step + 1, "loss": now["loss"].item(), "psnr": psnr(recon.detach().float(), images)}

    def log(step: int, lr: float, record: dict) -> dict:
        model.eval()
        with torch.no_grad():
            ids = raw.encode(monitor)  # (256, h, w) the held-out batch's tokens
        aux, gan = now["aux"], {"d_loss": now["d_loss"].item()} if now["gan_on"] else {}
        record.update(recon_loss=aux["recon_loss"].item(), quant_loss=aux["quant_loss"].item(), lr=lr,
                      usage=codebook_usage(ids, raw.codebook_size), perplexity=perplexity(ids, raw.codebook_size),
                      elapsed_s=round(clock(), 1), **gan)
        return record

    def show(r: dict) -> dict:
        return {"loss": f"{r['loss']:.4f}", "psnr": f"{r['psnr']:.1f}", "usage": f"{r['usage']:.2f}"}

    return Stage(losses, after, log, save, show)


def finetune_decoder(cfg: Config, checkpoint, out_dir, resume: bool = False, overwrite: bool = False,
                     eval_n: int = 1000) -> dict:
    """`minimuse finetune-decoder` (Muse §2.5): train cfg.superres.decoder's larger decoder on the frozen encoder and
    codebook of checkpoint/superres_tokenizer, then measure PSNR before and after on eval_n held-out images. Writes
    out_dir/eval.json and returns it; the pipeline decodes with the new decoder once it sits in the checkpoint as
    superres_decoder/ (ship it only if PSNR rose)."""
    if cfg.superres is None:
        raise ValueError(f"preset '{cfg.name}' has no super-res stage, so no super-res decoder to finetune")
    src = Path(checkpoint) / "superres_tokenizer"
    if not (src / "model.safetensors").is_file():
        raise ValueError(f"no super-res tokenizer at {src}: --checkpoint names a folder holding superres_tokenizer/")
    train_tokenizer(cfg, out_dir, resume=resume, stage="superres", overwrite=overwrite, finetune_from=src)
    before, after = (eval_tokenizer(d, n=eval_n) for d in (src, out_dir))
    result = {"before": before, "after": after, "gain_db": round(after["psnr"] - before["psnr"], 2)}
    atomic_write_json(Path(out_dir) / "eval.json", result)
    return result
