"""What the shipped Nouns model draws, and whether it copies its training images (docs/NOUNS.md).

    .venv/bin/python docs/nouns_model.py [--checkpoint data/checkpoints/nouns] [--n 256] [--train-n 20000]

Draws the n held-out characters that `minimuse eval --task nouns --n N` draws (the same prompts, seeds and batches)
and writes:
- docs/nouns_model.png: the first eight, each generated image beside the exact render of its caption;
- docs/results/nouns/nouns_copying.json: each image's distance (RMS over pixels, 0..255) to its nearest image of
  the training set (the first train-n characters of the train split, what `dataset --source nouns --n 20000` wrote),
  against the same distance for the exact renders of the same held-out captions, which no training image shows.
  A model that copied its training images would sit much nearer to them than unseen characters do.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import minimuse  # noqa: E402
from minimuse.checkpoint import atomic_save_image, atomic_write_json  # noqa: E402
from minimuse.data import contact_sheet  # noqa: E402
from minimuse.nouns import load  # noqa: E402


def nearest(x: np.ndarray, train: torch.Tensor) -> np.ndarray:
    """(n, 32, 32, 3) uint8 -> (n,) RMS distance to the nearest of train (N, 3072) float."""
    q = torch.from_numpy(x.reshape(len(x), -1)).float()
    return (torch.cdist(q, train).min(1).values / np.sqrt(q.shape[1])).numpy()


def summary(d: np.ndarray) -> dict:
    return {"median": round(float(np.median(d)), 2), "p10": round(float(np.percentile(d, 10)), 2),
            "min": round(float(d.min()), 2), "n": len(d)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "data" / "checkpoints" / "nouns"))
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--train-n", type=int, default=20_000)
    p.add_argument("--assets", help="dist/image-data.json of @nouns/assets 0.10.0")
    args = p.parse_args()
    nouns, pipe = load(args.assets), minimuse.load_pipeline(args.checkpoint)
    combos = nouns.sample(args.n, "heldout", 0)
    prompts = [nouns.caption(c) for c in combos]
    images = np.concatenate([pipe(prompts[i:i + 64], seed=i) for i in range(0, args.n, 64)])  # as eval_nouns draws
    real = np.stack([nouns.render(c) for c in combos])
    tiles = [t for g, r in zip(images[:8], real[:8]) for t in (g, r)]
    labels = [t for pr in prompts[:8] for t in ("generated: " + pr, "exact render")]
    atomic_save_image(ROOT / "docs" / "nouns_model.png", contact_sheet(tiles, labels, cols=4, tile=192))
    train = torch.from_numpy(np.stack([nouns.render(c) for c in nouns.sample(args.train_n, "train", 0)])
                             .reshape(args.train_n, -1)).float()
    out = {"checkpoint": str(Path(args.checkpoint).relative_to(ROOT)) if Path(args.checkpoint).is_relative_to(ROOT)
           else args.checkpoint, "train_n": args.train_n,
           "generated_to_nearest_train": summary(nearest(images, train)),
           "unseen_real_to_nearest_train": summary(nearest(real, train))}
    atomic_write_json(ROOT / "docs" / "results" / "nouns" / "nouns_copying.json", out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
