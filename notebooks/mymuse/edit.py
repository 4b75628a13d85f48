"""Editing, written in notebook 08 (Muse §3.3), on top of my_sample (notebook 06). Inpainting needs nothing new
but the mask: my_sample from a start grid, with the region's tokens to generate. Mask-free editing redraws a few
random tokens, many times, under the new caption; outpainting slides the model's window over a wider canvas."""
import math

import torch

from mymuse.sample import my_sample


def my_token_mask(pixel_mask, f):
    """Snap pixel masks (B, H, W) bool to the token grid (B, H // f, W // f): a token is regenerated when any pixel
    of its f x f cell is masked, so nothing the user masked is kept by accident."""
    B, H, W = pixel_mask.shape
    return pixel_mask.reshape(B, H // f, f, W // f, f).any(axis=(2, 4))


def my_edit(model, ids, text, text_mask, num_iters, resample_frac, generator):
    """Mask-free editing: `num_iters` times, choose a fresh random `resample_frac` of the tokens and redraw them in one
    step under the new caption. ids (B, h, w) -> (B, h, w)."""
    B, h, w = ids.shape
    n = max(1, math.ceil(resample_frac * h * w))                  # tokens redrawn per iteration
    for _ in range(num_iters):
        u = torch.rand(B, h * w, generator=generator, device=generator.device).to(ids.device)
        chosen = u.argsort(dim=1)[:, :n]                          # (B, n) a random subset of each grid
        region = torch.zeros(B, h * w, dtype=torch.bool, device=ids.device).scatter(1, chosen, True)
        ids, _ = my_sample(model, text, text_mask, 1, 0.0, generator, ids=ids, mask=region.view(B, h, w))
    return ids


def my_outpaint_right(model, ids, new, text, text_mask, num_steps, tau, generator):
    """Extend token grids (B, h, w) by `new` columns on the right. The model's window of w columns slides over the
    canvas, and each window generates at most w // 2 columns beside known ones. Returns (B, h, w + new)."""
    B, h, w = ids.shape
    canvas = torch.cat([ids, torch.full((B, h, new), model.mask_id, device=ids.device)], dim=2)  # (B, h, w + new)
    known = w                                                     # columns known so far
    while known < w + new:
        end = min(w + new, known + max(1, w // 2))                # the window is canvas columns [end - w, end)
        window = canvas[:, :, end - w:end]                        # (B, h, w): what the model sees
        unknown = torch.zeros_like(window, dtype=torch.bool)
        unknown[:, :, known - (end - w):] = True                  # the window's new columns
        steps = min(num_steps, int(unknown[0].sum()))             # at most one step per token to draw
        canvas[:, :, end - w:end], _ = my_sample(model, text, text_mask, steps, tau, generator, ids=window, mask=unknown)
        known = end
    return canvas
