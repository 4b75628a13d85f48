"""The handwritten digits (digits.py): real scans, a held-out split, and a judge that reads the prompted digit."""
import numpy as np
import pytest
import torch

from minimuse.presets import get_config
from minimuse.digits import DIGIT_WORDS, DigitJudge, digit_caption, eval_digits, features, load_digits


@pytest.fixture(scope="module")
def judge():
    return DigitJudge.fit(32)


def test_features_read_the_scans_back_at_8x8():
    from sklearn.datasets import load_digits as sk
    images, digits, _ = load_digits(32)
    f = features(images)
    assert f.shape == (1797, 64)
    # bicubic up to 32 px and box-averaged back is close to the scan itself (0..16 scale)
    assert np.abs(f - sk().data).mean() < 1.0
    assert (digits == sk().target).all()


def test_the_judge_reads_held_out_scans(judge):
    assert judge.n_test == 300 and judge.accuracy >= 0.95


class FakePipe:
    """Answers each prompt with a real held-out scan of the digit `shift` after the prompted one."""

    def __init__(self, shift):
        self.images, self.digits, is_test = load_digits(32)
        self.images, self.digits = self.images[is_test], self.digits[is_test]
        self.shift, self.config, self.device = shift, get_config("laptop"), torch.device("cpu")
        self.tokenizer = self

    def encode(self, x):
        return x

    def decode(self, x):
        return x

    def __call__(self, prompts, seed, superres, **kw):
        out = []
        for i, p in enumerate(prompts):
            d = (DIGIT_WORDS.index(p.split()[-1]) + self.shift) % 10
            out.append(self.images[self.digits == d][(seed + i) % 20])
        return np.stack(out)


def test_eval_digits_scores_the_prompted_digit(judge):
    right, wrong = eval_digits(FakePipe(0), 10, judge=judge), eval_digits(FakePipe(1), 10, judge=judge)
    assert right["n"] == 100 and right["accuracy"] >= 0.9 and wrong["accuracy"] <= 0.1
    assert right["interval"][0] <= right["accuracy"] <= right["interval"][1]
    assert set(right["by_digit"]) == set(DIGIT_WORDS) and digit_caption(7) == "a handwritten seven"
    assert right["judge"]["accuracy_after_tokenizer_round_trip"] == round(judge.accuracy, 4)  # identity tokenizer
    assert right["tokenizer_psnr_on_real_test"] == 120.0  # a lossless round trip: the 1e-12 floor
