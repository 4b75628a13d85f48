"""Token-Critic (Lezama et al. 2022, arXiv 2209.04439): a second transformer that says which tokens are wrong.

Confidence decoding never revisits a token once committed, and it scores each token by the generator's own
probability, which is highest exactly where the generator is confidently wrong. The critic is trained apart, on the
frozen generator's samples: take a real grid, mask it with Muse's training law, let the generator fill the gaps (one
sampling step at temperature 1), and label every token 1 if it differs from the real one, else 0 (binary
cross-entropy). At sampling (`sampler="critic"` in sampler.py), every token of the filled grid, committed ones
included, is scored by the critic, and the least trusted are masked again under the schedule. It is the masked
transformer's architecture (bidirectional, text cross-attention) with a one-logit head. `minimuse train-critic`
trains it with the project's loop. Taught in notebooks/09_experiments.ipynb.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .decoding import gumbel_from, sample_tokens, uniform
from .transformer import Linear, MaskedTransformer


class TokenCritic(MaskedTransformer):
    CHECKPOINT_KIND = "critic"  # saved in a checkpoint's critic/ folder
    MODEL_KIND = "critic"

    def __init__(self, cfg, codebook_size: int, grid, text_dim: int):
        super().__init__(cfg, codebook_size, grid, text_dim)
        self.head = Linear(cfg.width, 1)  # the logit that a token is wrong
        self._init(self.head)

    def forward(self, ids, text=None, text_mask=None, *, ctx=None, **kwargs):
        """ids (B, L) or (B, h, w), a complete grid (no [MASK]) -> (B, L) logits of "this token is not the real one"."""
        return super().forward(ids, text, text_mask, ctx=ctx, **kwargs)[..., 0]  # (B, L, 1) -> (B, L)


def critic_batch(generator: MaskedTransformer, inputs, labels, text, text_mask, rng: torch.Generator):
    """One training batch for the critic from a masked batch of the base loop (inputs with [MASK], labels with the
    true token at masked positions, -100 elsewhere): the generator fills every masked position by sampling at
    temperature 1 (draws from `rng`, so a step's batch is a pure function of its seed), and the label of each token
    is 1 where the filled grid differs from the real one. Returns (filled (B, L), wrong (B, L) float in {0, 1})."""
    masked = labels != -100  # (B, L)
    real = torch.where(masked, labels, inputs)  # (B, L) the true grid
    with torch.no_grad():
        logits = generator(inputs, text, text_mask)  # (B, L, K)
    drawn = sample_tokens(logits, 1.0, 0, gumbel_from(uniform(logits.shape, rng, logits.device)), entropy=False)[0]  # (B, L)
    filled = torch.where(masked, drawn, real)
    return filled, (filled != real).float()


def critic_loss(logits: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over every position, logits and labels (B, L)."""
    return F.binary_cross_entropy_with_logits(logits.float(), wrong)
