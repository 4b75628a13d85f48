"""`minimuse eval`: what a checkpoint is judged by, task by task. For a tokenizer, its reconstruction metrics; for a
pipeline, faithfulness per caption kind (and the tokenizer's metrics), or FID and diversity (--fid), the super-res
stage, the edits, the digits, the counts or the Nouns characters (--task). The measurements that training logs too
live in measures.py; this module adds FID and diversity, and dispatches. Taught in notebooks/09_experiments.ipynb.
"""
from __future__ import annotations

import numpy as np
import torch

from .checkpoint import CheckpointError, read_config
from .config import EVAL_TASKS
from .data import eval_prompts, render, to_tensor
from .digits import eval_digits
from .eval_counts import eval_counts
from .eval_nouns import eval_nouns
from .nouns import load as load_nouns
from .eval_edits import evaluate_edits
from .judge import find_objects
from .measures import eval_faithfulness, eval_tokenizer, eval_upscale, faithfulness_at
from .metrics import fid
from .pipeline import load_pipeline


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


# ------------------------------------------------------------------------------------------------- faithfulness
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
    transformer/), the tokenizer metrics plus faithfulness per caption kind and per count of the base stage (a
    cascade's super-res stage is left out: task="superres" measures it) under the checkpoint's sampling defaults,
    or the `sampling` overrides (num_steps, guidance_scale, sampler, ...). task="superres" is
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
