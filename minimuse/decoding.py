"""What every decoder shares: the masked sampler (sampler.py), the autoregressive loop (autoregressive.py) and the
critic's training batches (critic.py). Random draws that give the same numbers whatever device the model is on,
Gumbel-max token sampling with a temperature and top-k, and classifier-free guidance (Muse §2.7) run as one batch of
conditional and unconditional rows. Taught in notebooks/06_sampling.ipynb.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: l_u + (1 + w)(l_c - l_u) = (1 + w) l_c - w l_u (Muse §2.7); w = 0 is the plain model."""
    return uncond + (1.0 + w) * (cond - uncond)


def guidance_weight(t: int, num_steps: int, scale: float, schedule: str = "constant") -> float:
    """The weight w at step t: constant, or Muse's ramp rising linearly from 0 at the first step to `scale` at the last."""
    if schedule == "constant":
        return float(scale)
    if schedule == "linear":
        return float(scale) * t / (num_steps - 1) if num_steps > 1 else float(scale)
    raise ValueError(f"unknown guidance_schedule {schedule!r}; choose one of: constant, linear")


def uniform(shape, generator, device) -> torch.Tensor:
    # Draw on the generator's device so a CPU generator gives the same numbers whatever device the model is on.
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def gumbel_from(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp_min(1e-20)))


def gumbel(shape, generator, device) -> torch.Tensor:
    return gumbel_from(uniform(shape, generator, device))


def log_probs(logits, temperature, top_k):
    """log p of the distribution tokens are drawn from: top-k filtered, then softmax at `temperature`, (..., K)."""
    logits = logits.float()
    if top_k > 0:  # keep the k largest logits, as Muse's editing uses (top-k 3)
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return F.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)


def sample_tokens(logits, temperature, top_k, gumbel, entropy: bool = True):
    """Sample one token per row of logits (..., K) by Gumbel-max; return (token, log p(token), entropy or None).

    A NaN or inf anywhere in a row makes its log p(token) non-finite, so one check on the (B, M) result catches a
    broken model without a pass over the (B, M, K) logits."""
    logp = log_probs(logits, temperature, top_k)
    token = (logp + gumbel).argmax(-1) if temperature > 0 else logp.argmax(-1)  # temperature 0 is greedy
    token_logp = logp.gather(-1, token[..., None])[..., 0]
    if not bool(torch.isfinite(token_logp).all()):
        raise FloatingPointError("the model's logits became non-finite (NaN or inf) while sampling; the checkpoint or "
                                 "the inputs are broken (try precision fp32, or another checkpoint)")
    return token, token_logp, torch.special.entr(logp.exp()).sum(-1) if entropy else None


class Guided:
    """The model with its text K/V computed once per call, plus the unconditional (or negative) pass when w > 0.

    The unconditional text keeps its own length (the empty prompt is 2 tokens) and, when it is one row, its batch of 1:
    the forward of 2B rows attends the cond half to the prompt and the uncond half to the shared "" text."""

    def __init__(self, transformer, text_emb, text_mask, uncond_emb, uncond_mask, weights, cond: dict | None = None):
        cond = cond or {}  # the super-res model's lowres_ids
        self.model = transformer
        self.ctx_cond = transformer.encode_text(text_emb, text_mask, **cond)
        self.ctx_both = None
        if any(w != 0 for w in weights):
            if uncond_emb is None:
                raise ValueError("guidance_scale > 0 needs uncond: the text encoding of the empty prompt \"\"")
            if uncond_emb.shape[0] not in (1, text_emb.shape[0]):
                raise ValueError(f"uncond holds {uncond_emb.shape[0]} texts for {text_emb.shape[0]} prompts; "
                                 "pass one, or one per prompt")
            um = (torch.ones(uncond_emb.shape[:2], dtype=torch.bool, device=uncond_emb.device) if uncond_mask is None
                  else uncond_mask)
            self.ctx_both = (self.ctx_cond, transformer.encode_text(uncond_emb, um, **cond))  # cond rows first

    def __call__(self, ids, w, head_index=None):
        if w == 0:  # Muse's ramp starts at 0: skip the unconditional half entirely
            return self.model(ids, ctx=self.ctx_cond, head_index=head_index)
        hi = None if head_index is None else head_index.repeat(2, 1)  # (2B, M)
        cond, uncond = self.model(ids.repeat(2, 1), ctx=self.ctx_both, head_index=hi).chunk(2)  # one forward of 2B
        return guided_logits(cond.float(), uncond.float(), w)
