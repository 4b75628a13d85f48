"""The held-out measurements that training logs and `minimuse eval` reports: a tokenizer's PSNR, codebook usage and
perplexity; faithfulness per caption kind and per count, judged by judge.score (docs/JUDGE.md); the super-res stage's
PSNR against bicubic (Muse §2.4); and the quick evaluations the training loop calls every train.eval_every steps.
Machinery below both: eval.py (the command) and the trainers import them from here. Taught in notebooks/05_training.ipynb
and 07_superres.ipynb.
"""
from __future__ import annotations

import dataclasses

import torch

from .checkpoint import read_config
from .config import Config
from .data import ShapesDataset, eval_prompts, make_sample, to_tensor
from .judge import score
from .metrics import psnr_from_mse
from .pipeline import MusePipeline
from .quantizer import codebook_usage, perplexity
from .superres import decimate_uint8
from .tokenizer import Tokenizer


@torch.no_grad()
def eval_tokenizer(ckpt_dir, n: int = 1000, seed: int | None = None, batch_size: int = 100) -> dict:
    """Reconstruct n held-out shapes images -> {psnr, usage, perplexity, n}.

    PSNR is over all n images (10 log10(1 / MSE) for pixels in [0, 1]); usage is the fraction of the K codes used
    at least once; seed defaults to the checkpoint's data.eval_seed.
    """

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    meta = read_config(ckpt_dir, "tokenizer")
    cfg = Config.from_dict(meta["config"])
    size = cfg.data.image_size if meta.get("stage", "base") == "base" else cfg.superres.image_size
    tok = Tokenizer.from_pretrained(ckpt_dir)
    data = ShapesDataset(size=size, seed=cfg.data.eval_seed if seed is None else seed, length=n)
    sq_err, all_ids = 0.0, []
    for start in range(0, n, batch_size):
        images = torch.stack([data[i]["image"] for i in range(start, min(n, start + batch_size))])  # (B, 3, S, S)
        ids = tok.encode(images)  # (B, h, w)
        sq_err += (tok.decode(ids) - images).pow(2).sum().item()
        all_ids.append(ids)
    ids = torch.cat(all_ids)  # (n, h, w)
    mse = sq_err / (n * 3 * size * size)
    return {"psnr": psnr_from_mse(mse), "usage": codebook_usage(ids, tok.codebook_size),
            "perplexity": perplexity(ids, tok.codebook_size), "n": n}


def sampling_record(pipe, sampling: dict) -> dict:
    """The settings images were drawn with, for an evaluation's report: the checkpoint's sampling defaults with the
    call's overrides applied, and the precision."""
    given = {k: v for k, v in sampling.items() if k not in ("precision", "superres")}
    return {**dataclasses.asdict(pipe.settings(**given)), "precision": sampling.get("precision", "fp32")}


def eval_faithfulness(pipe, n_per_kind: int = 256, seed: int | None = None, kinds=None, batch_size: int = 128,
                      judge_size: int | None = None, **sampling) -> dict:
    """Generate one image per held-out canonical prompt and judge it with judge.score (docs/JUDGE.md).

    Returns overall accuracy, accuracy per caption kind, and per count for the `count` kind (with `single` as
    count 1), plus the sampling settings used. Prompts come from the eval seed, never used in training.
    judge_size box-decimates each image to that side before judging (a cascade's 64 px output judged at 32 px).
    """
    return faithfulness_at(pipe, n_per_kind, seed, kinds, batch_size, (judge_size,), **sampling)[0]


def faithfulness_at(pipe, n_per_kind: int, seed: int | None, kinds, batch_size: int, judge_sizes, keep: list | None = None,
                    **sampling) -> list:
    """eval_faithfulness judged at each of `judge_sizes` (None: as drawn) from one set of images, drawn once; the
    images are appended, batch by batch, to `keep` when it is a list (sweep.py measures FID on them). A cascade
    pipeline is judged on its base stage unless superres=True is given (eval_superres measures the cascade)."""
    sampling = {"superres": False, **sampling}
    cfg = pipe.config
    seed = cfg.data.eval_seed if seed is None else seed
    prompts = eval_prompts(n_per_kind, seed=seed, kinds=kinds or cfg.data.kinds)
    tallies = [({}, {}, []) for _ in judge_sizes]  # per size: ok by kind, ok by count, failures
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        drawn = pipe([c for c, _, _ in chunk], seed=seed + start, **sampling)
        if keep is not None:
            keep.append(drawn)
        for size, (ok_by_kind, ok_by_count, fails) in zip(judge_sizes, tallies):
            images = drawn if size in (None, drawn.shape[1]) else decimate_uint8(drawn, drawn.shape[1] // size)
            for (caption, spec, kind), image in zip(chunk, images):
                ok, reason = score(image, spec)
                ok_by_kind.setdefault(kind, []).append(ok)
                if kind in ("single", "count"):
                    ok_by_count.setdefault(str(spec.objects[0][0]), []).append(ok)
                if not ok and len(fails) < 10:
                    fails.append({"caption": caption, "reason": reason})
    mean = lambda xs: round(sum(xs) / len(xs), 4)
    settings = sampling_record(pipe, sampling)
    return [{"overall": mean([ok for oks in ok_by_kind.values() for ok in oks]),
             "by_kind": {k: mean(v) for k, v in ok_by_kind.items()},
             "by_count": {k: mean(v) for k, v in sorted(ok_by_count.items())}, "n_per_kind": n_per_kind,
             "settings": settings, "examples_failed": fails} for ok_by_kind, ok_by_count, fails in tallies]


def _psnr_db(sq_err: float, count: int) -> float:
    return psnr_from_mse(sq_err / count)


@torch.no_grad()
def eval_upscale(pipe, n: int = 256, seed: int | None = None, batch_size: int = 64, shuffle_lowres: bool = False) -> dict:
    """The super-res stage on n held-out scenes rendered at superres.image_size (Muse §2.4): each is box-decimated to
    the base size, read by the base tokenizer and upscaled under its true caption. PSNR against the true render of
    the super-res output, of bicubic upsampling of the decimated image, and of the super-res tokenizer's own
    reconstruction (the ceiling any model on its tokens has). shuffle_lowres permutes each image's low-res tokens
    before upscaling: the leak test, since a model that ignored its conditioning would not notice."""
    import torch.nn.functional as F
    cfg = pipe.config
    S, s = cfg.superres.image_size, cfg.data.image_size
    seed = cfg.data.eval_seed if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    sq = {"superres": 0.0, "bicubic": 0.0, "tokenizer": 0.0}
    superres_tokenizer = pipe.superres_tokenizer
    for start in range(0, n, batch_size):
        samples = [make_sample(seed, i, S, cfg.data.kinds) for i in range(start, min(n, start + batch_size))]
        hi = torch.stack([to_tensor(x["image"]) for x in samples])                       # (b, 3, S, S)
        lo = decimate_uint8((hi * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), S // s)  # (b, s, s, 3)
        lo_ids = pipe.encode_images(lo)                                                   # (b, h, w)
        if shuffle_lowres:
            b, h, w = lo_ids.shape
            perm = torch.rand(b, h * w, generator=g).argsort(1).to(lo_ids.device)
            lo_ids = lo_ids.reshape(b, -1).gather(1, perm).view(b, h, w)                  # (b, L) -> (b, h, w)
        ids, _ = pipe.upscale_ids(lo_ids, [x["caption"] for x in samples], seed=seed + start)
        out = torch.from_numpy(pipe.decode(ids, "superres")).permute(0, 3, 1, 2).float() / 255  # (b, 3, S, S)
        lo_f = torch.from_numpy(lo).permute(0, 3, 1, 2).float() / 255                     # (b, 3, s, s)
        bicubic = F.interpolate(lo_f, scale_factor=S // s, mode="bicubic", align_corners=False).clamp(0, 1)
        dev = next(superres_tokenizer.parameters()).device
        recon = superres_tokenizer.decode(superres_tokenizer.encode(hi.to(dev))).cpu()
        for k, x in (("superres", out), ("bicubic", (bicubic * 255).round() / 255), ("tokenizer", recon)):
            sq[k] += (x - hi).pow(2).sum().item()
    count = n * 3 * S * S
    r = {f"{k}_psnr": round(_psnr_db(v, count), 2) for k, v in sq.items()}
    return {**r, "gain_over_bicubic_db": round(r["superres_psnr"] - r["bicubic_psnr"], 2), "n": n,
            "shuffled_lowres": shuffle_lowres}


def quick_superres_eval_fn(cfg, tokenizer, superres_tokenizer, text_encoder, n_images: int):
    """What train_superres logs every train.eval_every steps: PSNR of the upscaled held-out images and of bicubic."""

    def run(model, step):
        pipe = MusePipeline(cfg, tokenizer, text_encoder, None, model, superres_tokenizer)
        r = eval_upscale(pipe, n_images)
        model.train()
        return {"sr_psnr": r["superres_psnr"], "bicubic_psnr": r["bicubic_psnr"]}
    return run


def quick_eval_fn(cfg, tokenizer, text_encoder, n_prompts: int):
    """The sample-and-score that train_transformer runs every train.eval_every steps: a few held-out prompts per kind."""
    per_kind = max(1, n_prompts // len(cfg.data.kinds))

    def run(model, step):
        pipe = MusePipeline(cfg, tokenizer, text_encoder, model)
        r = eval_faithfulness(pipe, per_kind)
        model.train()
        return {"faithfulness": r["overall"], **{f"faith_{k}": v for k, v in r["by_kind"].items()}}
    return run
