"""Reference outputs that a refactor must not change: the sha256 of every trainer's weights after a few `ci` steps with
a fixed seed, and of the images every sampler and edit draws from the shipped checkpoints for fixed seeds.

    python benchmarks/reference.py --record    # before a refactor: writes tests/reference/<machine>.json
    python benchmarks/reference.py             # after it: prints each output and whether it still matches

Floating-point results depend on the CPU's instruction set (oneDNN and MKL pick kernels by it), so references are kept
per machine (`machine_key`): on a machine with none, record them on the commit before the refactor (`git stash`, or a
worktree of that commit), then check the refactor against them. tests/test_reference.py runs the check where a record
exists. A change that truly has to alter an output (another order of random draws, say) says which and why in its
commit and records again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = ROOT / "tests" / "reference"
PROMPTS = ["two red circles", "a blue square to the left of a yellow triangle", "a green circle and a purple square"]


# The widest matmul instructions the CPU has, which pick oneDNN's and MKL's kernels: a CPU model name alone does not
# (two "AMD EPYC" machines here, one with AVX-512 bf16 and one with AVX2 only, train to different weights).
ISA_TAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def machine_key() -> str:
    """The CPU model, its widest matmul instructions and the torch version: outputs are bit-identical only for the
    same kernels."""
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        cpu = platform.processor() or cpu
    isa = next((tag for tag in ISA_TAGS if tag in flags), "other")
    name = f"{cpu} {isa} torch {torch.__version__} threads {torch.get_num_threads()}"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def digest(tensors: dict) -> str:
    """sha256 over the named tensors (or arrays) in name order, dtype and shape included."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def weights(run: Path, name: str) -> str:
    from safetensors.torch import load_file
    return digest(load_file(run / name / "model.safetensors"))


def trainers(tmp: Path) -> dict:
    """Every stage's trainer at ci size, a few steps each, from fixed seeds."""
    from minimuse.presets import get_config
    from minimuse.features import train_features
    from minimuse.tokenizer import Tokenizer
    from minimuse.train import train_critic, train_superres, train_transformer
    from minimuse.train_tokenizer import train_tokenizer
    from minimuse.train_tokenizer import finetune_decoder
    from safetensors.torch import load_file

    quick = {"train.steps": 6, "train.batch_size": 8, "data.pool_size": 64, "train.ckpt_every": 3, "train.log_every": 1}
    cfg = get_config("ci", **quick)
    torch.manual_seed(0)
    Tokenizer(cfg.tokenizer).save_pretrained(tmp / "tok", cfg)  # random: the transformer needs ids, not good images
    torch.manual_seed(1)
    Tokenizer(cfg.superres.tokenizer).save_pretrained(tmp / "srtok", cfg, stage="superres")
    out = {}
    train_tokenizer(get_config("ci", **{"tokenizer.steps": 8, "tokenizer.ckpt_every": 4}), tmp / "tokenizer")
    out["tokenizer"] = weights(tmp, "tokenizer")
    for name, over in (("masked", {}), ("autoregressive", {"transformer.kind": "autoregressive"}),
                       ("masked_every_option", {"train.mixed_precision": "bf16", "train.ema_decay": 0.9,
                                                "train.min_mask_rate": 0.2, "train.rect_mask_prob": 0.5,
                                                "train.label_smoothing": 0.1, "train.cond_drop_prob": 0.3}),
                       ("masked_qk_norm", {"transformer.qk_norm": True})):
        train_transformer(get_config("ci", **quick, **over), tmp / name, tokenizer_dir=tmp / "tok")
        out[name] = weights(tmp / name, "transformer")
    train_critic(get_config("ci", **quick, **{"transformer.kind": "critic"}), tmp / "critic", generator=tmp / "masked")
    out["critic"] = weights(tmp / "critic", "critic")
    sr = {"superres.train.steps": 6, "superres.train.batch_size": 8, "superres.train.ckpt_every": 3}
    train_superres(get_config("ci", **quick, **sr), tmp / "superres", tokenizer_dir=tmp / "tok",
                   superres_tokenizer_dir=tmp / "srtok")
    out["superres"] = weights(tmp / "superres", "superres")
    torch.manual_seed(2)
    Tokenizer(cfg.superres.tokenizer).save_pretrained(tmp / "pipe" / "superres_tokenizer", cfg, stage="superres")
    finetune_decoder(get_config("ci"), tmp / "pipe", tmp / "decoder", eval_n=8)
    out["decoder_finetune"] = digest(load_file(tmp / "decoder" / "model.safetensors"))
    train_features(get_config("ci"), tmp / "features", steps=6)
    out["features"] = weights(tmp, "features")
    return out


def samplers() -> dict:
    """Images drawn by the shipped checkpoints for fixed seeds: every commit rule, the cascade and every edit."""
    from minimuse.pipeline import DEFAULT_CHECKPOINT, load_pipeline
    pipe = load_pipeline(DEFAULT_CHECKPOINT, device="cpu")
    # The settings the first references were recorded with, named, so that a change of the checkpoint's sampling
    # defaults is not read as a change of the code; `sample_default` draws at whatever the checkpoint now holds.
    pinned = dict(sampler="confidence", remask_prob=0.05)
    out = {"sample_default": digest({"images": pipe(PROMPTS, seed=7, superres=False)})}
    for rule in ("confidence", "halton", "random", "remask", "critic"):
        out[f"sample_{rule}"] = digest({"images": pipe(PROMPTS, seed=0, num_steps=8, superres=False, **{**pinned, "sampler": rule})})
    out["sample_cascade"] = digest({"images": pipe(PROMPTS[:1], seed=1, superres=True, **pinned)})
    ar = load_pipeline(DEFAULT_CHECKPOINT.parent / "laptop-ar", device="cpu")
    out["sample_autoregressive"] = digest({"images": ar(PROMPTS, seed=6, superres=False)})
    base = pipe(PROMPTS, seed=2, superres=False, **pinned)
    masks = np.zeros(base.shape[:3], dtype=bool)
    masks[:, :, base.shape[2] // 2:] = True  # regenerate the right half
    out["inpaint"] = digest({"images": pipe.inpaint(base, masks, PROMPTS, seed=3, **pinned)})
    out["outpaint"] = digest({"images": pipe.outpaint(base[:1], PROMPTS[:1], extend="right:8", seed=4, **pinned)})
    out["edit"] = digest({"images": pipe.edit(base[:1], PROMPTS[1:2], num_iters=4, seed=5)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="write the reference of this machine (before a refactor)")
    ap.add_argument("--only", choices=["trainers", "samplers"], help="one half only")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)  # the reference is per thread count too (machine_key)
    with tempfile.TemporaryDirectory() as tmp:
        got = {}
        if args.only != "samplers":
            got.update(trainers(Path(tmp)))
        if args.only != "trainers":
            got.update(samplers())
    path = REFERENCE_DIR / f"{machine_key()}.json"
    if args.record:
        from minimuse.checkpoint import atomic_write_json
        old = json.loads(path.read_text())["outputs"] if path.is_file() else {}
        atomic_write_json(path, {"machine": machine_key(), "outputs": {**old, **got}})
        print(f"recorded {len(got)} outputs in {path}")
        return 0
    want = json.loads(path.read_text())["outputs"] if path.is_file() else {}
    bad = [k for k in got if k in want and want[k] != got[k]]
    for k, v in got.items():
        print(f"{k:22s} {v[:16]}  {'no reference' if k not in want else 'same' if k not in bad else 'CHANGED'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
