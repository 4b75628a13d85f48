"""The sampler, written in notebook 06: MaskGIT's parallel decoding (Muse §2.8). Start from an all-[MASK] grid; at
each step draw a token at every masked position, score the draws, commit the best and mask the rest again, with
mask_counts (notebook 04) saying how many stay masked. Works with any model called as model(ids, text, text_mask)
that has a .grid, a .mask_id and an nn.Linear .head: MyTransformer (notebook 05) or minimuse's MaskedTransformer."""
import math

import torch
import torch.nn.functional as F

from mymuse.masking import cosine, mask_counts


def gumbel(shape, generator, device="cpu"):
    """Gumbel(0, 1) noise, -log(-log u) for u ~ U(0, 1): drawn on the generator's device, then moved."""
    u = torch.rand(shape, generator=generator, device=generator.device).to(device)
    return -torch.log(-torch.log(u.clamp_min(1e-20)))  # the clamp keeps log(0) out


def draw_tokens(logits, g):
    """Gumbel-max: argmax(log p + g) is a draw from softmax(logits). Returns the tokens and their log-probabilities."""
    logp = F.log_softmax(logits.float(), dim=-1)                  # (..., K)
    token = (logp + g).argmax(-1)                                 # (...,)
    return token, logp.gather(-1, token[..., None])[..., 0]


def lowest(scores, n):
    """(B, L) bool, True at the n[b] lowest scores of row b (ties go to the earlier position); n (B,)."""
    order = scores.argsort(dim=1, stable=True)                    # positions from lowest to highest score
    return order.argsort(dim=1) < n[:, None]                      # each position's rank < n


@torch.inference_mode()
def my_sample(model, text, text_mask, num_steps, tau, generator, gamma=cosine, ids=None, mask=None):
    """Token grids (B, h, w) for the B captions, and the mask after every step. To edit (notebook 08), start from a
    grid `ids` (B, h, w) with `mask` (B, h, w) True at the tokens to generate (default: where ids is [MASK]); the
    others are kept."""
    (h, w), K, device = model.grid, model.head.out_features, text.device  # K codes: the head's outputs
    B, L = text.shape[0], h * w
    if ids is None:                                               # from nothing: every position is generated
        ids, mask = torch.zeros(B, L, dtype=torch.long, device=device), torch.ones(B, L, dtype=torch.bool, device=device)
    mask = (ids == model.mask_id if mask is None else mask).reshape(B, L).bool()  # (B, L) True = still masked
    ids = torch.where(mask, model.mask_id, ids.reshape(B, L))     # (B, L) [MASK] where a token is to be drawn
    counts = torch.tensor([mask_counts(int(N), num_steps, gamma) for N in mask.sum(1)], device=device)  # (B, num_steps)
    masks = []
    for t in range(num_steps):
        logits = model(ids, text, text_mask)                      # (B, L, K): every position, masked or not
        token, token_logp = draw_tokens(logits, gumbel((B, L, K), generator, device))  # token noise first...
        noise = gumbel((B, L), generator, device)                 # ...then the score noise, as the package draws them
        tau_t = tau * (1 - (t + 1) / num_steps)                   # annealed to 0 at the last step
        scores = token_logp + tau_t * noise                       # the confidence score c_i
        scores = scores.masked_fill(~mask, math.inf)              # known and committed tokens are never masked again
        new_mask = lowest(scores, counts[:, t])                   # (B, L): counts[b, t] stay masked in row b
        ids = torch.where(mask & ~new_mask, token, ids)           # commit what left the mask
        mask = new_mask
        masks.append(mask.view(B, h, w))
    return ids.view(B, h, w), masks
