"""Evaluation: how well the tokenizer reconstructs held-out images, prompt faithfulness, FID and diversity.

Tokenizer quality is measured the way the VQGAN/Muse papers report it, on images never seen in training:
PSNR of decode(encode(x)) against x, the share of the K codes in use, and the perplexity of the code histogram
(Muse §2.2 picks its tokenizer by reconstruction quality; FSQ's paper compares usage). Held-out images come from
shapes stream `cfg.data.eval_seed`, which training never reads. Taught in notebooks/02_tokenizer.ipynb.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .checkpoint import CheckpointError, read_config
from .config import EVAL_TASKS, Config
from .data import ShapesDataset, eval_prompts, make_sample, render, to_tensor
from .digits import eval_digits
from .eval_counts import eval_counts
from .eval_nouns import eval_nouns
from .nouns import load as load_nouns
from .eval_edits import evaluate_edits
from .judge import find_objects, score
from .metrics import fid, psnr_from_mse, wilson  # noqa: F401 (fid: minimuse.eval.fid, as notebook 09 calls it)
from .pipeline import MusePipeline, load_pipeline
from .superres import decimate_uint8
from .quantizer import codebook_usage, perplexity
from .tokenizer import Tokenizer


def diversity(images, features) -> dict:
    """Spread of one prompt's samples (uint8 (n, S, S, 3), n seeds): the mean pairwise distance of their feature
    vectors, and the mean distance of the judge's object centroids from their mean, in pixels (0 = the same layout)."""
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div(255)  # (n, 3, S, S)
    with torch.no_grad():
        f = features(x)  # (n, F)
    n = len(f)
    pair = torch.cdist(f, f).sum() / (n * (n - 1))
    found = [find_objects(im) for im in images]
    cents = [np.mean([o["centroid"] for o in objs], axis=0) for objs in found if objs]  # each image's mean centroid
    spread = float(np.linalg.norm(np.asarray(cents) - np.mean(cents, axis=0), axis=1).mean()) if len(cents) > 1 else 0.0
    return {"feature_distance": round(float(pair), 4), "centroid_spread_px": round(spread, 3), "n": n}


def eval_fid(pipe, features, n_per_kind: int = 64, seed: int | None = None, n_diversity: int = 8, **sampling) -> dict:
    """`minimuse eval --fid`: FID between the model's images for the held-out prompts and true renders of the same
    prompts (each spec drawn once more, at the base size), beside the FID of a second set of true renders (the floor
    at this n), and the mean diversity of n_diversity prompts over 8 seeds."""
    seed = pipe.config.data.eval_seed if seed is None else seed
    S = pipe.config.data.image_size
    prompts = eval_prompts(n_per_kind, seed)
    fake = np.concatenate([pipe([c for c, _, _ in prompts[i:i + 128]], seed=seed + i, superres=False, **sampling)
                           for i in range(0, len(prompts), 128)])
    real = np.stack([render(spec, S, np.random.default_rng((seed, i, 7))) for i, (_, spec, _) in enumerate(prompts)])
    # the floor: a second true render of each prompt, so FID's own finite-sample bias at this n is in the JSON too
    again = np.stack([render(spec, S, np.random.default_rng((seed, i, 8))) for i, (_, spec, _) in enumerate(prompts)])
    to_x = lambda a: torch.stack([to_tensor(im) for im in a])  # (N, 3, S, S)
    picks = prompts[::max(1, len(prompts) // n_diversity)][:n_diversity]
    div = [diversity(np.concatenate([pipe([c], seed=k, superres=False, **sampling) for k in range(8)]), features)
           for c, _, _ in picks]
    return {"fid": round(fid(to_x(real), to_x(fake), features), 3), "n": len(prompts),
            "fid_real_vs_real": round(fid(to_x(real), to_x(again), features), 3),
            "diversity": {"feature_distance": round(float(np.mean([d["feature_distance"] for d in div])), 4),
                          "centroid_spread_px": round(float(np.mean([d["centroid_spread_px"] for d in div])), 3),
                          "prompts": len(div), "seeds": 8}}


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


# ------------------------------------------------------------------------------------------------- faithfulness
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
    images are appended, batch by batch, to `keep` when it is a list (sweep.py measures FID on them)."""
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
    settings = {**dataclasses.asdict(pipe.settings(**{k: v for k, v in sampling.items() if k not in ("precision", "superres")})),
                "precision": sampling.get("precision", "fp32")}
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
    hi_tok = pipe.superres_tokenizer
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
        dev = next(hi_tok.parameters()).device
        recon = hi_tok.decode(hi_tok.encode(hi.to(dev))).cpu()
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


def eval_superres(pipe, n: int = 64, n_images: int = 256, seed: int | None = None) -> dict:
    """The super-res stage's evidence (`minimuse eval --task superres`): upscaling PSNR against bicubic and the leak
    test on n_images held-out renders, and faithfulness on n held-out prompts per kind of the base output (32 px), of
    the cascade (64 px), and of the cascade judged at 32 px. The three share seeds, so the base stage draws the same
    tokens in each: the differences are the super-res stage's alone."""
    if pipe.superres is None or pipe.transformer is None:
        raise ValueError("--task superres needs a cascade checkpoint: tokenizer/, transformer/, superres/ and superres_tokenizer/")
    upscale = eval_upscale(pipe, n_images, seed)
    shuffled = eval_upscale(pipe, n_images, seed, shuffle_lowres=True)
    base = eval_faithfulness(pipe, n, seed, superres=False)
    # the cascade is drawn once and judged twice: as drawn, and box-decimated to the base size
    cascade, at_base = faithfulness_at(pipe, n, seed, None, 128, (None, pipe.config.data.image_size), superres=True)
    kept = {k: round(at_base["by_kind"][k] / base["by_kind"][k], 4) if base["by_kind"][k] else None for k in base["by_kind"]}
    return {"upscale": upscale, "leak_test": {"shuffled_psnr": shuffled["superres_psnr"],
                                              "drop_db": round(upscale["superres_psnr"] - shuffled["superres_psnr"], 2)},
            "faithfulness": {"base": base, "cascade": cascade, "cascade_judged_at_base_size": at_base},
            "kept_at_base_size": {"overall": round(at_base["overall"] / base["overall"], 4) if base["overall"] else None,
                                  "by_kind": kept},
            "cascade_minus_base_points": {k: round(100 * (cascade["by_kind"][k] - base["by_kind"][k]), 1)
                                          for k in base["by_kind"]}}


def evaluate(checkpoint, n: int = 256, tokenizer_n: int = 1000, seed: int | None = None, device=None,
             task: str = "generate", fid_features=None, assets=None, **sampling) -> dict:
    """What `minimuse eval` prints: tokenizer metrics for a tokenizer dir; for a pipeline dir (tokenizer/ and
    transformer/), the tokenizer metrics plus faithfulness per caption kind and per count under the checkpoint's
    sampling defaults, or the `sampling` overrides (num_steps, guidance_scale, sampler, ...). task="superres" is
    eval_superres on a cascade checkpoint (n prompts per kind); "inpaint", "edit" and "outpaint" are eval_edits' (n
    held-out scenes); "digits" is digits.eval_digits (n images per digit); "counts" is eval_counts (n prompts for
    each partition of the object count into groups, under the sampling overrides); "nouns" is eval_nouns (n held-out
    Nouns characters, each part judged; `assets` is the artwork's JSON, default nouns.load's search)."""
    from pathlib import Path
    root = Path(checkpoint)
    if (root / "config.json").is_file() and read_config(root).get("kind") == "tokenizer":
        if tokenizer_n < 1:
            raise ValueError(f"tokenizer_n={tokenizer_n}: {root} is a tokenizer, and its metrics are all eval has to give")
        return {"checkpoint": str(root), "tokenizer": eval_tokenizer(root, tokenizer_n, seed)}
    if not (root / "transformer").is_dir():
        raise CheckpointError(f"no checkpoint at {root}: expected a tokenizer dir or a pipeline dir with tokenizer/ and transformer/")
    pipe = load_pipeline(root, device=device)
    if task == "superres":
        return {"checkpoint": str(root), "superres": eval_superres(pipe, n, seed=seed)}
    if task == "digits":  # a model trained on the handwritten digits, judged by the classifier of digits.py
        return {"checkpoint": str(root), "digits": eval_digits(pipe, n, 0 if seed is None else seed, **sampling)}
    if task == "counts":
        return {"checkpoint": str(root), "counts": eval_counts(pipe, n, seed, **sampling)}
    if task == "nouns":  # a model trained on the Nouns characters, judged part by part on held-out pairings
        return {"checkpoint": str(root), "nouns": eval_nouns(pipe, n, 0 if seed is None else seed, nouns=load_nouns(assets),
                                                             **sampling)}
    if task in ("inpaint", "edit", "outpaint"):
        return {"checkpoint": str(root), task: evaluate_edits(pipe, task, n, seed, **sampling)}
    if task != "generate":
        raise ValueError(f"unknown eval task {task!r}; choose one of: {', '.join(EVAL_TASKS)}")
    out = {"checkpoint": str(root), "faithfulness": eval_faithfulness(pipe, n, seed, **sampling)}
    if fid_features is not None:  # --fid: FID and diversity in the shapes feature network's space (features.py)
        res = eval_fid(pipe, fid_features, n, seed, **{k: v for k, v in sampling.items() if k != "precision"})
        out.update(fid=res["fid"], fid_n=res["n"], fid_real_vs_real=res["fid_real_vs_real"], diversity=res["diversity"],
                   fid_features=getattr(fid_features, "held_out", None))
    if tokenizer_n > 0:  # 0 skips the tokenizer metrics, e.g. in a sweep over sampling settings
        out["tokenizer"] = eval_tokenizer(root / "tokenizer", tokenizer_n)
    return out
