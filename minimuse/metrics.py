"""The numbers minimuse reports, each defined once: PSNR, Wilson intervals and FID.

- PSNR (dB) of images in [0, 1]: 10 log10(1 / MSE), the tokenizer papers' reconstruction measure (Muse §2.2);
- the Wilson score interval of a rate, for every faithfulness figure: unlike p ± z sqrt(p(1-p)/n) it stays inside
  [0, 1] and does not collapse to a point at p = 0 or 1, which small per-kind samples hit often;
- FID (Heusel et al. 2017) through torchmetrics, in the space of any feature network (features.py's, by default).
Taught in notebooks/02_tokenizer.ipynb (PSNR), 05_training.ipynb (Wilson) and 09_experiments.ipynb (FID).
"""
from __future__ import annotations

import math

import torch


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error over pixels in [0, 1]; an exact copy is capped at 120 dB (MSE 1e-12)."""
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of `recon` against `target`, images in [0, 1] (recon clamped first), over the whole batch."""
    return psnr_from_mse((recon.clamp(0, 1) - target).pow(2).mean().item())


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed on n trials (95% at z=1.96)."""
    if n <= 0:
        raise ValueError(f"wilson: n must be positive, got {n}")
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / d
    return max(c - h, 0.0), min(c + h, 1.0)


def fid(real: torch.Tensor, fake: torch.Tensor, features, batch_size: int = 500) -> float:
    """Fréchet distance between two image sets (float (N, 3, S, S) in [0, 1]) in `features`' space (a trained
    features.ShapesFeatures), computed by torchmetrics' FrechetInceptionDistance with it as the custom network."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # optional heavy dependency, only FID needs it
    metric = FrechetInceptionDistance(feature=features, normalize=True, input_img_size=(3, *real.shape[2:]))
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for i in range(0, len(images), batch_size):
                metric.update(images[i:i + batch_size].float(), real=is_real)
    return float(metric.compute())
