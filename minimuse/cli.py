"""Command line: `minimuse SUBCOMMAND ...` and `python -m minimuse SUBCOMMAND ...`.

Thin wrappers over the package functions (the commands of docs/CONTRACTS.md): each subcommand parses its arguments, checks them once,
before anything slow, calls one function, and turns the package's errors into one line on stderr with exit code 2
(MINIMUSE_DEBUG=1 shows the traceback instead). Nothing here holds maths. docs/CLI.md and
notebooks/00_overview.ipynb list every command.
"""
from __future__ import annotations

import argparse
import os
import sys

from .checkpoint import CheckpointError
from .commands import (CLIError, cmd_bench, cmd_dataset, cmd_edit, cmd_eval,
                       cmd_finetune_decoder, cmd_generate, cmd_outpaint, cmd_pretokenize, cmd_sweep, cmd_train,
                       cmd_train_critic, cmd_train_features, cmd_train_superres, cmd_train_tokenizer, cmd_upscale)
from .config import EVAL_TASKS, SAMPLER_NAMES, SCHEDULE_NAMES, ConfigError
from .presets import PRESETS
from .sweep import PARAMS as SWEEP_PARAMS


class _Parser(argparse.ArgumentParser):
    """argparse, except that a mistake is one line like every other error here (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"minimuse: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minimuse", description="Muse-style masked generative text-to-image, small enough to read.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_data_commands, _train_commands, _draw_commands, _measure_commands):
        add(sub)
    return p


# Flags several commands share.
def _add_preset(q):
    q.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)} (default: $MINIMUSE_PRESET or laptop)")
    q.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a config field, e.g. --set width=256")


def _add_run(q):  # a directory holding a run is only trained in again when the user says how
    q.add_argument("--out")
    q.add_argument("--resume", action="store_true", help="continue the run in --out")
    q.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")


def _add_io(q, device: bool = True):  # what every command that loads a checkpoint and writes images takes
    q.add_argument("--checkpoint", help="a pipeline checkpoint folder (default: the shipped laptop checkpoint)")
    q.add_argument("--seed", type=int, default=0)
    if device:
        q.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    q.add_argument("--overwrite", action="store_true", help="replace output files that already exist")


def _add_sampling(q):  # defaults None: the checkpoint's measured best settings
    q.add_argument("--steps", type=int, default=None)
    q.add_argument("--guidance", type=float, default=None)
    q.add_argument("--guidance-schedule", choices=["constant", "linear"], default=None)
    q.add_argument("--sampler", choices=SAMPLER_NAMES, default=None)
    q.add_argument("--schedule", choices=SCHEDULE_NAMES, default=None)
    q.add_argument("--choice-temperature", type=float, default=None)
    q.add_argument("--temperature", type=float, default=None, help="softmax temperature of the token draws")
    q.add_argument("--top-k", type=int, default=None, help="draw from the k most likely tokens (0: all)")
    q.add_argument("--remask-prob", type=float, default=None, help="sampler remask: chance a committed token rejoins")
    q.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, faster on CPUs with bf16")
    q.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")


def _add_data(q, images: bool = False):
    if images:
        q.add_argument("--data", help="an image folder or saved Hugging Face dataset (default: the shapes world)")
        q.add_argument("--caption-column", default="text")
    else:
        q.add_argument("--data", help="shards from `minimuse pretokenize` (default: the shapes world)")


def _data_commands(sub):
    d = sub.add_parser("dataset", help="write shapes-world (or digits, or Nouns) images with their captions")
    d.add_argument("--n", type=int, default=None, help="images to draw (shapes, nouns)")
    d.add_argument("--out-dir", required=True)
    d.add_argument("--format", choices=["pngs", "imagefolder"], default="pngs",
                   help="pngs: captions.jsonl and grid.png; imagefolder: Hugging Face's metadata.jsonl layout")
    d.add_argument("--source", choices=["shapes", "digits", "nouns"], default="shapes",
                   help="digits: scikit-learn's 1,797 handwritten scans, upsampled, in train/ and test/; "
                   "nouns: CC0 pixel-art characters (docs/NOUNS.md)")
    d.add_argument("--split", choices=["train", "heldout"], default=None, help="nouns: which split (default: train)")
    d.add_argument("--assets", default=None, help="nouns: @nouns/assets' dist/image-data.json (default: the cache, "
                   "else fetched once with npm)")
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true", help="replace files already in --out-dir")
    d.set_defaults(fn=cmd_dataset)

    k = sub.add_parser("pretokenize", help="encode an image-text dataset once into token and caption shards")
    _add_preset(k)
    k.add_argument("--data", required=True, help="an image folder (metadata.jsonl) or a dataset saved with save_to_disk")
    k.add_argument("--tokenizer", required=True, help="tokenizer checkpoint dir (the base one)")
    k.add_argument("--superres-tokenizer", help="also: shards for train-superres (high-res ids + low-res ids)")
    k.add_argument("--out", required=True)
    k.add_argument("--caption-column", default="text")
    k.add_argument("--split", default="train")
    k.add_argument("--streaming", action="store_true", help="read the dataset as a stream, without an Arrow copy")
    k.add_argument("--shard-size", type=int, default=10_000)
    k.add_argument("--batch-size", type=int, default=256)
    k.add_argument("--overwrite", action="store_true", help="replace shards made with another tokenizer or source")
    k.set_defaults(fn=cmd_pretokenize)


def _train_commands(sub):
    t = sub.add_parser("train-features", help="train the shapes feature network that FID is measured in")
    _add_preset(t)
    _add_run(t)
    t.set_defaults(fn=cmd_train_features)

    t = sub.add_parser("train-tokenizer", help="train the VQ/FSQ image tokenizer")
    _add_preset(t)
    _add_run(t)
    _add_data(t, images=True)
    t.add_argument("--stage", choices=["base", "superres"], default="base")
    t.set_defaults(fn=cmd_train_tokenizer)

    t = sub.add_parser("train", help="train the masked transformer on a trained tokenizer")
    _add_preset(t)
    _add_run(t)
    _add_data(t)
    t.add_argument("--tokenizer", help="tokenizer checkpoint dir (default: OUT/tokenizer, else the shipped one)")
    t.add_argument("--report", action="store_true",
                   help="end with one line (and OUT/report.json): minutes, steps/s, achieved GFLOP/s, %% of the measured matmul peak")
    t.set_defaults(fn=cmd_train)

    t = sub.add_parser("train-superres", help="train the super-resolution transformer (Muse §2.4) on both tokenizers")
    _add_preset(t)
    _add_run(t)
    _add_data(t)
    t.add_argument("--tokenizer", help="base tokenizer dir (default: OUT/tokenizer, else the shipped one)")
    t.add_argument("--superres-tokenizer", help="high-res tokenizer dir (default: OUT/superres_tokenizer, else the shipped one)")
    t.add_argument("--report", action="store_true", help="end with the minutes, steps/s and %% of peak line (OUT/report.json)")
    t.set_defaults(fn=cmd_train_superres)

    t = sub.add_parser("train-critic", help="train a Token-Critic on a generator's samples (sampler critic)")
    t.add_argument("--preset", default="laptop-critic", help=f"one of: {', '.join(PRESETS)} (default: laptop-critic)")
    t.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a config field")
    _add_run(t)
    _add_data(t)
    t.add_argument("--generator", required=True, help="the pipeline checkpoint whose samples it judges (with tokenizer/)")
    t.set_defaults(fn=cmd_train_critic)

    t = sub.add_parser("finetune-decoder", help="train a larger decoder on the frozen super-res tokens (Muse §2.5)")
    _add_preset(t)
    _add_run(t)
    t.add_argument("--checkpoint", help="a folder holding superres_tokenizer/ (default: the shipped laptop checkpoint)")
    t.add_argument("--eval-n", type=int, default=1000, help="held-out images for the PSNR before and after")
    t.set_defaults(fn=cmd_finetune_decoder)


def _draw_commands(sub):
    g = sub.add_parser("generate", help="draw images from prompts")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--prompts-file")
    g.add_argument("--out", default=None, help="output PNG for a single prompt (default: out.png)")
    g.add_argument("--out-dir")
    _add_sampling(g)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--history", help="write the decoding step by step (about six steps: image, mask, commits, confidence, entropy) to this PNG")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--enlarge", type=int, default=None, help="nearest-neighbour enlargement of the written PNGs (1 to 32)")
    g.add_argument("--upscale", type=int, default=None, help=argparse.SUPPRESS)  # --enlarge's old spelling, deprecated
    g.add_argument("--no-superres", action="store_true", help="write the base stage's output, skipping the super-res stage")
    _add_io(g, device=False)  # --device comes with the sampling flags
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
    _add_io(u)
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
    _add_io(x)
    x.set_defaults(fn=cmd_edit)

    o = sub.add_parser("outpaint", help="extend an image beyond one side under a prompt")
    o.add_argument("image")
    o.add_argument("--prompt", required=True)
    o.add_argument("--extend", default="right:16", help="SIDE:PIXELS, SIDE one of right, left, top, bottom")
    o.add_argument("--out", default="outpainted.png")
    _add_io(o)
    o.set_defaults(fn=cmd_outpaint)


def _measure_commands(sub):
    e = sub.add_parser("eval", help="print JSON metrics of a checkpoint: faithfulness per kind, PSNR, usage")
    e.add_argument("--checkpoint", help="a tokenizer dir or a pipeline dir (default: the shipped laptop checkpoint)")
    e.add_argument("--n", type=int, default=256, help="held-out prompts per caption kind")
    e.add_argument("--tokenizer-n", type=int, default=1000, help="held-out images for the tokenizer metrics (0 skips them)")
    e.add_argument("--seed", type=int, default=None, help="prompt seed (default: the config's held-out eval seed)")
    e.add_argument("--task", choices=list(EVAL_TASKS), default="generate",
                   help="superres: upscaling PSNR against bicubic, the leak test and the cascade's faithfulness "
                        "(docs/SUPERRES.md); inpaint, edit, outpaint: success and preservation on n held-out scenes; "
                        "counts: faithfulness per partition of the object count into groups, n prompts each; "
                        "nouns: each part's accuracy on n held-out Nouns characters (docs/NOUNS.md)")
    _add_sampling(e)
    e.add_argument("--fid", action="store_true", help="also FID against true renders and diversity over 8 seeds")
    e.add_argument("--fid-features", help="the FID feature network (default: data/checkpoints/features)")
    e.add_argument("--assets", default=None, help="--task nouns: @nouns/assets' dist/image-data.json (default: the cache, "
                   "else npm; docs/NOUNS.md)")
    e.set_defaults(fn=cmd_eval)

    w = sub.add_parser("sweep", help="faithfulness (Wilson 95%%), FID and diversity over a grid of sampling settings")
    w.add_argument("--checkpoint", help="a pipeline checkpoint folder (default: the shipped laptop checkpoint)")
    w.add_argument("--param", action="append", required=True, help=f"a setting to vary: {', '.join(SWEEP_PARAMS)}")
    w.add_argument("--values", action="append", required=True, help="its comma-separated values, one --values per --param")
    w.add_argument("--n", type=int, default=64, help="held-out prompts per caption kind, per seed")
    w.add_argument("--seeds", type=int, default=1, help="prompt seeds per point (n * kinds * seeds images judged)")
    w.add_argument("--out", required=True, help="folder for sweep.jsonl and sweep.png")
    w.add_argument("--diversity-prompts", type=int, default=4, help="prompts whose 8 seeds measure diversity")
    w.add_argument("--fid-features", help="the FID feature network (default: data/checkpoints/features)")
    w.add_argument("--resume", action="store_true", help="continue the sweep in --out, skipping finished points")
    w.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a sweep")
    w.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    w.set_defaults(fn=cmd_sweep)

    b = sub.add_parser("bench", help="print JSON: ms/image, tokens/s, achieved GFLOP/s against the matmul peak")
    _add_preset(b)
    b.add_argument("--checkpoint", help="time a trained pipeline instead of a random-initialised model")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    b.add_argument("--steps", type=int, nargs="+", default=[8, 12, 24])
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the sampler under bf16 autocast, measured against the bf16 peak")
    b.add_argument("--compare-ar", action="store_true",
                   help="time parallel decoding against the cached autoregressive model of equal size instead")
    b.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024],
                   help="with --compare-ar: image tokens per image (square grids)")
    b.add_argument("--ar-checkpoint", help="with --compare-ar: a trained autoregressive pipeline (e.g. "
                   "data/checkpoints/laptop-ar), used with --checkpoint at its own token count")
    b.add_argument("--device", default=None, help="with --compare-ar: where to time both decoders (cpu, the default, "
                   "or cuda); on CUDA every timed call ends with a synchronize")
    b.set_defaults(fn=cmd_bench)


def _debug() -> bool:
    """MINIMUSE_DEBUG turns tracebacks on only when set to 1, true or yes (any case): 0, false or no keep them off."""
    return os.environ.get("MINIMUSE_DEBUG", "").strip().lower() in ("1", "true", "yes")


def _fail(e) -> int:
    if _debug():
        raise  # the exception being handled, with its traceback
    print(f"minimuse: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the message held
    return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
