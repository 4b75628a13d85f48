"""Scheduler: the mask-rate law, training masks and labels, MaskGIT's inference schedules and per-step mask counts."""
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from minimuse.config import SCHEDULE_NAMES
from minimuse.scheduler import (SCHEDULES, MaskScheduler, add_noise, arccos_rate, make_labels, mask_counts, mask_rate,
                                masked_ce, md4_weight, num_masked_after, random_mask, remask_least_confident,
                                weighted_masked_ce)

CASES = [(16, 4), (64, 12), (64, 7), (100, 24), (256, 8), (10, 3), (7, 12), (37, 5), (1, 5), (0, 4), (5, 1), (64, 64)]


# --- inference schedules ---------------------------------------------------------------------------------------------

def test_schedule_names_match_config():
    assert tuple(SCHEDULES) == SCHEDULE_NAMES


def test_schedule_values_are_maskgits_formulas():
    N = 64  # log2 N = 6
    assert SCHEDULES["cosine"](0.5, N) == pytest.approx(math.sqrt(0.5), abs=1e-15)
    assert SCHEDULES["linear"](0.25, N) == 0.75
    assert SCHEDULES["square"](0.5, N) == 0.75
    assert SCHEDULES["cubic"](0.5, N) == 0.875
    assert SCHEDULES["log"](0.5, N) == pytest.approx(1 / 6, abs=1e-15)    # -log2(1/2) / log2(64)
    assert SCHEDULES["exp"](0.5, N) == pytest.approx(1 - 1 / 8, abs=1e-15)  # 1 - 64^(-1/2)
    for name, g in SCHEDULES.items():
        assert g(1.0, N) == pytest.approx(0.0, abs=1e-15), name  # everything committed at r = 1
        assert g(0.0, N) >= 1 - 1 / N, name                         # (almost) everything masked at r = 0


def test_unknown_schedule_lists_the_valid_names():
    with pytest.raises(ValueError, match="cosine, linear, square, cubic, log, exp"):
        mask_counts(64, 12, "cosin")
    with pytest.raises(ValueError, match="choose one of"):
        MaskScheduler("quadratic")


def test_mask_counts_hand_computed():
    # floor(64 cos(pi k / 24)) for k = 1..11: 63.45, 61.82, 59.13, 55.43, 50.77, 45.25, 38.96, 32.0, 24.49, 16.56, 8.35
    assert mask_counts(64, 12, "cosine") == [63, 61, 59, 55, 50, 45, 38, 32, 24, 16, 8, 0]
    # floor(64 (12 - k) / 12)
    assert mask_counts(64, 12, "linear") == [58, 53, 48, 42, 37, 32, 26, 21, 16, 10, 5, 0]
    # N < T: 4.90 -> 4, 4.62 -> min(3, 4), 4.16 -> min(2, 4), then one token stays masked until the last step
    assert mask_counts(5, 8, "cosine") == [4, 3, 2, 1, 1, 1, 1, 0]
    assert mask_counts(64, 1, "cosine") == [0]
    assert mask_counts(0, 4, "cosine") == [0, 0, 0, 0]


def _expected_counts(N, T, schedule):
    """Independent of the package: exact rational arithmetic for the polynomial schedules, math for the others."""
    out, remaining = [], N
    for t in range(T):
        k = t + 1
        if t == T - 1 or remaining == 0:
            n = 0
        else:
            if schedule in ("linear", "square", "cubic"):
                p = {"linear": 1, "square": 2, "cubic": 3}[schedule]
                raw = math.floor(N * (1 - Fraction(k, T) ** p))
            else:
                g = {"cosine": math.cos(math.pi * k / (2 * T)),
                     "log": -math.log(k / T) / math.log(max(N, 2)),
                     "exp": 1 - max(N, 2) ** (k / T - 1)}[schedule]
                raw = math.floor(N * min(max(g, 0.0), 1.0) + 1e-9)
            n = max(1, min(remaining - 1, raw))
        out.append(n)
        remaining = n
    return out


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("N,T", CASES)
def test_mask_counts_match_formula_and_clamps(schedule, N, T):
    counts = mask_counts(N, T, schedule)
    assert counts == _expected_counts(N, T, schedule)
    assert [num_masked_after(N, t, T, schedule) for t in range(T)] == counts
    assert counts[-1] == 0                                   # the last step leaves no mask
    prev = N
    for t, c in enumerate(counts):
        assert c < prev or (prev == 1 and t < T - 1) or N == 0  # commit >= 1 per step unless one is held back
        assert c >= 1 or t == T - 1 or N == 0                   # keep >= 1 masked until the last step
        prev = c


@pytest.mark.parametrize("schedule", ["cosine", "linear", "square", "cubic"])
@pytest.mark.parametrize("N,T", [(n, t) for n, t in CASES if n >= t])
def test_concave_schedules_strictly_decrease_when_N_at_least_T(schedule, N, T):
    counts = [N] + mask_counts(N, T, schedule)
    assert all(a > b for a, b in zip(counts, counts[1:]))


def test_num_masked_after_rejects_bad_step():
    with pytest.raises(ValueError, match="outside"):
        num_masked_after(64, 12, 12)


def test_remask_least_confident_picks_the_lowest():
    conf = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.6]])
    got = remask_least_confident(conf, torch.tensor([2, 1]))
    assert torch.equal(got, torch.tensor([[False, True, False, True], [True, False, False, False]]))


def test_mask_scheduler_step_only_remasks_still_masked():
    g = torch.Generator().manual_seed(0)
    B, L, T, t = 3, 16, 5, 2
    before = mask_counts(16, T, "cosine")[t - 1]            # masked going into step t
    still = torch.rand(B, L, generator=g).argsort(1) < before  # (B, L) with exactly `before` True per row
    sched = MaskScheduler("cosine")
    sched.set_timesteps(T)
    assert torch.equal(sched.timesteps, torch.arange(T))
    conf = torch.rand(B, L, generator=g)
    new = sched.step(conf, still, t, torch.full((B,), 16))
    n = mask_counts(16, T, "cosine")[t]
    assert new.sum(1).tolist() == [n] * B
    assert not bool((new & ~still).any())                    # committed tokens are never masked again
    for b in range(B):
        lowest = conf[b].masked_fill(~still[b], math.inf).argsort()[:n]
        assert set(lowest.tolist()) == set(new[b].nonzero()[:, 0].tolist())
    # even when told a larger N than is masked, it re-masks only masked positions
    few = torch.zeros(B, L, dtype=torch.bool)
    few[:, :2] = True
    assert torch.equal(sched.step(conf, few, 0, torch.full((B,), 16)), few)


def test_mask_scheduler_per_sample_N():
    sched = MaskScheduler("linear")
    sched.set_timesteps(4)
    N = torch.tensor([16, 8, 8, 3])
    assert sched.num_masked_after(0, N).tolist() == [mask_counts(n, 4, "linear")[0] for n in (16, 8, 8, 3)]
    ids = torch.arange(8).view(2, 4)
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    assert torch.equal(sched.add_noise(ids, mask, 99), torch.tensor([[99, 1, 99, 3], [4, 5, 6, 7]]))


# --- training: the mask-rate law -------------------------------------------------------------------------------------

def test_mask_rate_law_matches_muse_density():
    n = 200_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = mask_rate(u)
    # mean 2/pi; Var r = E[cos^2] - (2/pi)^2 = 1/2 - 4/pi^2; tolerance 5 standard errors
    se = math.sqrt((0.5 - 4 / math.pi ** 2) / n)
    assert abs(r.mean().item() - 2 / math.pi) < 5 * se
    p = 1 - (2 / math.pi) * math.asin(0.9)  # P(r > 0.9) = 0.287 from the density (2/pi)(1 - r^2)^(-1/2)
    assert abs((r > 0.9).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    q = math.cos(0.45 * math.pi)            # the arccos law: P(r > 0.9) = cos(0.45 pi) = 0.156
    ra = arccos_rate(u)
    assert abs((ra > 0.9).double().mean().item() - q) < 5 * math.sqrt(q * (1 - q) / n)
    assert abs(ra.mean().item() - 2 / math.pi) < 5 * math.sqrt((1 - 8 / math.pi ** 2) / n)  # same mean
    assert p - q > 0.1


def test_min_mask_rate_floors():
    u = torch.linspace(0, 1, 101)
    r = mask_rate(u, min_mask_rate=0.5)
    assert r.min().item() == 0.5
    assert torch.equal(r, torch.maximum(torch.cos(math.pi / 2 * u), torch.tensor(0.5)))


# --- training: masks, inputs, labels, loss ---------------------------------------------------------------------------

def test_random_mask_counts_are_ceil_rL():
    rate = torch.tensor([0.0, 0.01, 0.25, 0.26, 0.5, 0.99, 1.0])
    m = random_mask(7, (4, 4), torch.Generator().manual_seed(0), rate=rate)
    assert m.shape == (7, 16) and m.dtype == torch.bool
    assert m.sum(1).tolist() == [1, 1, 4, 5, 8, 16, 16]


def test_random_mask_draws_rates_from_the_law():
    B, L = 64, 24
    m = random_mask(B, (4, 6), torch.Generator().manual_seed(3), min_mask_rate=0.2)
    u = torch.rand(B, generator=torch.Generator().manual_seed(3))  # documented: the first draw is u
    expected = torch.ceil(mask_rate(u, 0.2) * L).long().clamp(1, L)
    assert torch.equal(m.sum(1), expected)
    again = random_mask(B, (4, 6), torch.Generator().manual_seed(3), min_mask_rate=0.2)
    assert torch.equal(m, again)
    other = random_mask(B, (4, 6), torch.Generator().manual_seed(4), min_mask_rate=0.2)
    assert not torch.equal(m, other)


def test_random_mask_positions_are_not_fixed():
    m = random_mask(2000, (4, 4), torch.Generator().manual_seed(0), rate=torch.full((2000,), 0.25))
    freq = m.double().mean(0)  # every position masked with probability 1/4
    assert (freq - 0.25).abs().max().item() < 5 * math.sqrt(0.25 * 0.75 / 2000)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (8, 8)])
def test_random_mask_rectangles(grid):
    h, w = grid
    B = 200
    rate = torch.rand(B, generator=torch.Generator().manual_seed(7))
    m = random_mask(B, grid, torch.Generator().manual_seed(8), rect_prob=1.0, rate=rate).view(B, h, w)
    n = torch.ceil(rate * h * w).long().clamp(1, h * w)
    for b in range(B):
        rows, cols = m[b].nonzero(as_tuple=True)
        rh, rw = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        area = int(m[b].sum())
        assert area == rh * rw                     # a full axis-aligned rectangle
        assert n[b] <= area < n[b] + rh            # area ~ r L: at least ceil(r L), less than one column more


def test_inputs_and_labels():
    ids = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(0))
    mask = random_mask(3, (4, 4), torch.Generator().manual_seed(1))
    x, y = add_noise(ids, mask, 32), make_labels(ids, mask)
    assert torch.equal(x == 32, mask) and torch.equal(x[~mask], ids[~mask])
    assert torch.equal(y == -100, ~mask) and torch.equal(y[mask], ids[mask])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_ce_ignores_unmasked_positions(smoothing):
    g = torch.Generator().manual_seed(0)
    B, L, K = 2, 16, 8
    ids = torch.randint(0, K, (B, L), generator=g)
    mask = random_mask(B, (4, 4), g, rate=torch.tensor([0.3, 0.6]))
    logits = torch.randn(B, L, K, generator=g)
    loss = masked_ce(logits, make_labels(ids, mask), smoothing)
    changed = torch.where(mask[..., None], logits, torch.randn(B, L, K, generator=g) * 10)
    assert torch.equal(masked_ce(changed, make_labels(ids, mask), smoothing), loss)
    logp = F.log_softmax(logits[mask], -1)  # (M, K) at masked positions only
    nll = -logp.gather(1, ids[mask][:, None])[:, 0]
    manual = ((1 - smoothing) * nll + smoothing * (-logp.mean(-1))).mean()
    assert torch.allclose(loss, manual, atol=1e-6)
    changed_masked = logits.clone()
    changed_masked[mask] += torch.randn(int(mask.sum()), K, generator=g)
    assert not torch.equal(masked_ce(changed_masked, make_labels(ids, mask), smoothing), loss)


def test_set_timesteps_with_N_builds_the_count_table_once():
    sched = MaskScheduler("cosine")
    N = torch.tensor([16, 8, 16])
    sched.set_timesteps(5, N)
    table = sched.count_table(N)
    assert table.tolist() == [mask_counts(n, 5, "cosine") for n in (16, 8, 16)]
    assert sched.count_table(N) is table  # reused by every step, not rebuilt
    assert sched.num_masked_after(2, N).tolist() == [mask_counts(n, 5, "cosine")[2] for n in (16, 8, 16)]


def test_md4_weight_is_the_elbo_weight_of_the_cosine_law():
    """-a'(t) / (1 - a(t)) by central differences of the package's own law, a(t) = 1 - mask_rate(1 - t), against the
    closed form (pi/2) sqrt(1 - r^2) / r at r = mask_rate(1 - t)."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6

    def kept(t):
        return 1 - mask_rate(1 - t)
    slope = (kept(t + h) - kept(t - h)) / (2 * h)
    numeric = -slope / (1 - kept(t))
    assert torch.allclose(md4_weight(mask_rate(1 - t)), numeric, rtol=1e-6)
    assert md4_weight(torch.tensor(1.0)) == 0  # a fully masked grid carries no weight
    # E_u[w(r) r] = (pi/2) E[sin(pi u / 2)] = 1: over the law, the weighted share of masked tokens is one per token
    u = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    r = mask_rate(u)
    assert (md4_weight(r) * r).mean().item() == pytest.approx(1.0, rel=1e-6)


def test_weighted_masked_ce_with_unit_weights_is_the_masked_sum():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=g)
    labels = torch.tensor([[1, -100, 3, -100, 0, 2], [-100, -100, 4, 4, -100, 1]])
    n = (labels != -100).sum()
    ones = (labels != -100).float()
    assert torch.allclose(weighted_masked_ce(logits, labels, ones, 0.1) / n, masked_ce(logits, labels, 0.1))
    w = torch.tensor([[2.0], [0.5]]) * ones  # a row's weight scales its tokens' terms
    by_row = [F.cross_entropy(logits[i][labels[i] != -100], labels[i][labels[i] != -100], reduction="sum") for i in (0, 1)]
    assert torch.allclose(weighted_masked_ce(logits, labels, w), 2.0 * by_row[0] + 0.5 * by_row[1])
