"""Command line: `minimuse SUBCOMMAND ...` and `python -m minimuse SUBCOMMAND ...`.

Thin wrappers over the package functions (DESIGN §4): each subcommand parses its arguments, calls one
function, and turns the package's errors into one line on stderr with a non-zero exit. Nothing here
holds maths. The README and notebooks/00_overview.ipynb list every command.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import PRESETS, SAMPLER_NAMES, SCHEDULE_NAMES, ConfigError, apply_override, get_config

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "laptop"


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


def cmd_dataset(args):
    from .data import write_dataset
    if args.n < 1:
        raise CLIError(f"--n must be at least 1, got {args.n}")
    write_dataset(args.n, args.out_dir, size=args.size, seed=args.seed)
    print(f"wrote {args.n} images, captions.jsonl and grid.png to {args.out_dir}")


def cmd_train_tokenizer(args):
    cfg = _config(args)
    from .train import train_tokenizer
    out = args.out or f"runs/{cfg.name}/{'superres_tokenizer' if args.stage == 'superres' else 'tokenizer'}"
    train_tokenizer(cfg, out, resume=args.resume, stage=args.stage)
    print(f"tokenizer saved to {out}")


def cmd_train(args):
    cfg = _config(args)
    from .train import train_transformer
    out = args.out or f"runs/{cfg.name}"
    train_transformer(cfg, out, resume=args.resume, tokenizer_dir=args.tokenizer)
    print(f"model saved to {out}")


def cmd_train_superres(args):
    raise CLIError("train-superres is not implemented yet (the super-resolution stage has its own issue)")


def cmd_eval(args):
    from .eval import evaluate
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    sampling = {k: v for k, v in dict(num_steps=args.steps, guidance_scale=args.guidance, guidance_schedule=args.guidance_schedule,
                sampler=args.sampler, schedule=args.schedule, choice_temperature=args.choice_temperature,
                precision=args.precision).items() if v is not None}
    result = evaluate(args.checkpoint or DEFAULT_CHECKPOINT, n=args.n, tokenizer_n=args.tokenizer_n, seed=args.seed,
                      **sampling)
    print(json.dumps(result, indent=2))


def cmd_generate(args):
    from .pipeline import generate_cli
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    if args.batch_size < 1 or args.upscale < 1:
        raise CLIError(f"--batch-size and --upscale must be at least 1, got {args.batch_size} and {args.upscale}")
    if args.prompts_file:
        if args.prompt is not None:
            raise CLIError("give either a prompt or --prompts-file, not both")
        path = Path(args.prompts_file)
        if not path.is_file():
            raise CLIError(f"prompts file {path} does not exist")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise CLIError(f"prompts file {path} holds no prompts")
        if not args.out_dir:
            raise CLIError("--prompts-file needs --out-dir")
    elif args.prompt is not None:
        prompts = [args.prompt]
    else:
        raise CLIError("give a prompt, or --prompts-file FILE --out-dir DIR")
    if any(not p.strip() for p in prompts):
        raise CLIError("empty prompt; write what to draw, e.g. \"two red circles\"")
    generate_cli(prompts, checkpoint=args.checkpoint or DEFAULT_CHECKPOINT, out=args.out, out_dir=args.out_dir,
                 num_steps=args.steps, guidance_scale=args.guidance, guidance_schedule=args.guidance_schedule,
                 seed=args.seed, sampler=args.sampler, schedule=args.schedule, negative_prompt=args.negative_prompt,
                 choice_temperature=args.choice_temperature, history=args.history, batch_size=args.batch_size,
                 upscale_factor=args.upscale, precision=args.precision)


def cmd_bench(args):
    cfg = _config(args)
    from .bench import run_bench
    result = run_bench(cfg, checkpoint=args.checkpoint, batch_sizes=args.batch_sizes, steps=args.steps,
                       repeats=args.repeats, threads=args.threads)
    print(json.dumps(result, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minimuse", description="Muse-style masked generative text-to-image, small enough to read.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dataset", help="write shapes-world images, captions.jsonl and a contact sheet")
    d.add_argument("--n", type=int, required=True)
    d.add_argument("--out-dir", required=True)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_dataset)

    def add_preset(q):
        q.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)} (default: $MINIMUSE_PRESET or laptop)")
        q.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a config field, e.g. --set width=256")

    def add_sampling(q):  # defaults None: the checkpoint's measured best settings
        q.add_argument("--steps", type=int, default=None)
        q.add_argument("--guidance", type=float, default=None)
        q.add_argument("--guidance-schedule", choices=["constant", "linear"], default=None)
        q.add_argument("--sampler", choices=SAMPLER_NAMES, default=None)
        q.add_argument("--schedule", choices=SCHEDULE_NAMES, default=None)
        q.add_argument("--choice-temperature", type=float, default=None)
        q.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, faster on CPUs with bf16")

    t = sub.add_parser("train-tokenizer", help="train the VQ/FSQ image tokenizer")
    add_preset(t)
    t.add_argument("--out")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--stage", choices=["base", "superres"], default="base")
    t.set_defaults(fn=cmd_train_tokenizer)

    t = sub.add_parser("train", help="train the masked transformer on a trained tokenizer")
    add_preset(t)
    t.add_argument("--out")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--tokenizer", help="tokenizer checkpoint dir (default: OUT/tokenizer, else the shipped one)")
    t.set_defaults(fn=cmd_train)

    t = sub.add_parser("train-superres", help="train the super-resolution transformer (not implemented yet)")
    add_preset(t)
    t.add_argument("--out")
    t.add_argument("--resume", action="store_true")
    t.set_defaults(fn=cmd_train_superres)

    e = sub.add_parser("eval", help="print JSON metrics of a checkpoint: faithfulness per kind, PSNR, usage")
    e.add_argument("--checkpoint", help="a tokenizer dir or a pipeline dir (default: the shipped laptop checkpoint)")
    e.add_argument("--n", type=int, default=256, help="held-out prompts per caption kind")
    e.add_argument("--tokenizer-n", type=int, default=1000, help="held-out images for the tokenizer metrics")
    e.add_argument("--seed", type=int, default=None, help="prompt seed (default: the config's held-out eval seed)")
    add_sampling(e)
    e.set_defaults(fn=cmd_eval)

    g = sub.add_parser("generate", help="draw images from prompts")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--prompts-file")
    g.add_argument("--out", default=None, help="output PNG for a single prompt (default: out.png)")
    g.add_argument("--out-dir")
    g.add_argument("--checkpoint")
    g.add_argument("--seed", type=int, default=0)
    add_sampling(g)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--history", help="write a per-step strip (image, mask, confidence) to this PNG")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--upscale", type=int, default=1, help="nearest-neighbour upscale factor for the written PNGs")
    g.set_defaults(fn=cmd_generate)

    b = sub.add_parser("bench", help="print JSON: ms/image, tokens/s, achieved GFLOP/s against the matmul peak")
    add_preset(b)
    b.add_argument("--checkpoint", help="time a trained pipeline instead of a random-initialised model")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    b.add_argument("--steps", type=int, nargs="+", default=[8, 12, 24])
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--threads", type=int, default=None)
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    try:
        args.fn(args)
    except (CLIError, ConfigError, CheckpointError, ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"minimuse: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("minimuse."):
            raise
        print(f"minimuse: error: '{args.command}' is not implemented yet ({e.name} is missing)", file=sys.stderr)
        return 2
    return 0
