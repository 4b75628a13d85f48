"""The quantizers of the image tokenizer: each snaps every latent vector of the encoder to one of K codes.

Muse §2.2 (following VQGAN) quantizes with a learned codebook; two quantizers here:
- VQ with l2-normalized codes (ViT-VQGAN), a straight-through estimator, EMA updates and dead-code restarts, so the
  codebook does not collapse;
- FSQ (Mentzer et al. 2023): round a few bounded dims to a fixed grid of levels, no codebook at all.
Both are pure functions of their input plus (for VQ) the codebook state; tokenizer.py wraps them between its encoder
and decoder. Taught in notebooks/02_tokenizer.ipynb.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class VectorQuantizer(nn.Module):
    """VQ with l2-normalized codes (ViT-VQGAN): nearest code by cosine, straight-through gradient.

    ema_decay > 0: the codebook is a running mean of the vectors assigned to it (no codebook loss).
    ema_decay = 0: the codebook is a Parameter learned by the codebook loss. Either way, a code whose running
    usage falls below dead_threshold assignments per step is restarted at a random encoder output of the batch.
    """

    def __init__(self, K: int, dim: int, beta: float, ema_decay: float, dead_threshold: float):
        super().__init__()
        self.K, self.dim, self.beta, self.decay, self.dead_threshold = K, dim, beta, ema_decay, dead_threshold
        init = F.normalize(torch.randn(K, dim), dim=-1)
        if ema_decay > 0:
            self.register_buffer("embed", init)
            self.register_buffer("embed_sum", init.clone())
        else:
            self.embed = nn.Parameter(init)
        # Starts at 0, so every code counts as dead on the first step and is seeded from real encoder outputs.
        self.register_buffer("cluster_size", torch.zeros(K))

    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embed, dim=-1)  # (K, C)

    def quantize(self, z: torch.Tensor):
        """(B, C, h, w) -> (unit latents (N, C), ids (B, h, w))."""
        B, C, h, w = z.shape
        flat = F.normalize(z.float().permute(0, 2, 3, 1).reshape(-1, C), dim=-1)  # (N, C), N = B*h*w
        return flat, nearest_code(flat, self.codebook()).view(B, h, w)  # (B, h, w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codebook()[ids].permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)

    def forward(self, z: torch.Tensor):
        B, C, h, w = z.shape
        flat, ids = self.quantize(z)
        zq = self.codebook()[ids.view(-1)]  # (N, C)
        loss = self.beta * F.mse_loss(flat, zq.detach())  # commitment: pull the encoder towards its code
        if self.decay == 0:
            loss = loss + F.mse_loss(zq, flat.detach())  # codebook loss: pull the code towards the encoder
        if self.training:
            self._update(flat.detach(), ids.view(-1))
        zq = straight_through(flat, zq)  # forward: the code; backward: the identity into the encoder
        return zq.view(B, h, w, C).permute(0, 3, 1, 2), ids, loss  # (B, C, h, w)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, ids: torch.Tensor):
        counts = torch.bincount(ids, minlength=self.K).float()  # (K,)
        sums = flat.new_zeros(self.K, self.dim).index_add_(0, ids, flat) if self.decay > 0 else None  # (K, C)
        _all_reduce(counts, sums)
        decay = self.decay if self.decay > 0 else 0.99  # usage is tracked even when the codebook learns by gradient
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        if self.decay > 0:
            self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            self.embed.copy_(self.embed_sum / self.cluster_size.clamp(min=1e-6)[:, None])
        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            # Restart at real encoder outputs: a dead code sits where no latent goes, so it never wins again alone.
            pick = flat[torch.randint(len(flat), (n_dead,))]  # (n_dead, C)
            _broadcast(pick)  # every process must restart to the same vectors
            self.embed.data[dead] = pick
            self.cluster_size[dead] = self.dead_threshold
            if self.decay > 0:
                self.embed_sum[dead] = pick * self.dead_threshold


class FSQuantizer(nn.Module):
    """FSQ: each of d dims is bounded with tanh and rounded to one of L_i levels; id = mixed-radix number."""

    def __init__(self, levels: tuple):
        super().__init__()
        self.dim = len(levels)
        # Non-persistent: derived from the config, so the state dict holds only learned weights.
        self.register_buffer("levels", torch.tensor(levels), persistent=False)

    def quantize(self, z: torch.Tensor):
        digits, codes = fsq_round(z.float().permute(0, 2, 3, 1), self.levels)  # (B, h, w, d)
        return codes, fsq_ids(digits, self.levels)  # ids (B, h, w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return fsq_codes(fsq_digits(ids, self.levels), self.levels).permute(0, 3, 1, 2).contiguous()  # (B, d, h, w)

    def forward(self, z: torch.Tensor):
        codes, ids = self.quantize(z)
        return codes.permute(0, 3, 1, 2), ids, z.new_zeros(())  # no codebook, no commitment loss


# ---------------------------------------------------------------------------------------- the maths, as functions
def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Unit vectors (N, C), unit codes (K, C) -> ids (N,). For unit vectors, max cosine = min l2 distance."""
    return (z @ codebook.t()).argmax(dim=-1)  # (N, K) -> (N,)


def straight_through(z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
    """Value of zq, gradient of z: quantization has zero gradient almost everywhere, so copy it across."""
    return z + (zq - z).detach()


def fsq_round(z: torch.Tensor, levels: torch.Tensor):
    """(..., d) -> (digits long in [0, L_i), codes in [-1, 1] with a straight-through gradient).

    tanh squeezes each dim into (-0.5, L - 0.5), so rounding gives L bins of equal width.
    """
    x = (torch.tanh(z) + 1) / 2 * levels - 0.5
    rounded = x.round().clamp(min=0).minimum(levels - 1)  # tanh can saturate to exactly L - 0.5, which rounds to L
    q = straight_through(x, rounded)
    return rounded.long(), fsq_codes(q, levels)


def fsq_codes(digits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return digits / (levels - 1) * 2 - 1  # [0, L-1] -> [-1, 1]


def fsq_ids(digits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mixed radix: id = d0 + L0 * (d1 + L1 * (d2 + ...)), one-to-one onto [0, prod(L))."""
    basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0)
    return (digits * basis).sum(-1)


def fsq_digits(ids: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0)
    return (ids.unsqueeze(-1) // basis) % levels  # (..., d)


def codebook_usage(ids: torch.Tensor, K: int) -> float:
    """Fraction of the K codes that appear at least once in ids."""
    return float((torch.bincount(ids.reshape(-1), minlength=K) > 0).sum()) / K


def perplexity(ids: torch.Tensor, K: int) -> float:
    """exp(entropy of the code histogram): K when all codes are used equally, 1 when one code takes all."""
    p = torch.bincount(ids.reshape(-1), minlength=K).double()
    p = p / p.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


def _all_reduce(*tensors):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in tensors:
            if t is not None:
                torch.distributed.all_reduce(t)


def _broadcast(t):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(t, src=0)
