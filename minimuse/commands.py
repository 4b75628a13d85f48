"""The command line's commands: one function per `minimuse SUBCOMMAND`, and the checks they share.

Each parses nothing (cli.py's argparse did), checks its arguments once, before anything slow, calls one package
function and prints one line. Errors are raised; cli.main turns them into one line on stderr with exit code 2.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

from . import locks
from .bench import _cpu_name, compare_ar, run_bench
from .peak import format_train_report
from .config import ConfigError, SampleConfig
from .data import write_dataset
from .editing import MAX_EDIT_ITERS
from .eval import evaluate
from .features import ShapesFeatures, train_features
from .hfdata import write_imagefolder
from .inputs import check_device, read_prompts, refuse_overlap
from .limits import (MAX_BENCH_BATCH, MAX_BENCH_REPEATS, MAX_BENCH_STEPS, MAX_BENCH_TOKENS, MAX_DATASET_N,
                     MAX_DATASET_SIZE, MAX_EVAL_N, MAX_SWEEP_SEEDS)
from .jobs import edit_cli, generate_cli, outpaint_cli, read_jobs, upscale_cli
from .nouns import write_dataset as write_nouns
from .pipeline import DEFAULT_CHECKPOINT, load_pipeline
from .presets import PRESETS, apply_override, get_config
from .shards import pretokenize
from .sweep import parse_grid, run_sweep
from .text_encoder import TextEncoder
from .tokenizer import Tokenizer
from .train import train_critic, train_superres, train_transformer
from .train_tokenizer import finetune_decoder, train_tokenizer

# SampleConfig field -> the argparse dest of its flag, so an error names what the user typed
SAMPLING_FLAGS = {"num_steps": "steps", "guidance_scale": "guidance", "guidance_schedule": "guidance_schedule",
                  "sampler": "sampler", "schedule": "schedule", "choice_temperature": "choice_temperature",
                  "temperature": "temperature", "top_k": "top_k", "remask_prob": "remask_prob"}


class CLIError(Exception):
    """A user mistake the CLI reports in one line."""


def _config(args):
    cfg = get_config(args.preset)
    for item in args.set or []:
        if "=" not in item:
            raise CLIError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        cfg = apply_override(cfg, key.strip(), value.strip())
    return cfg


def _at_least_1(**flags):
    """Counts the config does not check (batch sizes, repeats): the first one below 1, named as its flag."""
    for name, values in flags.items():
        for v in values if isinstance(values, list) else [values]:
            if v is not None and v < 1:
                raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {v}")


def _at_most(limit: int, **flags):
    """Counts with a ceiling (limits.MAX_*): the first one over it, named as its flag, with the limit."""
    for name, values in flags.items():
        for v in values if isinstance(values, list) else [values]:
            if v is not None and v > limit:
                raise CLIError(f"--{name.replace('_', '-')} must be at most {limit:,}, got {v}")


def _device(args):
    """--device checked before any model is loaded (None: CUDA when present, else the CPU)."""
    try:
        return None if args.device is None else check_device(args.device)
    except ValueError as e:
        raise CLIError(f"--device: {e}") from None


def _sampling(args) -> dict:
    """The sampling flags given, checked by SampleConfig now (not after a model is loaded) and named as typed."""
    given = {field: getattr(args, dest) for field, dest in SAMPLING_FLAGS.items() if getattr(args, dest) is not None}
    for field, value in given.items():
        try:
            dataclasses.replace(SampleConfig(), **{field: value})
        except ConfigError as e:  # "invalid config field 'sample.guidance_scale': must be ..." -> "--guidance must be ..."
            raise CLIError(f"--{SAMPLING_FLAGS[field].replace('_', '-')} {str(e).split(': ', 1)[-1]}") from None
    return given


@locks.releasing
def cmd_dataset(args):
    if args.source == "digits" and (args.n is not None or args.format != "imagefolder"):
        raise CLIError("--source digits writes all 1,797 scans as an image folder: pass --format imagefolder and no --n")
    if args.source in ("shapes", "nouns") and args.n is None:
        raise CLIError(f"the following arguments are required: --n (the number of {args.source} images to draw)")
    split, assets = getattr(args, "split", None), getattr(args, "assets", None)
    if args.source != "nouns" and (split is not None or assets is not None):
        raise CLIError("--split and --assets are for --source nouns")
    if args.n is not None and not 1 <= args.n <= MAX_DATASET_N:
        raise CLIError(f"--n must be at least 1 and at most {MAX_DATASET_N}, got {args.n}")
    if not (8 <= args.size <= MAX_DATASET_SIZE and args.size % 8 == 0):
        raise CLIError(f"--size must be a positive multiple of 8 up to {MAX_DATASET_SIZE} (16, 32, 64, ...), got {args.size}")
    locks.acquire_output(args.out_dir, "--out-dir")
    if args.source == "nouns":
        write_nouns(args.out_dir, args.n, split or "train", args.seed, args.size, args.format, assets, args.overwrite)
        print(f"wrote {args.n} Nouns characters ({split or 'train'} split) as {args.format} to {args.out_dir}")
        return
    if args.format == "imagefolder":
        counts = write_imagefolder(args.out_dir, args.source, args.n or 0, args.size, args.seed, args.overwrite)
        print(f"wrote {' and '.join(f'{v} {k}' for k, v in counts.items())} images with metadata.jsonl to {args.out_dir}")
        return
    write_dataset(args.n, args.out_dir, size=args.size, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {args.n} images, captions.jsonl and grid.png to {args.out_dir}")


def cmd_pretokenize(args):
    _at_least_1(shard_size=args.shard_size, batch_size=args.batch_size)
    # Before anything is loaded, written or deleted: --overwrite empties --out, so it must hold none of the inputs.
    refuse_overlap(args.out, {"--data": args.data, "--tokenizer": args.tokenizer,
                              "--superres-tokenizer": args.superres_tokenizer})
    cfg = _config(args)
    tok = Tokenizer.from_pretrained(args.tokenizer)
    saved = tok.full_config or cfg  # a diffusers VQModel carries no minimuse config: the preset's size applies
    size = saved.data.image_size if tok.stage == "base" else saved.superres.image_size
    hi = Tokenizer.from_pretrained(args.superres_tokenizer) if args.superres_tokenizer else None
    if hi is not None and hi.stage != "superres":
        raise CLIError(f"--superres-tokenizer {args.superres_tokenizer} is not a super-res stage tokenizer")
    m = pretokenize(args.data, hi or tok, TextEncoder(cfg.text), args.out,
                    size=hi.full_config.superres.image_size if hi else size, caption_column=args.caption_column,
                    split=args.split, lowres_tokenizer=tok if hi else None, lowres_size=size if hi else None,
                    shard_size=args.shard_size, batch_size=args.batch_size, streaming=args.streaming,
                    overwrite=args.overwrite)
    print(f"pre-tokenized {m['n']} images into {len(m['shards'])} shards in {args.out}")


def cmd_train_tokenizer(args):
    cfg = _config(args)
    out = args.out or f"runs/{cfg.name}/{'superres_tokenizer' if args.stage == 'superres' else 'tokenizer'}"
    train_tokenizer(cfg, out, resume=args.resume, stage=args.stage, overwrite=args.overwrite, data=args.data,
                    caption_column=args.caption_column)
    print(f"tokenizer saved to {out}")


def cmd_train(args):
    cfg = _config(args)
    out = args.out or f"runs/{cfg.name}"
    train_transformer(cfg, out, resume=args.resume, tokenizer_dir=args.tokenizer, overwrite=args.overwrite,
                      report=args.report, data=args.data)
    _saved(f"model saved to {out}", out, args.report)


def cmd_train_critic(args):
    cfg = _config(args)
    if cfg.transformer.kind != "critic":
        raise CLIError(f"preset '{cfg.name}' builds a {cfg.transformer.kind} transformer, not a critic; use "
                       "--preset laptop-critic or --set transformer.kind=critic")
    if not (Path(args.generator) / "transformer").is_dir() or not (Path(args.generator) / "tokenizer").is_dir():
        raise CLIError(f"--generator {args.generator} is not a pipeline checkpoint (no transformer/ and tokenizer/)")
    out = args.out or f"runs/{cfg.name}"
    train_critic(cfg, out, args.generator, resume=args.resume, overwrite=args.overwrite, data=args.data)
    print(f"critic saved to {out}/critic; copy it into {args.generator}/critic to sample with --sampler critic")


def _saved(line: str, out, report: bool) -> None:
    print(line)
    if report:  # the one-line summary train --report writes beside the run
        print(format_train_report(json.loads((Path(out) / "report.json").read_text())))


def cmd_train_superres(args):
    cfg = _config(args)
    if cfg.superres is None:
        raise CLIError(f"preset '{cfg.name}' has no super-res stage; choose one of: "
                       f"{', '.join(n for n, c in PRESETS.items() if c.superres is not None)}")
    out = args.out or f"runs/{cfg.name}-superres"
    train_superres(cfg, out, resume=args.resume, tokenizer_dir=args.tokenizer,
                   superres_tokenizer_dir=args.superres_tokenizer, overwrite=args.overwrite, report=args.report,
                   data=args.data)
    _saved(f"super-res model saved to {out}", out, args.report)


@locks.releasing
def cmd_finetune_decoder(args):
    _at_least_1(eval_n=args.eval_n)  # now, not after the training it would follow
    _at_most(MAX_EVAL_N, eval_n=args.eval_n)
    cfg = _config(args)
    out = Path(args.out or f"runs/{cfg.name}-decoder")
    locks.acquire_output(out, "--out")  # held past the training (which takes it too) until eval.json is written
    r = finetune_decoder(cfg, args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, out,
                         resume=args.resume, overwrite=args.overwrite, eval_n=args.eval_n)
    print(f"held-out {args.eval_n} images at {cfg.superres.image_size} px: PSNR {r['before']['psnr']:.2f} dB -> "
          f"{r['after']['psnr']:.2f} dB ({r['gain_db']:+.2f} dB; {out / 'eval.json'}). The pipeline decodes with it when "
          f"it sits in the checkpoint as superres_decoder/.")


@locks.releasing
def cmd_upscale(args):
    _at_least_1(batch_size=args.batch_size, steps=args.steps)
    locks.acquire_output(args.out_dir, "--out-dir")
    outs = upscale_cli(args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, image=args.image,
                       prompt=args.prompt, out=args.out, in_dir=args.in_dir, out_dir=args.out_dir, seed=args.seed,
                       num_steps=args.steps, guidance_scale=args.guidance, batch_size=args.batch_size,
                       device=_device(args), overwrite=args.overwrite)
    print(f"wrote {outs[0]}" + (f" ... and {len(outs) - 1} more" if len(outs) > 1 else ""))


def cmd_eval(args):
    _at_least_1(n=args.n)
    _at_most(MAX_EVAL_N, n=args.n, tokenizer_n=args.tokenizer_n)
    if args.tokenizer_n < 0:
        raise CLIError(f"--tokenizer-n must be 0 (skip the tokenizer metrics) or more, got {args.tokenizer_n}")
    sampling = {**_sampling(args), "precision": args.precision}
    if args.task == "edit":  # mask-free editing's own two settings (config.EditConfig); the others are the sampler's
        _at_least_1(top_k=args.top_k)
        other = sorted(set(_sampling(args)) - {"guidance_scale", "top_k"})
        if other:
            raise CLIError(f"--task edit takes --guidance and --top-k only; drop --{SAMPLING_FLAGS[other[0]].replace('_', '-')}")
        sampling = {k: v for k, v in (("guidance_scale", args.guidance), ("top_k", args.top_k)) if v is not None}
    elif args.task not in ("generate", "counts") and _sampling(args):
        raise CLIError(f"--task {args.task} measures the checkpoint's own settings; drop the sampling flags")
    if args.fid and args.task != "generate":
        raise CLIError(f"--fid measures generation; drop it with --task {args.task}")
    if args.assets is not None and args.task != "nouns":
        raise CLIError(f"--assets is for --task nouns, not --task {args.task}")
    fid_features = None
    if args.fid:  # checked before any image is drawn
        fid_features = ShapesFeatures.from_pretrained(args.fid_features or DEFAULT_CHECKPOINT.parent / "features")
    result = evaluate(args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, n=args.n,
                      tokenizer_n=args.tokenizer_n, seed=args.seed, device=_device(args), task=args.task,
                      fid_features=fid_features, assets=args.assets, **({} if args.task not in ("generate", "edit", "counts") else sampling))
    print(json.dumps(result, indent=2))


def cmd_train_features(args):
    cfg = _config(args)
    out = args.out or "runs/features"
    train_features(cfg, out, resume=args.resume, overwrite=args.overwrite)
    print(f"feature network saved to {out}: {(Path(out) / 'eval.json').read_text().strip()}")


@locks.releasing
def cmd_generate(args):
    sampling = _sampling(args)
    _at_least_1(batch_size=args.batch_size)
    if args.prompts_file is not None:
        if args.prompt is not None:
            raise CLIError("give either a prompt or --prompts-file, not both")
        if args.out_dir is None:
            raise CLIError("--prompts-file needs --out-dir")
        prompts = read_prompts(Path(args.prompts_file))
    elif args.prompt is not None:
        prompts = [args.prompt]
    else:
        raise CLIError("give a prompt, or --prompts-file FILE --out-dir DIR")
    enlarge = args.enlarge
    if args.upscale is not None:  # the old spelling: `upscale` is the super-res stage's word now
        if enlarge is not None:
            raise CLIError("give --enlarge only (--upscale is its old spelling)")
        print("minimuse: warning: --upscale N is deprecated; use --enlarge N (`minimuse upscale` is the super-res stage)",
              file=sys.stderr)
        enlarge = args.upscale
    locks.acquire_output(args.out_dir, "--out-dir")
    # `is not None`, not `or`: an empty --checkpoint "" must fail, not quietly load the shipped model
    generate_cli(prompts, checkpoint=args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT,
                 out=args.out, out_dir=args.out_dir, seed=args.seed, negative_prompt=args.negative_prompt,
                 history=args.history, batch_size=args.batch_size, enlarge=1 if enlarge is None else enlarge,
                 precision=args.precision, overwrite=args.overwrite, device=_device(args),
                 superres=False if args.no_superres else None, **sampling)


@locks.releasing
def cmd_edit(args):
    _at_least_1(num_iters=args.num_iters, top_k=args.top_k)
    _at_most(MAX_EDIT_ITERS, num_iters=args.num_iters)
    if args.guidance is not None and not args.guidance >= 0:
        raise CLIError(f"--guidance must be 0 or more, got {args.guidance}")
    if args.jobs is not None:
        if args.image is not None or args.prompt is not None or args.mask is not None:
            raise CLIError("--jobs takes every image, prompt and mask from its file; give no IMAGE, --prompt or --mask")
        if args.out_dir is None:
            raise CLIError("--jobs needs --out-dir")
        jobs = read_jobs(args.jobs)
        outs = [Path(args.out_dir) / f"{i:03d}.png" for i in range(len(jobs))]
        locks.acquire_output(args.out_dir, "--out-dir")
    else:
        if args.image is None or args.prompt is None:
            raise CLIError("give IMAGE and --prompt TEXT (and --mask MASK.png to inpaint), or --jobs JOBS.jsonl --out-dir DIR")
        jobs = [{"image": args.image, "prompt": args.prompt, "mask": args.mask, "seed": args.seed}]
        outs = [Path(args.out if args.out is not None else "edited.png")]
    edit_cli(args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, jobs, outs,
             num_iters=args.num_iters, overwrite=args.overwrite, device=_device(args), guidance_scale=args.guidance,
             top_k=args.top_k)
    print(f"wrote {outs[0]}" + (f" ... and {len(outs) - 1} more" if len(outs) > 1 else ""))


def cmd_outpaint(args):
    out = outpaint_cli(args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, args.image, args.prompt,
                       args.extend, args.out, seed=args.seed, device=_device(args), overwrite=args.overwrite)
    print(f"wrote {out}")


@locks.releasing
def cmd_sweep(args):
    _at_least_1(n=args.n, seeds=args.seeds, diversity_prompts=args.diversity_prompts)
    _at_most(MAX_EVAL_N, n=args.n, diversity_prompts=args.diversity_prompts)
    _at_most(MAX_SWEEP_SEEDS, seeds=args.seeds)
    try:
        grid = parse_grid(args.param, args.values)  # every value checked before a model loads
    except ValueError as e:
        raise CLIError(str(e)) from None
    locks.acquire_output(args.out, "--out")
    features = ShapesFeatures.from_pretrained(args.fid_features or DEFAULT_CHECKPOINT.parent / "features")
    pipe = load_pipeline(args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, device=_device(args),
                         superres=False)
    run_sweep(pipe, features, grid, args.n, args.seeds, args.out, resume=args.resume, overwrite=args.overwrite,
              n_diversity=args.diversity_prompts)
    print(f"wrote {Path(args.out) / 'sweep.jsonl'} and {Path(args.out) / 'sweep.png'}")


def cmd_bench(args):
    cfg = _config(args)
    _at_least_1(batch_sizes=args.batch_sizes, steps=args.steps, repeats=args.repeats, threads=args.threads)
    _at_most(MAX_BENCH_STEPS, steps=args.steps)
    _at_most(MAX_BENCH_REPEATS, repeats=args.repeats)
    _at_most(MAX_BENCH_BATCH, batch_sizes=args.batch_sizes)
    if args.device is not None and not args.compare_ar:
        raise CLIError("--device applies to --compare-ar only; bench times the CPU")
    if args.compare_ar:
        _at_least_1(tokens=args.tokens)
        _at_most(MAX_BENCH_TOKENS, tokens=args.tokens)
        bad = [t for t in args.tokens if math.isqrt(t) ** 2 != t]
        if bad:
            raise CLIError(f"--tokens {bad[0]} is not a square number of tokens (64, 256, 1024 are 8x8, 16x16, 32x32)")
        if args.threads:
            torch.set_num_threads(args.threads)
        ckpts = {k: v for k, v in (("masked", args.checkpoint), ("autoregressive", args.ar_checkpoint)) if v}
        device = _device(args) or "cpu"
        rows = compare_ar(cfg, args.tokens, args.batch_sizes, args.repeats, checkpoints=ckpts or None, device=device)
        gpu = {"gpu": torch.cuda.get_device_name(device)} if torch.device(device).type == "cuda" else {}
        print(json.dumps({"machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                                      "device": str(device), **gpu},
                          "preset": cfg.name, "compare_ar": rows}, indent=2))
        return
    result = run_bench(cfg, checkpoint=args.checkpoint, batch_sizes=args.batch_sizes, steps=args.steps,
                       repeats=args.repeats, threads=args.threads, precision=args.precision)
    print(json.dumps(result, indent=2))
