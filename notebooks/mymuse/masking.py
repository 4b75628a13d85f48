"""Masking, written in notebook 04: Muse's mask-rate law, the masked loss, and how many tokens stay masked after
each sampling step. Notebook 05 trains with masked_ce; notebook 06 samples with mask_counts."""
import math

import torch
import torch.nn.functional as F


def mask_rate(u):
    """r = cos(pi u / 2) for u ~ U(0, 1): the share of a grid's tokens to hide (Muse §2.6)."""
    return torch.cos(math.pi / 2 * u)


def masked_ce(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy over the masked positions only: logits (B, L, K), labels (B, L) with -100 where visible.
    F.cross_entropy computes exactly the mean written out in notebook 04, section 3, skipping the -100s."""
    K = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, K).float(), labels.reshape(-1), ignore_index=-100,
                           label_smoothing=label_smoothing)


def cosine(r, N=None):
    """gamma(r) = cos(pi r / 2): the share of tokens still masked at progress r (MaskGIT's default schedule)."""
    return math.cos(math.pi / 2 * r)


def mask_counts(N, T, gamma=cosine):
    """Positions still masked after each of T sampling steps, N tokens in all: at least one committed per step,
    at least one left for the next, none after the last. gamma(r, N) is the share still masked at progress r (N is
    there for the schedules that need it; cosine ignores it)."""
    counts, before = [], N
    for t in range(T):
        if t == T - 1 or before == 0:
            n = 0                                                  # the last step commits everything
        else:
            n = math.floor(N * min(max(gamma((t + 1) / T, N), 0.0), 1.0) + 1e-9)
            n = max(1, min(before - 1, n))                         # commit >= 1 now, keep >= 1 for later
        counts.append(n)
        before = n
    return counts
