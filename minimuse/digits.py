"""A second, real dataset no one here drew: the handwritten digits inside scikit-learn's wheel, and their judge.

`sklearn.datasets.load_digits` holds 1,797 real 8x8 scans (UCI, 43 writers; ink 0..16). Here they become white ink on
black, upsampled to 32 px (bicubic) and captioned "a handwritten seven"; every 6th of a fixed shuffle is held out.
`minimuse dataset --source digits --format imagefolder` writes them for the real-data path (hfdata.py, shards.py).
The judge of generated digits is a small classifier (an RBF SVM) trained on the real training scans, read back at
8x8 by box-averaging the 32 px image: `DigitJudge.fit()`; its held-out accuracy is reported beside every score.
`eval_digits` draws n images per digit from a pipeline and reports how often the judge reads the prompted digit.
Results and commands: docs/REAL_DATA.md.
"""
from __future__ import annotations


import numpy as np
import torch
from PIL import Image

from .metrics import psnr_from_mse, wilson

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_EVERY = 6  # every 6th image of a fixed shuffle is held out as test/: 300 of 1,797


def digit_caption(d: int) -> str:
    return f"a handwritten {DIGIT_WORDS[d]}"


def load_digits(size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, S, S, 3), digits (N,), is_test (N,) bool) of scikit-learn's 1,797 scans."""
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    out = np.empty((len(d.images), size, size, 3), np.uint8)
    for i, im in enumerate(d.images):
        small = Image.fromarray(np.round(im * 255 / 16).astype(np.uint8))
        out[i] = np.asarray(small.resize((size, size), Image.BICUBIC))[..., None]  # (S, S) -> (S, S, 3)
    is_test = np.zeros(len(out), bool)
    is_test[np.random.default_rng(0).permutation(len(out))[::TEST_EVERY]] = True
    return out, d.target.astype(np.int64), is_test


def features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) -> (N, 64): grey, box-averaged back to 8x8, on the scans' 0..16 scale."""
    grey = images.astype(np.float64).mean(-1)  # (N, S, S)
    n, s = grey.shape[0], grey.shape[1]
    f = s // 8
    return (grey.reshape(n, 8, f, 8, f).mean((2, 4)) * 16 / 255).reshape(n, 64)  # (N, 8, f, 8, f) -> (N, 64)


class DigitJudge:
    """An RBF SVM on the real training scans; `accuracy` is its score on the held-out real scans."""

    def __init__(self, clf, accuracy: float, n_test: int):
        self.clf, self.accuracy, self.n_test = clf, accuracy, n_test

    @classmethod
    def fit(cls, size: int = 32) -> "DigitJudge":
        from sklearn.svm import SVC
        images, digits, is_test = load_digits(size)
        clf = SVC(gamma="scale", C=10.0).fit(features(images[~is_test]), digits[~is_test])
        acc = float((clf.predict(features(images[is_test])) == digits[is_test]).mean())
        return cls(clf, acc, int(is_test.sum()))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.clf.predict(features(np.asarray(images)))


@torch.no_grad()
def eval_digits(pipe, n_per_digit: int = 100, seed: int = 0, batch_size: int = 100, judge: DigitJudge | None = None,
                **sampling) -> dict:
    """How often the judge reads the prompted digit in pipe's images: overall and per digit, with 95% Wilson
    intervals and n; the judge's own held-out accuracy, its accuracy on the real test scans after the pipeline's
    tokenizer round trip (what the tokenizer alone loses) and that round trip's PSNR are reported beside it."""
    judge = judge or DigitJudge.fit(pipe.config.data.image_size)
    prompts = [digit_caption(d) for d in range(10) for _ in range(n_per_digit)]
    target = np.repeat(np.arange(10), n_per_digit)
    images = np.concatenate([pipe(prompts[i:i + batch_size], seed=seed + i, superres=False, **sampling)
                             for i in range(0, len(prompts), batch_size)])
    hit = judge.predict(images) == target
    real, digits, is_test = load_digits(pipe.config.data.image_size)
    x = torch.from_numpy(real[is_test]).permute(0, 3, 1, 2).float().div(255).to(pipe.device)  # (n, 3, S, S)
    back = pipe.tokenizer.decode(pipe.tokenizer.encode(x))  # (n, 3, S, S) in [0, 1]
    recon = back.mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    rt = float((judge.predict(recon) == digits[is_test]).mean())
    mse = float((back.float() - x).pow(2).mean())
    p = float(hit.mean())
    return {"accuracy": round(p, 4), "interval": [round(v, 4) for v in wilson(p, len(hit))], "n": len(hit),
            "by_digit": {DIGIT_WORDS[d]: round(float(hit[target == d].mean()), 4) for d in range(10)},
            "judge": {"accuracy_on_real_test": round(judge.accuracy, 4), "n_test": judge.n_test,
                      "accuracy_after_tokenizer_round_trip": round(rt, 4)},
            "tokenizer_psnr_on_real_test": round(psnr_from_mse(mse), 2),
            "settings": {"seed": seed, **sampling}}
