"""Command line: `minimuse SUBCOMMAND ...` and `python -m minimuse SUBCOMMAND ...`.

Thin wrappers over the package functions (DESIGN §4): each subcommand parses its arguments, checks them once,
before anything slow, calls one function, and turns the package's errors into one line on stderr with exit code 2
(MINIMUSE_DEBUG=1 shows the traceback instead). Nothing here holds maths. The README and
notebooks/00_overview.ipynb list every command.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .config import EVAL_TASKS, PRESETS, SAMPLER_NAMES, SCHEDULE_NAMES, ConfigError, SampleConfig, apply_override, get_config

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "laptop"
MAX_DATASET_N = 1_000_000   # images per `minimuse dataset`; more is a typo, not a plan
MAX_DATASET_SIZE = 1024     # pixels; shapes are drawn at 4x supersampling, so 1024 px is already 16M sub-pixels
# SampleConfig field -> the argparse dest of its flag, so an error names what the user typed
SAMPLING_FLAGS = {"num_steps": "steps", "guidance_scale": "guidance", "guidance_schedule": "guidance_schedule",
                  "sampler": "sampler", "schedule": "schedule", "choice_temperature": "choice_temperature"}


class CLIError(Exception):
    """A user mistake the CLI reports in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, except that a mistake is one line like every other error here (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"minimuse: error: {message} (see `{self.prog} --help`)\n")


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


def _device(args):
    """--device checked before any model is loaded (None: CUDA when present, else the CPU)."""
    from .pipeline import check_device
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


def _read_prompts(path: Path) -> list[str]:
    """One prompt per non-blank line of a UTF-8 file."""
    if path.is_dir():
        raise CLIError(f"prompts file {path} is a directory; give a text file with one prompt per line")
    if not path.exists():
        raise CLIError(f"prompts file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM from a Windows editor is not part of the first prompt
    except UnicodeDecodeError as e:
        raise CLIError(f"prompts file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except OSError as e:
        raise CLIError(f"cannot read prompts file {path}: {e.strerror or e}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CLIError(f"prompts file {path} holds no prompts")
    return prompts


def cmd_dataset(args):
    if not 1 <= args.n <= MAX_DATASET_N:
        raise CLIError(f"--n must be at least 1 and at most {MAX_DATASET_N}, got {args.n}")
    if not (8 <= args.size <= MAX_DATASET_SIZE and args.size % 8 == 0):
        raise CLIError(f"--size must be a positive multiple of 8 up to {MAX_DATASET_SIZE} (16, 32, 64, ...), got {args.size}")
    from .data import write_dataset
    write_dataset(args.n, args.out_dir, size=args.size, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {args.n} images, captions.jsonl and grid.png to {args.out_dir}")


def cmd_train_tokenizer(args):
    cfg = _config(args)
    from .train import train_tokenizer
    out = args.out or f"runs/{cfg.name}/{'superres_tokenizer' if args.stage == 'superres' else 'tokenizer'}"
    train_tokenizer(cfg, out, resume=args.resume, stage=args.stage, overwrite=args.overwrite)
    print(f"tokenizer saved to {out}")


def cmd_train(args):
    cfg = _config(args)
    from .train import train_transformer
    out = args.out or f"runs/{cfg.name}"
    train_transformer(cfg, out, resume=args.resume, tokenizer_dir=args.tokenizer, overwrite=args.overwrite,
                      report=args.report)
    _saved(f"model saved to {out}", out, args.report)


def _saved(line: str, out, report: bool) -> None:
    print(line)
    if report:  # the one-line summary train --report writes beside the run
        from .bench import format_train_report
        print(format_train_report(json.loads((Path(out) / "report.json").read_text())))


def cmd_train_superres(args):
    cfg = _config(args)
    if cfg.superres is None:
        raise CLIError(f"preset '{cfg.name}' has no super-res stage; choose one of: "
                       f"{', '.join(n for n, c in PRESETS.items() if c.superres is not None)}")
    from .train import train_superres
    out = args.out or f"runs/{cfg.name}-superres"
    train_superres(cfg, out, resume=args.resume, tokenizer_dir=args.tokenizer,
                   superres_tokenizer_dir=args.superres_tokenizer, overwrite=args.overwrite, report=args.report)
    _saved(f"super-res model saved to {out}", out, args.report)


def cmd_finetune_decoder(args):
    cfg = _config(args)
    from .train_tokenizer import finetune_decoder
    out = Path(args.out or f"runs/{cfg.name}-decoder")
    r = finetune_decoder(cfg, args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, out,
                         resume=args.resume, overwrite=args.overwrite, eval_n=args.eval_n)
    print(f"held-out {args.eval_n} images at {cfg.superres.image_size} px: PSNR {r['before']['psnr']:.2f} dB -> "
          f"{r['after']['psnr']:.2f} dB ({r['gain_db']:+.2f} dB; {out / 'eval.json'}). The pipeline decodes with it when "
          f"it sits in the checkpoint as superres_decoder/.")


def cmd_upscale(args):
    from .superres import upscale_cli
    _at_least_1(batch_size=args.batch_size)
    outs = upscale_cli(args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, image=args.image,
                       prompt=args.prompt, out=args.out, in_dir=args.in_dir, out_dir=args.out_dir, seed=args.seed,
                       num_steps=args.steps, guidance_scale=args.guidance, batch_size=args.batch_size,
                       device=_device(args), overwrite=args.overwrite)
    print(f"wrote {outs[0]}" + (f" ... and {len(outs) - 1} more" if len(outs) > 1 else ""))


def cmd_eval(args):
    from .eval import evaluate
    _at_least_1(n=args.n)
    if args.tokenizer_n < 0:
        raise CLIError(f"--tokenizer-n must be 0 (skip the tokenizer metrics) or more, got {args.tokenizer_n}")
    sampling = {**_sampling(args), "precision": args.precision}
    _at_least_1(top_k=args.top_k)
    if args.task == "edit":  # mask-free editing's own two settings (config.EditConfig); the others are the sampler's
        other = sorted(set(_sampling(args)) - {"guidance_scale"})
        if other:
            raise CLIError(f"--task edit takes --guidance and --top-k only; drop --{SAMPLING_FLAGS[other[0]].replace('_', '-')}")
        sampling = {k: v for k, v in (("guidance_scale", args.guidance), ("top_k", args.top_k)) if v is not None}
    elif args.task != "generate" and (_sampling(args) or args.top_k is not None):
        raise CLIError(f"--task {args.task} measures the checkpoint's own settings; drop the sampling flags")
    elif args.top_k is not None:
        raise CLIError("--top-k is mask-free editing's (--task edit); generation samples from the full softmax")
    result = evaluate(args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, n=args.n,
                      tokenizer_n=args.tokenizer_n, seed=args.seed, device=_device(args), task=args.task,
                      **({} if args.task not in ("generate", "edit") else sampling))
    print(json.dumps(result, indent=2))


def cmd_generate(args):
    sampling = _sampling(args)
    _at_least_1(batch_size=args.batch_size)
    if args.prompts_file is not None:
        if args.prompt is not None:
            raise CLIError("give either a prompt or --prompts-file, not both")
        if args.out_dir is None:
            raise CLIError("--prompts-file needs --out-dir")
        prompts = _read_prompts(Path(args.prompts_file))
    elif args.prompt is not None:
        prompts = [args.prompt]
    else:
        raise CLIError("give a prompt, or --prompts-file FILE --out-dir DIR")
    from .pipeline import generate_cli
    # `is not None`, not `or`: an empty --checkpoint "" must fail, not quietly load the shipped model
    generate_cli(prompts, checkpoint=args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT,
                 out=args.out, out_dir=args.out_dir, seed=args.seed, negative_prompt=args.negative_prompt,
                 history=args.history, batch_size=args.batch_size, upscale_factor=args.upscale,
                 precision=args.precision, overwrite=args.overwrite, device=_device(args),
                 superres=False if args.no_superres else None, **sampling)


def cmd_edit(args):
    from .editing import edit_cli, read_jobs
    _at_least_1(num_iters=args.num_iters, top_k=args.top_k)
    if args.guidance is not None and not args.guidance >= 0:
        raise CLIError(f"--guidance must be 0 or more, got {args.guidance}")
    if args.jobs is not None:
        if args.image is not None or args.prompt is not None or args.mask is not None:
            raise CLIError("--jobs takes every image, prompt and mask from its file; give no IMAGE, --prompt or --mask")
        if args.out_dir is None:
            raise CLIError("--jobs needs --out-dir")
        jobs = read_jobs(args.jobs)
        outs = [Path(args.out_dir) / f"{i:03d}.png" for i in range(len(jobs))]
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
    from .editing import outpaint_cli
    out = outpaint_cli(args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT, args.image, args.prompt,
                       args.extend, args.out, seed=args.seed, device=_device(args), overwrite=args.overwrite)
    print(f"wrote {out}")


def cmd_bench(args):
    cfg = _config(args)
    _at_least_1(batch_sizes=args.batch_sizes, steps=args.steps, repeats=args.repeats, threads=args.threads)
    from .bench import run_bench
    result = run_bench(cfg, checkpoint=args.checkpoint, batch_sizes=args.batch_sizes, steps=args.steps,
                       repeats=args.repeats, threads=args.threads, precision=args.precision)
    print(json.dumps(result, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minimuse", description="Muse-style masked generative text-to-image, small enough to read.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dataset", help="write shapes-world images, captions.jsonl and a contact sheet")
    d.add_argument("--n", type=int, required=True)
    d.add_argument("--out-dir", required=True)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true", help="replace files already in --out-dir")
    d.set_defaults(fn=cmd_dataset)

    def add_preset(q):
        q.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)} (default: $MINIMUSE_PRESET or laptop)")
        q.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a config field, e.g. --set width=256")

    def add_run(q):  # a directory holding a run is only trained in again when the user says how
        q.add_argument("--out")
        q.add_argument("--resume", action="store_true", help="continue the run in --out")
        q.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")

    def add_io(q, device: bool = True):  # what every command that loads a checkpoint and writes images takes
        q.add_argument("--checkpoint", help="a pipeline checkpoint folder (default: the shipped laptop checkpoint)")
        q.add_argument("--seed", type=int, default=0)
        if device:
            q.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
        q.add_argument("--overwrite", action="store_true", help="replace output files that already exist")

    def add_sampling(q):  # defaults None: the checkpoint's measured best settings
        q.add_argument("--steps", type=int, default=None)
        q.add_argument("--guidance", type=float, default=None)
        q.add_argument("--guidance-schedule", choices=["constant", "linear"], default=None)
        q.add_argument("--sampler", choices=SAMPLER_NAMES, default=None)
        q.add_argument("--schedule", choices=SCHEDULE_NAMES, default=None)
        q.add_argument("--choice-temperature", type=float, default=None)
        q.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, faster on CPUs with bf16")
        q.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")

    t = sub.add_parser("train-tokenizer", help="train the VQ/FSQ image tokenizer")
    add_preset(t)
    add_run(t)
    t.add_argument("--stage", choices=["base", "superres"], default="base")
    t.set_defaults(fn=cmd_train_tokenizer)

    t = sub.add_parser("train", help="train the masked transformer on a trained tokenizer")
    add_preset(t)
    add_run(t)
    t.add_argument("--tokenizer", help="tokenizer checkpoint dir (default: OUT/tokenizer, else the shipped one)")
    t.add_argument("--report", action="store_true",
                   help="end with one line (and OUT/report.json): minutes, steps/s, achieved GFLOP/s, %% of the measured matmul peak")
    t.set_defaults(fn=cmd_train)

    t = sub.add_parser("train-superres", help="train the super-resolution transformer (Muse §2.4) on both tokenizers")
    add_preset(t)
    add_run(t)
    t.add_argument("--tokenizer", help="base tokenizer dir (default: OUT/tokenizer, else the shipped one)")
    t.add_argument("--superres-tokenizer", help="high-res tokenizer dir (default: OUT/superres_tokenizer, else the shipped one)")
    t.add_argument("--report", action="store_true", help="end with the minutes, steps/s and %% of peak line (OUT/report.json)")
    t.set_defaults(fn=cmd_train_superres)

    t = sub.add_parser("finetune-decoder", help="train a larger decoder on the frozen super-res tokens (Muse §2.5)")
    add_preset(t)
    add_run(t)
    t.add_argument("--checkpoint", help="a folder holding superres_tokenizer/ (default: the shipped laptop checkpoint)")
    t.add_argument("--eval-n", type=int, default=1000, help="held-out images for the PSNR before and after")
    t.set_defaults(fn=cmd_finetune_decoder)

    e = sub.add_parser("eval", help="print JSON metrics of a checkpoint: faithfulness per kind, PSNR, usage")
    e.add_argument("--checkpoint", help="a tokenizer dir or a pipeline dir (default: the shipped laptop checkpoint)")
    e.add_argument("--n", type=int, default=256, help="held-out prompts per caption kind")
    e.add_argument("--tokenizer-n", type=int, default=1000, help="held-out images for the tokenizer metrics (0 skips them)")
    e.add_argument("--seed", type=int, default=None, help="prompt seed (default: the config's held-out eval seed)")
    e.add_argument("--task", choices=list(EVAL_TASKS), default="generate",
                   help="superres: upscaling PSNR against bicubic, the leak test and the cascade's faithfulness "
                        "(docs/SUPERRES.md); inpaint, edit, outpaint: success and preservation on n held-out scenes")
    add_sampling(e)
    e.add_argument("--top-k", type=int, default=None, help="--task edit: top-k of mask-free editing (default: the checkpoint's)")
    e.set_defaults(fn=cmd_eval)

    g = sub.add_parser("generate", help="draw images from prompts")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--prompts-file")
    g.add_argument("--out", default=None, help="output PNG for a single prompt (default: out.png)")
    g.add_argument("--out-dir")
    add_sampling(g)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--history", help="write a per-step strip (image, mask, confidence) to this PNG")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--upscale", type=int, default=1, help="nearest-neighbour upscale factor for the written PNGs (1 to 32)")
    g.add_argument("--no-superres", action="store_true", help="write the base stage's output, skipping the super-res stage")
    add_io(g, device=False)  # --device comes with the sampling flags
    g.set_defaults(fn=cmd_generate)

    u = sub.add_parser("upscale", help="turn base-size images into high-res ones with the super-res stage (Muse §2.4)")
    u.add_argument("image", nargs="?", help="a PNG of the base size (32 px for laptop)")
    u.add_argument("--prompt", help="the image's caption")
    u.add_argument("--out", help="output PNG (default: upscaled.png)")
    u.add_argument("--in-dir", help="every PNG in DIR, captioned by DIR/captions.jsonl; writes OUT_DIR/<same name>")
    u.add_argument("--out-dir")
    u.add_argument("--steps", type=int, default=None, help="super-res sampling steps (default: the checkpoint's, Muse 8)")
    u.add_argument("--guidance", type=float, default=None)
    u.add_argument("--batch-size", type=int, default=64)
    add_io(u)
    u.set_defaults(fn=cmd_upscale)

    x = sub.add_parser("edit", help="inpaint an image region (--mask) or edit it mask-free under a new prompt (Muse §3.3)")
    x.add_argument("image", nargs="?", help="a PNG of the model's size")
    x.add_argument("--prompt")
    x.add_argument("--mask", help="a PNG of the image's size: white = regenerate (omit for mask-free editing)")
    x.add_argument("--jobs", help="JSONL, one {image, prompt, mask, seed} per line; outputs DIR/000.png, ...")
    x.add_argument("--out", help="output PNG (default: edited.png)")
    x.add_argument("--out-dir")
    x.add_argument("--num-iters", type=int, default=None, help="mask-free editing iterations (default: the checkpoint's; Muse: 100)")
    x.add_argument("--guidance", type=float, default=None, help="mask-free editing guidance (default: the checkpoint's; Muse: 4)")
    x.add_argument("--top-k", type=int, default=None, help="mask-free editing top-k (default: the checkpoint's; Muse: 3)")
    add_io(x)
    x.set_defaults(fn=cmd_edit)

    o = sub.add_parser("outpaint", help="extend an image beyond one side under a prompt")
    o.add_argument("image")
    o.add_argument("--prompt", required=True)
    o.add_argument("--extend", default="right:16", help="SIDE:PIXELS, SIDE one of right, left, top, bottom")
    o.add_argument("--out", default="outpainted.png")
    add_io(o)
    o.set_defaults(fn=cmd_outpaint)

    b = sub.add_parser("bench", help="print JSON: ms/image, tokens/s, achieved GFLOP/s against the matmul peak")
    add_preset(b)
    b.add_argument("--checkpoint", help="time a trained pipeline instead of a random-initialised model")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    b.add_argument("--steps", type=int, nargs="+", default=[8, 12, 24])
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the sampler under bf16 autocast, measured against the bf16 peak")
    b.set_defaults(fn=cmd_bench)
    return p


def _fail(e) -> int:
    if os.environ.get("MINIMUSE_DEBUG"):
        raise  # the exception being handled, with its traceback
    print(f"minimuse: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the message held
    return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    try:
        args.fn(args)
    except (CLIError, ConfigError, CheckpointError, ValueError, TypeError, FloatingPointError, NotImplementedError) as e:
        return _fail(e)
    except OSError as e:  # a full disk, a read-only directory, a vanished file: name the path, not the stack
        return _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("minimuse."):
            raise
        print(f"minimuse: error: '{args.command}' is not implemented yet ({e.name} is missing)", file=sys.stderr)
        return 2
    return 0
