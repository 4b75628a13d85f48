"""Mask schedules: how many image tokens are masked, in training and at each sampling step.

Training (Muse §2.6, MaskGIT §3.1): draw a mask rate r = cos(pi u / 2), u ~ U(0, 1), mask ceil(r L) random tokens,
replace them by [MASK] and score cross-entropy on those positions only. Inference (MaskGIT §3.2-3.3): after step t of T,
floor(N gamma((t+1)/T)) of the N positions masked at the start stay masked. The maths are small pure functions;
`MaskScheduler` wraps them in diffusers' `set_timesteps` / `step` / `add_noise` names. Taught in
notebooks/04_masking.ipynb; the sampler that uses them is sampler.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import SCHEDULE_NAMES

# ---------------------------------------------------------------------------------------------------------------------
# Training: the mask-rate law, the mask, the inputs, the labels and the loss.


def mask_rate(u: torch.Tensor, min_mask_rate: float = 0.0) -> torch.Tensor:
    """Muse's law r = cos(pi u / 2) for u ~ U(0, 1): density (2/pi)(1 - r^2)^(-1/2), mean 2/pi. Floored (MaskGIT: 0.5)."""
    return torch.cos(math.pi / 2 * u).clamp_min(min_mask_rate)


def arccos_rate(u: torch.Tensor) -> torch.Tensor:
    """The other law called "arccos" in some PyTorch ports: r = arccos(u) / (pi/2). Same mean, thinner tail near 1."""
    return torch.arccos(u) / (math.pi / 2)


def random_mask(batch: int, grid: tuple[int, int], generator: torch.Generator | None = None,
                min_mask_rate: float = 0.0, rect_prob: float = 0.0, rate: torch.Tensor | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """A training mask (B, L) bool: ceil(r L) positions per sample, at least one, r ~ mask_rate unless `rate` is given.

    Draws, in this order, from `generator`: u (B,) for the rates (skipped when `rate` is given), noise (B, L) for the
    positions, then four (B,) uniforms for the rectangles. With probability `rect_prob` a sample masks an axis-aligned
    rectangle instead: its height is uniform over the heights that fit ceil(r L) tokens into the grid, its width is
    ceil(ceil(r L) / height), so its area is at least ceil(r L) and exceeds it by less than one column of the rectangle.
    """
    h, w = grid
    L = h * w
    gen_device = generator.device if generator is not None else device  # a CPU generator gives the same mask anywhere
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=gen_device).to(device)  # noqa: E731
    r = mask_rate(rand(batch), min_mask_rate) if rate is None else torch.as_tensor(rate, dtype=torch.float32, device=device)
    n = torch.ceil(r * L).long().clamp(1, L)  # (B,); mask at least one token, or the loss has nothing to score

    # Uniform positions: the rank of each position in a random permutation is below n for exactly n positions.
    ranks = rand(batch, L).argsort(dim=1).argsort(dim=1)  # (B, L)
    mask = ranks < n[:, None]

    # Rectangles: heights from ceil(n / w) (so the width fits) up to min(h, n); then a uniform top-left corner.
    u_rect, u_h, u_y, u_x = rand(4, batch)
    lo, hi = torch.ceil(n / w).long(), n.clamp(max=h)
    rh = lo + (u_h * (hi - lo + 1)).long().clamp(max=hi - lo)  # (B,)
    rw = torch.ceil(n / rh).long()  # (B,) <= w because rh >= n / w
    y0 = (u_y * (h - rh + 1)).long().clamp(max=h - rh)
    x0 = (u_x * (w - rw + 1)).long().clamp(max=w - rw)
    rows = torch.arange(h, device=device)[None, :, None]  # (1, h, 1)
    cols = torch.arange(w, device=device)[None, None, :]  # (1, 1, w)
    rect = ((rows >= y0[:, None, None]) & (rows < (y0 + rh)[:, None, None])
            & (cols >= x0[:, None, None]) & (cols < (x0 + rw)[:, None, None])).view(batch, L)  # (B, h, w) -> (B, L)
    return torch.where((u_rect < rect_prob)[:, None], rect, mask)


def add_noise(ids: torch.Tensor, mask: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Model input: [MASK] where masked, the true token elsewhere (as aMUSEd's training script writes it)."""
    return torch.where(mask, mask_id, ids)


def make_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Targets: the true token where masked, -100 (ignored by cross_entropy) where the model saw the token."""
    return torch.where(mask, ids, -100)


def masked_ce(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over masked positions only (Muse §2.3, §2.6); logits (B, L, K), labels (B, L) with -100 elsewhere."""
    K = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, K).float(), labels.reshape(-1),  # (B*L, K), (B*L,)
                           ignore_index=-100, label_smoothing=label_smoothing)


def md4_weight(r: torch.Tensor) -> torch.Tensor:
    """The weight of a masked token's loss that makes the summed masked loss a bound on -log p(x) (MD4, Shi et al.
    2024; MDLM, Sahoo et al. 2024): -a'(t) / (1 - a(t)), with a(t) the share of tokens kept at time t. Muse's law
    masks r = cos(pi u / 2), so with t = 1 - u, a(t) = 1 - sin(pi t / 2) and the weight is (pi/2) cot(pi t / 2) =
    (pi/2) sqrt(1 - r^2) / r: a nearly empty grid's tokens weigh most, a fully masked grid's nothing."""
    return math.pi / 2 * torch.sqrt((1 - r * r).clamp_min(0)) / r


def weighted_masked_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over masked positions of weight x cross-entropy; logits (B, L, K), labels and weights (B, L)."""
    K = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, K).float(), labels.reshape(-1), ignore_index=-100,  # (B*L,), 0 where ignored
                         label_smoothing=label_smoothing, reduction="none")
    return (ce * weights.reshape(-1)).sum()


# ---------------------------------------------------------------------------------------------------------------------
# Inference: gamma(r) is the fraction of the N initially masked positions still masked once a fraction r of the steps
# is done. Formulas from MaskGIT's libml/mask_schedule.py `schedule(ratio, total_unknown, method)`: "uniform" (linear),
# "pow" (square, cubic), "cosine", "log" and "exp"; the last two are normalised by log2 of N (their `total_unknown`),
# so every schedule takes (r, N) and the others ignore N.


def gamma_cosine(r: float, N: int) -> float:
    return math.cos(math.pi / 2 * r)


def gamma_linear(r: float, N: int) -> float:
    return 1.0 - r


def gamma_square(r: float, N: int) -> float:
    return 1.0 - r ** 2


def gamma_cubic(r: float, N: int) -> float:
    return 1.0 - r ** 3


def gamma_log(r: float, N: int) -> float:
    # -log2(r) / log2(N); N < 2 would divide by zero, and with one token the clamps alone decide the count anyway.
    return -math.log2(r) / math.log2(max(N, 2)) if r > 0 else 1.0


def gamma_exp(r: float, N: int) -> float:
    return 1.0 - 2.0 ** (-math.log2(max(N, 2)) * (1.0 - r))  # = 1 - N^(r - 1)


SCHEDULES = {"cosine": gamma_cosine, "linear": gamma_linear, "square": gamma_square,
             "cubic": gamma_cubic, "log": gamma_log, "exp": gamma_exp}
assert tuple(SCHEDULES) == SCHEDULE_NAMES  # the config and the CLI offer exactly these


def get_schedule(name: str):
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def mask_counts(N: int, num_steps: int, schedule: str = "cosine") -> list[int]:
    """Positions still masked after each of the num_steps steps (MaskGIT's T), starting from N masked: MaskGIT's rule
    with its clamps.

    n_t = floor(N gamma((t+1)/T)), then max(1, min(n_{t-1} - 1, n_t)) as in MaskGIT's parallel_decode and diffusers'
    AmusedScheduler: commit at least one position per step, keep at least one masked until the last step, which
    commits everything (n = 0). When the two clamps collide (one position left before the last step, only possible
    when N < num_steps) the second wins, as in MaskGIT, and that step commits nothing.
    """
    if num_steps < 1:
        raise ValueError(f"the number of steps must be at least 1, got {num_steps}")
    gamma = get_schedule(schedule)
    counts, remaining = [], int(N)
    for t in range(num_steps):
        if t == num_steps - 1 or remaining == 0:
            n = 0
        else:
            g = min(max(gamma((t + 1) / num_steps, N), 0.0), 1.0)  # MaskGIT clips the ratio into [1e-6, 1]
            # The 1e-9 keeps an exact integer from flooring one lower: 5 * (1 - 4/5) is 0.9999999999999998 in floats.
            n = max(1, min(remaining - 1, math.floor(N * g + 1e-9)))
        counts.append(n)
        remaining = n
    return counts


def num_masked_after(N: int, t: int, num_steps: int, schedule: str = "cosine") -> int:
    """How many of the N initially masked positions are still masked after step t (0-based) of num_steps."""
    if not 0 <= t < num_steps:
        raise ValueError(f"step t={t} is outside 0..{num_steps - 1}")
    return mask_counts(N, num_steps, schedule)[t]


def remask_least_confident(confidence: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mask (B, L) bool of the n[b] lowest-confidence positions of each row; ties broken by position (stable sort)."""
    B, L = confidence.shape
    order = confidence.argsort(dim=1, stable=True)  # (B, L) positions from least to most confident
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=order.device).expand(B, L))  # (B, L)
    return ranks < n[:, None]


class MaskScheduler:
    """diffusers-style wrapper (AmusedScheduler's names); step indices count up 0..num_steps-1 where diffusers counts
    down.

    The count table of each distinct N is computed once after `set_timesteps` (O(num_steps)) and reused by every step,
    so a whole sampling call costs O(num_steps) in schedule arithmetic, not O(num_steps^2)."""

    def __init__(self, schedule: str = "cosine"):
        get_schedule(schedule)  # fail early on a typo
        self.schedule = schedule
        self.timesteps = None

    def set_timesteps(self, num_steps: int, N: torch.Tensor | None = None):
        """Fix the number of steps; with N (B,), the positions each sample generates, build its count table now."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        self.num_steps = num_steps
        self.timesteps = torch.arange(num_steps)
        self._tables: dict[tuple[int, ...], torch.Tensor] = {}  # per-sample N -> (B, num_steps) counts
        self._last_N = self._last_table = None
        if N is not None:
            self.count_table(N)

    def count_table(self, N: torch.Tensor) -> torch.Tensor:
        """(B, num_steps) positions still masked after each step, for per-sample N (inpainting regions differ in size)."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_steps) before step()")
        if N is self._last_N:  # the sampler passes the same N every step: no host transfer in the loop
            return self._last_table
        key = tuple(N.tolist())
        if key not in self._tables:
            rows = {n: mask_counts(n, self.num_steps, self.schedule) for n in set(key)}  # once per distinct N
            self._tables[key] = torch.tensor([rows[n] for n in key], dtype=torch.long, device=N.device).view(len(key), -1)
        self._last_N, self._last_table = N, self._tables[key]
        return self._last_table

    def num_masked_after(self, t: int, N: torch.Tensor) -> torch.Tensor:
        """(B,) counts after step t for per-sample N."""
        return self.count_table(N)[:, t]

    def step(self, confidence: torch.Tensor, still_masked: torch.Tensor, t: int, N: torch.Tensor) -> torch.Tensor:
        """New mask (B, L): the num_masked_after(N, t) least confident of the positions masked before step t.

        Positions not masked before the step get +inf confidence, so a committed token is never masked again.
        """
        confidence = torch.where(still_masked, confidence.float(), math.inf)
        n = torch.minimum(self.num_masked_after(t, N), still_masked.sum(1))  # guard: never more than are masked
        return remask_least_confident(confidence, n)

    def add_noise(self, ids: torch.Tensor, mask: torch.Tensor, mask_id: int) -> torch.Tensor:
        return add_noise(ids, mask, mask_id)
