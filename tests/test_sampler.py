"""Sampler: per-step mask counts, commit orders, guidance, inpainting, history and determinism.

Most tests use `StandIn`, a parameter-free model with the MaskedTransformer interface whose logits are a fixed function
of the ids and the text, and which records every call; the last ones run the real transformer at a tiny size.
"""
import math

import pytest
import torch
import torch.nn as nn

import minimuse.sampler as sampler_mod
from minimuse.config import SAMPLER_NAMES, SCHEDULE_NAMES, SampleConfig, TransformerConfig
from minimuse.decoding import Guided, guidance_weight, guided_logits
from minimuse.sampler import halton_order, mask_free_edit, sample
from minimuse.scheduler import mask_counts

K, GRID, E = 16, (4, 4), 8
L = GRID[0] * GRID[1]


class StandIn(nn.Module):
    """Deterministic logits from (ids, text); records encode_text inputs and forward batch sizes / head indices."""

    def __init__(self, grid=GRID):
        super().__init__()
        self.codebook_size, self.mask_id, self.grid, self.text_dim = K, K, grid, E
        self.encoded, self.batches, self.heads = [], [], []

    def encode_text(self, text, text_mask):
        self.encoded.append((text.clone(), text_mask.clone()))
        return (text * text_mask[..., None]).sum(1)  # (B, E): all this model keeps of the text

    def forward(self, ids, text=None, text_mask=None, *, ctx=None, head_index=None, return_attn=False):
        B, n = ids.shape
        self.batches.append(B)
        self.heads.append(None if head_index is None else head_index.clone())
        if isinstance(ctx, tuple):  # one context per equal slice of the batch, as guidance passes (cond, uncond)
            ctx = torch.cat([c.expand(B // len(ctx), -1) for c in ctx])
        pos = torch.arange(n, dtype=torch.float)[None, :, None]  # (1, L, 1)
        k = torch.arange(K, dtype=torch.float)[None, None, :]    # (1, 1, K)
        left = ids.roll(1, dims=1)                                # each position sees its left neighbour
        logits = 2.0 * torch.sin(0.9 * pos + 1.3 * k + ctx.sum(-1)[:, None, None])  # (B, L, K)
        logits = logits + 1.5 * nn.functional.one_hot(left.clamp(max=K - 1), K) * (left != self.mask_id)[..., None]
        if head_index is not None:
            logits = logits.gather(1, head_index[..., None].expand(-1, -1, K))  # (B, M, K)
        return logits


class CriticStandIn(nn.Module):
    """A deterministic "this token is wrong" logit per position, from the token and its position."""

    def encode_text(self, text, text_mask):
        return None

    def forward(self, ids, ctx=None):
        return torch.sin(1.7 * ids.float() + 0.3 * torch.arange(ids.shape[1], dtype=torch.float))  # (B, L)


def _with_critic(kw):
    return {**kw, "critic": CriticStandIn()} if kw.get("sampler") == "critic" else kw


def texts(B, seed=0, T=5):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, T, E, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, T - 1] = False  # one padding token per row
    return emb, mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def settings(**kw):
    """The sampler's settings with guidance off unless asked (SampleConfig's default is Muse-like, 1.5)."""
    return SampleConfig(**{"guidance_scale": 0.0, **kw})


CALL_ARGS = ("init_ids", "init_mask", "lowres_ids", "critic", "return_history", "negative")  # not settings


def run(model=None, B=2, seed=0, **kw):
    """sample() on B stand-in prompts with "" as texts(1, 99); kw are SampleConfig fields and sample()'s keywords."""
    kw = _with_critic(kw)
    call = {k: kw.pop(k) for k in CALL_ARGS if k in kw}
    return sample(model or StandIn(), texts(B), settings(**kw), uncond=texts(1, seed=99), generator=gen(seed), **call)


# --- the loop: counts, commits, history ------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_masks_per_step_follow_the_schedule(sampler, schedule):
    T = 7
    ids, hist = run(num_steps=T, schedule=schedule, sampler=sampler, return_history=True, guidance_scale=1.0)
    assert ids.shape == (2, 4, 4) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < K  # nothing left masked
    counts = mask_counts(L, T, schedule)
    prev = torch.ones(2, *GRID, dtype=torch.bool)
    for t, h in enumerate(hist):
        assert h["mask"].sum((1, 2)).tolist() == [counts[t]] * 2
        assert torch.equal(h["committed"], prev & ~h["mask"])            # committed = masked before, not after
        assert torch.equal(h["ids"] == K, h["mask"])                      # still-masked positions hold mask_id
        prev = h["mask"]
    assert not hist[-1]["mask"].any() and torch.equal(hist[-1]["ids"], ids)


def test_history_keys_shapes_dtypes():
    T = 5
    ids, hist = run(B=3, num_steps=T, return_history=True)
    assert len(hist) == T
    for h in hist:
        assert set(h) == {"ids", "mask", "committed", "confidence", "entropy", "remasked"}
        for key, dtype in (("ids", torch.long), ("mask", torch.bool), ("committed", torch.bool), ("remasked", torch.bool),
                           ("confidence", torch.float32), ("entropy", torch.float32)):
            assert h[key].shape == (3, 4, 4) and h[key].dtype == dtype, key
        assert float(h["confidence"].min()) >= 0 and float(h["confidence"].max()) <= 1
        assert float(h["entropy"].min()) >= 0 and float(h["entropy"].max()) <= math.log(K) + 1e-5
    # a committed token keeps the confidence it was committed with
    c0 = hist[0]["committed"]
    assert torch.equal(hist[-1]["confidence"][c0], hist[0]["confidence"][c0])


@pytest.mark.parametrize("sampler", [s for s in SAMPLER_NAMES if s not in ("remask", "critic")])  # those two revise
def test_committed_tokens_never_change(sampler):
    _, hist = run(B=3, num_steps=6, sampler=sampler, return_history=True)
    for t, h in enumerate(hist):
        done = ~h["mask"]
        for later in hist[t + 1:]:
            assert torch.equal(later["ids"][done], h["ids"][done])
            assert not (later["mask"] & done).any()


def test_confidence_sampler_commits_the_most_confident_without_noise():
    _, hist = run(B=4, num_steps=6, choice_temperature=0.0, return_history=True)
    for h in hist[:-1]:
        for b in range(4):
            kept, remasked = h["confidence"][b][h["committed"][b]], h["confidence"][b][h["mask"][b]]
            assert float(kept.min()) >= float(remasked.max())


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 4), (5, 7), (8, 8), (16, 16)])
def test_halton_visits_every_position_once(grid):
    order = halton_order(*grid)
    assert sorted(order) == list(range(grid[0] * grid[1]))


def test_halton_order_hand_computed():
    # i=1: (x, y) = (1/2, 1/3) -> row 1, col 2; i=2: (1/4, 2/3) -> row 2, col 1; i=3: (3/4, 1/9) -> row 0, col 3;
    # i=4: (1/8, 4/9) -> row 1, col 0
    assert halton_order(4, 4)[:4] == (6, 9, 3, 4)


def test_halton_sampler_commits_in_halton_order():
    T = 6
    _, hist = run(num_steps=T, sampler="halton", return_history=True)
    order = halton_order(*GRID)
    counts = mask_counts(L, T, "cosine")
    for t, h in enumerate(hist):
        done = set((~h["mask"][0]).flatten().nonzero()[:, 0].tolist())
        assert done == set(order[: L - counts[t]])


def test_halton_with_top1_is_deterministic_across_seeds():
    # the order is fixed and top-1 sampling is greedy, so no randomness is left
    assert torch.equal(run(sampler="halton", top_k=1, seed=0), run(sampler="halton", top_k=1, seed=1))
    assert not torch.equal(run(sampler="random", seed=0, num_steps=4, return_history=True)[1][0]["mask"],
                           run(sampler="random", seed=1, num_steps=4, return_history=True)[1][0]["mask"])


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_determinism(sampler):
    a, b = run(sampler=sampler, seed=3), run(sampler=sampler, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, run(sampler=sampler, seed=4))


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="confidence, halton, random"):
        run(sampler="greedy")
    with pytest.raises(ValueError, match="choose one of"):
        run(schedule="cosin")
    with pytest.raises(ValueError, match="needs uncond"):
        sample(StandIn(), texts(2), settings(guidance_scale=2.0))
    with pytest.raises(ValueError, match="constant, linear"):
        run(guidance_scale=1.0, guidance_schedule="cosine")
    with pytest.raises(ValueError, match=r"\(B, h, w\) = \(2, 4, 4\)"):
        run(init_ids=torch.zeros(2, 3, 3, dtype=torch.long))


# --- guidance --------------------------------------------------------------------------------------------------------

def test_guidance_algebra():
    g = gen(0)
    c, u = torch.randn(3, 5, K, generator=g), torch.randn(3, 5, K, generator=g)
    for w in (0.0, 0.5, 3.0):
        assert torch.allclose(guided_logits(c, u, w), (1 + w) * c - w * u, atol=1e-5)
    assert [guidance_weight(t, 5, 2.0, "linear") for t in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert [guidance_weight(t, 5, 2.0, "constant") for t in range(5)] == [2.0] * 5


class GuidedByHand(nn.Module):
    """Returns l_u + (1 + w)(l_c - l_u) itself, with the unconditional text baked in: a guidance-free reference."""

    def __init__(self, base, uncond, uncond_mask, w):
        super().__init__()
        self.base, self.w = base, w
        self.codebook_size, self.mask_id, self.grid = base.codebook_size, base.mask_id, base.grid
        self.u_ctx = base.encode_text(uncond, uncond_mask)

    def encode_text(self, text, text_mask):
        return self.base.encode_text(text, text_mask)

    def forward(self, ids, *, ctx, head_index=None):
        c = self.base(ids, ctx=ctx, head_index=head_index)
        u = self.base(ids, ctx=self.u_ctx.expand(ids.shape[0], -1), head_index=head_index)
        return u + (1 + self.w) * (c - u)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_guided_sample_equals_sampling_the_guided_logits(sampler):
    emb, mask = texts(2)
    u, um = texts(1, seed=99)
    critic = {"critic": CriticStandIn()} if sampler == "critic" else {}
    s = settings(sampler=sampler, num_steps=5)
    guided = sample(StandIn(), (emb, mask), settings(sampler=sampler, num_steps=5, guidance_scale=2.5), uncond=(u, um),
                    generator=gen(5), **critic)
    by_hand = sample(GuidedByHand(StandIn(), u, um, 2.5), (emb, mask), s, generator=gen(5), **critic)
    assert torch.equal(guided, by_hand)
    assert not torch.equal(guided, sample(StandIn(), (emb, mask), s, generator=gen(5), **critic))


@pytest.mark.parametrize("T", [3, 8])
def test_unconditional_pass_skipped_when_weight_is_zero(T):
    B = 2
    # the prompts are encoded once (B rows) and the one unconditional row once, unexpanded
    for scale, schedule, batches, encodes in ((0.0, "constant", [B] * T, [B]),
                                              (2.0, "constant", [2 * B] * T, [1, B]),
                                              (2.0, "linear", [B] + [2 * B] * (T - 1), [1, B])):
        model = StandIn()
        run(model, B=B, num_steps=T, guidance_scale=scale, guidance_schedule=schedule)
        assert model.batches == batches                                     # one forward per step, 2B when guided
        assert sorted(e[0].shape[0] for e in model.encoded) == encodes      # text K/V once per call, not per step


def test_negative_prompt_replaces_the_unconditional_logits_only():
    emb, mask = texts(2)
    u, um = texts(1, seed=99)
    neg, nm = texts(2, seed=7, T=3)
    spy = StandIn()
    s = settings(guidance_scale=2.0)
    with_neg = sample(spy, (emb, mask), s, uncond=(u, um), negative=(neg, nm), generator=gen(1))
    (cond, cond_mask), (negative, negative_mask) = spy.encoded
    assert torch.equal(cond, emb) and torch.equal(cond_mask, mask)              # the conditional half as given
    assert torch.equal(negative, neg) and torch.equal(negative_mask, nm)        # the negative, its own length, as l_u
    assert torch.equal(with_neg, sample(StandIn(), (emb, mask), s, uncond=(neg, nm), generator=gen(1)))
    assert not torch.equal(with_neg, sample(StandIn(), (emb, mask), s, uncond=(u, um), generator=gen(1)))


# --- inpainting, head_index, editing ---------------------------------------------------------------------------------

def test_inpainting_keeps_known_tokens_and_counts_per_region():
    B, T = 3, 5
    init = torch.randint(0, K, (B, *GRID), generator=gen(0))
    region = torch.zeros(B, *GRID, dtype=torch.bool)
    region[0, :2] = True        # 8 tokens
    region[1, :, 3] = True      # 4 tokens (outpainting a column)
    region[2, 1:4, 1:4] = True  # 9 tokens
    model = StandIn()
    emb, mask = texts(B)
    ids, hist = sample(model, (emb, mask), settings(num_steps=T), init_ids=init, init_mask=region, generator=gen(0),
                       return_history=True)
    assert torch.equal(ids[~region], init[~region])
    assert all(h is None for h in model.heads)  # regions differ in size: full head
    for t, h in enumerate(hist):
        assert h["mask"].sum((1, 2)).tolist() == [mask_counts(n, T, "cosine")[t] for n in (8, 4, 9)]
        assert not (h["mask"] & ~region).any()


def test_head_index_used_from_all_mask_and_matches_full_head(monkeypatch):
    model = StandIn()
    fast, fast_hist = run(model, B=2, num_steps=5, guidance_scale=1.0, return_history=True)
    counts = [L] + mask_counts(L, 5, "cosine")
    assert [h.shape for h in model.heads] == [(4, counts[t]) for t in range(5)]  # (2B, M) with M still masked
    monkeypatch.setattr(sampler_mod, "_head_positions", lambda mask, same_count: None)
    full, full_hist = run(StandIn(), B=2, num_steps=5, guidance_scale=1.0, return_history=True)
    assert torch.equal(fast, full)
    for a, b in zip(fast_hist, full_hist):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_edit_resamples_a_fraction():
    model = StandIn()
    emb, mask = texts(2)
    u, um = texts(1, seed=99)
    ids = torch.randint(0, K, (2, *GRID), generator=gen(0))
    s = settings(guidance_scale=4.0, top_k=3)  # Muse §3.3's
    assert torch.equal(mask_free_edit(model, ids, (emb, mask), s, num_iters=0, uncond=(u, um), generator=gen(0)), ids)
    one = mask_free_edit(model, ids, (emb, mask), s, num_iters=1, resample_frac=0.2, uncond=(u, um), generator=gen(0))
    assert ((one != ids).sum((1, 2)) <= math.ceil(0.2 * L)).all()
    many = mask_free_edit(model, ids, (emb, mask), s, num_iters=30, uncond=(u, um), generator=gen(0))
    assert torch.equal(many, mask_free_edit(model, ids, (emb, mask), s, num_iters=30, uncond=(u, um), generator=gen(0)))
    assert many.shape == ids.shape and (many != ids).any()
    assert model.batches[-30:] == [4] * 30 and all(h.shape == (4, 2) for h in model.heads[-30:])  # ceil(8% of 16) = 2


# --- the real transformer at a tiny size -----------------------------------------------------------------------------

def _tiny_transformer():
    transformer = pytest.importorskip("minimuse.transformer")
    torch.manual_seed(0)
    return transformer.MaskedTransformer(TransformerConfig(width=16, depth=1, heads=2), K, GRID, E)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_real_transformer_sample(sampler, monkeypatch):
    model = _tiny_transformer().train()
    calls = []
    encode = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda t, m: calls.append(t.shape[0]) or encode(t, m))
    kw = dict(num_steps=6, sampler=sampler, guidance_scale=2.0, guidance_schedule="linear", top_k=4)
    ids, hist = run(model, B=3, seed=0, return_history=True, **kw)
    assert model.training                     # the sampler restores the mode it found
    assert sorted(calls) == [1, 3]            # the prompts and the one unconditional row, once each
    assert ids.shape == (3, 4, 4) and int(ids.max()) < K
    assert [int(h["mask"][0].sum()) for h in hist] == mask_counts(L, 6, "cosine")
    assert torch.equal(ids, run(model, B=3, seed=0, **kw))
    monkeypatch.setattr(sampler_mod, "_head_positions", lambda mask, same_count: None)
    assert torch.equal(ids, run(model, B=3, seed=0, **kw))  # full head, same tokens


def test_real_transformer_inpainting():
    model = _tiny_transformer().eval()
    init = torch.randint(0, K, (2, *GRID), generator=gen(1))
    region = torch.zeros(2, *GRID, dtype=torch.bool)
    region[:, 1:3, 1:3] = True
    emb, mask = texts(2)
    ids = sample(model, (emb, mask), settings(num_steps=4), init_ids=init, init_mask=region, generator=gen(2))
    assert torch.equal(ids[~region], init[~region]) and int(ids.max()) < K


# ---------------------------------------------------------------------------------------------- reliability guards
class Poisoned(StandIn):
    """StandIn whose logits turn NaN from the `bad_call`-th forward pass on, as a broken checkpoint's would."""

    def __init__(self, bad_call):
        super().__init__()
        self.bad_call = bad_call

    def forward(self, ids, *args, **kw):
        logits = super().forward(ids, *args, **kw)
        return logits * float("nan") if len(self.batches) >= self.bad_call else logits


@pytest.mark.parametrize("bad_call", [1, 3])
def test_non_finite_logits_stop_sampling_with_a_clear_error(bad_call):
    with pytest.raises(FloatingPointError, match="non-finite"):
        run(Poisoned(bad_call), num_steps=4)


def test_more_steps_than_tokens_are_refused():
    run(num_steps=L)  # one token per step is the most a grid allows
    for bad, why in ((L + 1, "exceeds the 16 tokens"), (10_000, "at most 4096"), (0, "at least 1")):
        with pytest.raises(ValueError, match=why):
            run(num_steps=bad)


@pytest.mark.parametrize("kw", [{"guidance_scale": math.nan}, {"guidance_scale": math.inf}, {"choice_temperature": -1.0},
                                {"temperature": math.nan}, {"top_k": -1}])
def test_non_finite_or_negative_sampling_arguments_are_refused(kw):
    with pytest.raises(ValueError):
        run(**kw)


def test_schedule_arithmetic_is_linear_in_the_steps(monkeypatch):
    # The count table is built once per distinct N for the whole call, not once per step (which was O(T^2)).
    import minimuse.scheduler as sched_mod
    calls = []
    real = sched_mod.mask_counts
    monkeypatch.setattr(sched_mod, "mask_counts", lambda N, T, s="cosine": calls.append(N) or real(N, T, s))
    ids = torch.full((3, *GRID), K)
    init_mask = torch.zeros(3, L, dtype=torch.bool)
    init_mask[0, :8], init_mask[1, :4], init_mask[2, :8] = True, True, True  # regions of 8, 4 and 8 tokens
    run(B=3, num_steps=4, init_ids=ids, init_mask=init_mask.view(3, *GRID))
    assert sorted(calls) == [4, 8]


# --- the reference loop of notebooks/06_sampling.ipynb, and the fast paths against the plain ones ---------------------

def _notebook_06_sample(transformer, text, text_mask, num_steps, tau, generator, schedule="cosine"):
    """my_sample from notebook 06, as written there: the loop the package's sampler must reproduce token for token."""
    from minimuse import scheduler
    (h, w), K_, mask_id = transformer.grid, transformer.codebook_size, transformer.mask_id
    L_ = h * w

    def gumbel(shape, generator):
        return -torch.log(-torch.log(torch.rand(shape, generator=generator).clamp_min(1e-20)))

    def draw_tokens(logits, g):
        logp = torch.nn.functional.log_softmax(logits.float(), dim=-1)  # (..., K)
        token = (logp + g).argmax(-1)
        return token, logp.gather(-1, token[..., None])[..., 0]

    with torch.inference_mode():
        B = text.shape[0]
        ctx = transformer.encode_text(text, text_mask)
        ids = torch.full((B, L_), mask_id)
        mask = torch.ones(B, L_, dtype=torch.bool)
        counts = scheduler.mask_counts(L_, num_steps, schedule)
        for t in range(num_steps):
            where = mask.nonzero()[:, 1].view(B, -1)  # (B, M)
            logits = transformer(ids, ctx=ctx, head_index=where)  # (B, M, K)
            g = gumbel((B, L_, K_), generator).gather(1, where[..., None].expand(-1, -1, K_))  # (B, M, K)
            token, token_logp = draw_tokens(logits, g)
            noise = gumbel((B, L_), generator).gather(1, where)  # (B, M)
            tau_t = tau * (1 - (t + 1) / num_steps)
            confidence = torch.full((B, L_), math.inf).scatter(1, where, token_logp + tau_t * noise)
            new_mask = scheduler.remask_least_confident(confidence, torch.full((B,), counts[t]))
            drawn = torch.zeros(B, L_, dtype=torch.long).scatter(1, where, token)
            ids = torch.where(mask & ~new_mask, drawn, ids)
            mask = new_mask
    return ids.view(B, h, w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_seed_gives_the_tokens_of_notebook_06s_reference_loop(seed):
    model = _tiny_transformer().eval()
    emb, mask = texts(3, seed=seed)
    ref = _notebook_06_sample(model, emb, mask, 6, 1.0, gen(seed))
    ids = sample(model, (emb, mask), settings(num_steps=6, choice_temperature=1.0), generator=gen(seed))
    assert torch.equal(ids, ref)
    assert not torch.equal(ids, sample(model, (emb, mask), settings(num_steps=6), generator=gen(seed + 10)))  # the seed matters


def test_unpadded_unconditional_context_equals_the_padded_one():
    """Guidance attends the uncond half to its own 2-token text; padding it to the prompt's length, masked, is the
    same attention: the logits agree to float rounding."""
    model = _tiny_transformer().eval()
    emb, mask = texts(3)
    u = torch.randn(1, 2, E)
    ids = torch.randint(0, K, (3, L))
    with torch.inference_mode():
        fast = Guided(model, emb, mask, u, None, [1.0])(ids, 1.0)
        T = emb.shape[1]
        padded = torch.cat([emb, torch.nn.functional.pad(u, (0, 0, 0, T - 2)).expand(3, -1, -1)])     # (2B, T, E)
        pmask = torch.cat([mask, (torch.arange(T) < 2).expand(3, -1)])                             # (2B, T)
        cond, uncond = model(ids.repeat(2, 1), ctx=model.encode_text(padded, pmask)).chunk(2)
    torch.testing.assert_close(fast, guided_logits(cond, uncond, 1.0), rtol=1e-5, atol=1e-5)


def test_onednn_path_gives_the_tokens_of_torchs_default_path(monkeypatch):
    from minimuse import transformer as transformer_mod
    if transformer_mod._ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN")
    model = _tiny_transformer().eval()
    emb, mask = texts(3)
    u, um = texts(1, seed=99)
    s = settings(num_steps=6, guidance_scale=2.0)
    fast = sample(model, (emb, mask), s, uncond=(u, um), generator=gen(3))
    monkeypatch.setattr(transformer_mod, "USE_ONEDNN", False)
    assert torch.equal(fast, sample(model, (emb, mask), s, uncond=(u, um), generator=gen(3)))


@pytest.mark.slow
def test_compiled_blocks_give_the_tokens_of_the_eager_ones():
    """docs/bench_ablation.py's torch.compile variant: inductor on run_blocks (the Linear falls back to F.linear
    under compile) must not change a token."""
    model = _tiny_transformer().eval()
    emb, mask = texts(2)
    u, um = texts(1, seed=99)
    s = settings(num_steps=5, guidance_scale=1.5)
    eager = sample(model, (emb, mask), s, uncond=(u, um), generator=gen(4))
    model.run_blocks = torch.compile(model.run_blocks, dynamic=False)
    try:
        compiled = sample(model, (emb, mask), s, uncond=(u, um), generator=gen(4))
    finally:
        del model.run_blocks
    assert torch.equal(compiled, eager)


@pytest.mark.slow
@pytest.mark.parametrize("padded", [True, False], ids=["padded-prompts", "all-real-text"])
def test_aoti_script_compiles_the_blocks_that_eager_runs(monkeypatch, padded):
    """docs/bench_aoti.py's compiled blocks take the context as an input (the prompts, their padding mask and the
    shared "" text): on activations, prompts, padding and "" text other than the ones it was exported with they must
    give the eager blocks' output. All-real text is the mask-free path the script itself exports."""
    import importlib.util
    import tempfile
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "bench_aoti.py"
    monkeypatch.syspath_prepend(str(path.parent))  # it imports bench_ablation from docs/
    spec = importlib.util.spec_from_file_location("bench_aoti", path)
    bench_aoti = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_aoti)
    model = _tiny_transformer().eval()

    def inputs(seed):
        emb, mask = texts(2, seed=seed)
        mask[:] = True
        if padded:
            mask[0, 4 - seed:] = False  # another padding pattern for each seed
        u, um = texts(1, seed=99 + seed)
        with torch.inference_mode():
            layers = model.text_layers(Guided(model, emb, mask, u, torch.ones_like(um), [1.5]).ctx_both, 4)
        return torch.randn(4, GRID[0] * GRID[1], 16, generator=gen(seed)), layers  # (2B, L, D)

    x, layers = inputs(0)
    x2, layers2 = inputs(1)
    with tempfile.TemporaryDirectory() as workdir, torch.no_grad():
        blocks = bench_aoti.compile_blocks(model, x, layers, workdir)
        with torch.inference_mode():
            eager, eager_first = model.run_blocks(x2, layers2)[0], model.run_blocks(x, layers)[0]
            compiled = blocks(x2, layers2)
    assert not torch.allclose(eager, eager_first)  # the second inputs do change the output
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ablation_script_runs_each_variant_and_the_exact_ones_keep_the_tokens():
    """docs/bench_ablation.py patches the sampler from outside; when the sampler's internals change (as Guided's
    signature did for super-res) its variants must still run, and every variant that claims to change only speed must
    give the shipped sampler's tokens for the seed."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from minimuse import transformer as transformer_mod
    if transformer_mod._ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN, which the script's variants patch")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "docs" / "bench_ablation.py"), "--preset", "ci", "--batch", "2",
                          "--steps", "4", "--rounds", "1", "--no-compile"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    variants = result["variants"]
    changes_tokens = {"Muse ramp (step 0 skips the unconditional pass)", "bf16 autocast"}  # other weights, other dtype
    assert {"tried: weights prepacked once per call", "tried: residual adds in the GEMM"} <= set(variants)
    assert all(v["same_tokens_as_shipped"] for name, v in variants.items() if name not in changes_tokens), variants
    assert not variants["Muse ramp (step 0 skips the unconditional pass)"]["same_tokens_as_shipped"]
    assert 0 < result["shipped"]["fraction_of_peak"] <= 1
