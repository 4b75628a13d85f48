"""The decoding loop: from an all-[MASK] grid to image tokens in num_steps parallel steps (MaskGIT §3.2, where
the number of steps is T; Muse §2.7-2.8).

Each step predicts every masked token at once, samples one token per masked position, commits the most confident
and re-masks the rest, so that floor(N gamma((t+1)/num_steps)) stay masked (scheduler.py). Commit rules: `confidence`
(MaskGIT/Muse: log p + annealed Gumbel noise), `halton` (a fixed 2-D low-discrepancy order, Besnier et al. 2025),
`random`, and two that may mask committed tokens again: `remask` (after ReMDM) and `critic` (Token-Critic, critic.py);
they are plain functions in one table, COMMIT_RULES. The contract, `sample(model, text, settings)`, is the one the
autoregressive model's raster loop keeps too (autoregressive.generate). Classifier-free guidance runs the
unconditional pass in the same batch (decoding.py, shared with that loop); Muse's linear ramp and negative prompts are
options. Inpainting, outpainting and mask-free editing reuse the same loop. Taught in
notebooks/06_sampling.ipynb; the per-step history feeds viz.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from .config import SampleConfig
from .decoding import Guided, gumbel, gumbel_from, guidance_weight, log_probs, sample_tokens, uniform
from .scheduler import MaskScheduler


def radical_inverse(i: int, base: int) -> float:
    """The i-th Halton coordinate: the digits of i in `base`, mirrored behind the point (i=6, base 2: 110 -> 0.011)."""
    x, f = 0.0, 1.0 / base
    while i > 0:
        i, digit = divmod(i, base)
        x += digit * f
        f /= base
    return x


@lru_cache(maxsize=32)
def halton_order(h: int, w: int) -> tuple[int, ...]:
    """Every position of an h x w grid once, in the order 2-D Halton points (bases 2 for columns, 3 for rows) first land
    in its cells. Consecutive positions are spread over the whole grid, so each step commits tokens far apart."""
    order, seen, i = [], set(), 1
    while len(order) < h * w:  # Halton points are dense in the square, so every cell is eventually hit
        pos = int(radical_inverse(i, 3) * h) * w + int(radical_inverse(i, 2) * w)
        if pos not in seen:
            seen.add(pos)
            order.append(pos)
        i += 1
    return tuple(order)


def _head_positions(mask: torch.Tensor, same_count: bool) -> torch.Tensor | None:
    """(B, M) indices of the masked positions when every row has M of them, so the head runs at M < L positions.

    Rows that start with the same number N of masked positions keep equal counts at every step (the count table is a
    function of N), so the caller decides `same_count` once per call rather than checking at every step."""
    return mask.nonzero()[:, 1].view(mask.shape[0], -1) if same_count else None  # rows in order: (B*M,) -> (B, M)


@dataclass
class Step:
    """What a commit rule reads: the call's settings and fixed state, and this step's grid and draws, each (B, L)."""
    settings: SampleConfig
    generator: torch.Generator | None
    region: torch.Tensor                   # the positions this call generates; tokens outside it never change
    priority: torch.Tensor | None          # halton, random: the order fixed for the whole call (higher = sooner)
    critic: object = None
    critic_ctx: object = None
    tau: float = 0.0                       # the Gumbel noise's scale at this step, annealed to 0
    ids: torch.Tensor | None = None        # the grid before the step, mask_id where masked
    mask: torch.Tensor | None = None       # True where masked
    logits: torch.Tensor | None = None     # (B, M, K) at the masked positions, or (B, L, K)
    token: torch.Tensor | None = None      # the token drawn at each masked position
    token_logp: torch.Tensor | None = None  # its log p under the distribution drawn from

    def noise(self) -> torch.Tensor:
        return self.tau * gumbel(self.mask.shape, self.generator, self.mask.device)


def commit_by_confidence(s: Step):
    """MaskGIT/Muse: log p of the drawn token plus annealed Gumbel noise; the candidates are the masked positions."""
    return s.token_logp + s.noise(), s.mask


def commit_in_fixed_order(s: Step):
    """halton, random: an order fixed before the first step, whatever the model predicts."""
    return s.priority, s.mask


def commit_or_remask(s: Step):
    """After ReMDM (Wang et al. 2025), training-free: each committed token of the region rejoins the candidates with
    probability remask_prob, scored by log p of the token it holds under the distribution this step draws from."""
    confidence, candidates = commit_by_confidence(s)
    p, (B, L), K = s.settings.remask_prob, s.ids.shape, s.logits.shape[-1]
    if p == 0:
        return confidence, candidates
    held = log_probs(s.logits, s.settings.temperature, s.settings.top_k).gather(-1, s.ids.clamp_max(K - 1)[..., None])[..., 0]
    confidence = torch.where(s.mask, confidence, held + s.noise())  # (B, L)
    return confidence, s.mask | (s.region & (uniform((B, L), s.generator, s.ids.device) < p))


def commit_by_critic(s: Step):
    """Token-Critic (Lezama et al. 2022): fill every gap, and let the critic (critic.py) score every token of the
    region in the filled grid; its logit that a token is wrong, negated, is the confidence."""
    wrong = s.critic(torch.where(s.mask, s.token, s.ids), ctx=s.critic_ctx)  # (B, L)
    return -wrong.float() + s.noise(), s.region


# the commit rules, by the name SampleConfig.sampler takes: each returns (confidence (B, L), candidates (B, L))
COMMIT_RULES = {"confidence": commit_by_confidence, "halton": commit_in_fixed_order, "random": commit_in_fixed_order,
                "remask": commit_or_remask, "critic": commit_by_critic}
REVISING = ("remask", "critic")  # the rules whose candidates include committed tokens


def sample(transformer, text, settings: SampleConfig, *, uncond=None, negative=None, generator=None,
           init_ids=None, init_mask=None, lowres_ids=None, critic=None, return_history=False):
    """Generate token grids (B, h, w) for `text` = (text_emb (B, T, E), text_mask (B, T) or None), as the text encoder
    returns them, with the `settings` (a SampleConfig, checked when it was made: the one place sampling is validated).

    `uncond` = (emb, mask) of the empty prompt "" (one row, or one per prompt), needed when guidance_scale > 0;
    `negative` = (emb, mask) of a negative prompt takes its place in guidance (Muse §2.7).
    `lowres_ids` (B, h', w') conditions a super-res transformer (superres.py) on the base model's grid; guidance then
    contrasts the text with "" while both halves see the same low-res tokens.
    `init_ids` (B, h, w) with `init_mask` (True = regenerate; default: where init_ids == mask_id) inpaints or
    outpaints: only the masked region is sampled and every other token is kept. With `return_history=True` also
    returns one dict per step: `ids` (the grid after the step, mask_id where still masked), `mask`, `committed`,
    `remasked`, `confidence` = the model's probability of the token drawn at each position (positions committed earlier
    keep the value from their last draw; given tokens 1.0) and `entropy` of the distribution sampled from (given tokens
    0.0). Same generator seed, same tokens. The autoregressive model has its own loop with the same contract
    (autoregressive.generate); the pipeline picks which one runs.

    The commit rule (`settings.sampler`, one of COMMIT_RULES) scores the candidates; the count rule is the same for
    all five: after step t exactly floor(N gamma((t+1)/num_steps)) positions of the region are masked, the least confident
    candidates; the last step leaves none.
    """
    s = settings
    if s.sampler == "critic" and critic is None:
        raise ValueError("sampler 'critic' needs a trained critic (a checkpoint's critic/ folder: `minimuse train-critic`)")
    h, w = transformer.grid
    if s.num_steps > h * w:
        # every step commits at least one token, so more steps than tokens only adds passes that commit nothing
        raise ValueError(f"num_steps {s.num_steps} exceeds the {h * w} tokens of the {h}x{w} grid; use 1 to {h * w}")
    text_emb, text_mask = text
    uncond_emb, uncond_mask = negative if negative is not None else (uncond or (None, None))
    scheduler = MaskScheduler(s.schedule)
    weights = [guidance_weight(t, s.num_steps, s.guidance_scale, s.guidance_schedule) for t in range(s.num_steps)]
    B, device = text_emb.shape[0], text_emb.device
    L, mask_id = h * w, transformer.mask_id
    rule = COMMIT_RULES[s.sampler]

    was_training = transformer.training
    transformer.eval()
    try:
        with torch.inference_mode():
            if text_mask is None:
                text_mask = torch.ones(text_emb.shape[:2], dtype=torch.bool, device=device)
            cond = {} if lowres_ids is None else {"lowres_ids": lowres_ids.to(device)}
            model = Guided(transformer, text_emb, text_mask, uncond_emb, uncond_mask, weights, cond)
            ids, mask = _start_grid(transformer, init_ids, init_mask, B, device)  # (B, L) each
            ids = scheduler.add_noise(ids, mask, mask_id)
            N = mask.sum(1)  # (B,) positions to generate: the whole grid, or the inpainting region
            scheduler.set_timesteps(s.num_steps, N)  # every per-step count, computed once here
            # what the commit rules read: fixed for the call here, the step's draws below
            st = Step(settings=s, generator=generator, region=mask, priority=_fixed_order(s.sampler, h, w, B, generator, device),
                      critic=critic, critic_ctx=critic.eval().encode_text(text_emb, text_mask) if s.sampler == "critic" else None)
            conf_map, ent_map = torch.ones(B, L, device=device), torch.zeros(B, L, device=device)  # history's maps
            history = []
            # else inpainting regions differ in size, or remask scores committed tokens too: the full head
            same_count = bool((N == N[0]).all()) and s.sampler != "remask"
            for t in range(s.num_steps):
                head_index = _head_positions(mask, same_count)
                logits = model(ids, weights[t], head_index)  # (B, M, K) or (B, L, K)
                token, token_logp, entropy = _draw(logits, head_index, L, s.temperature, s.top_k, generator,
                                                   return_history)
                st.tau = s.choice_temperature * (1.0 - (t + 1) / s.num_steps)  # noise annealed to 0 (MaskGIT)
                st.ids, st.mask, st.logits, st.token, st.token_logp = ids, mask, logits, token, token_logp
                confidence, candidates = rule(st)
                new_mask = scheduler.step(confidence, candidates, t, N)  # (B, L); non-candidates get +inf inside
                committed = mask & ~new_mask
                ids = torch.where(committed, token, ids)
                if s.sampler in REVISING:
                    ids = torch.where(new_mask, mask_id, ids)  # revised tokens are masked again
                if return_history:
                    conf_map = torch.where(mask, token_logp.exp(), conf_map)
                    ent_map = torch.where(mask, entropy, ent_map)
                    history.append(_step_record(ids, mask, new_mask, committed, conf_map, ent_map, (h, w)))
                mask = new_mask
    finally:
        transformer.train(was_training)
    ids = ids.view(B, h, w)  # (B, L) -> (B, h, w)
    return (ids, history) if return_history else ids


def revisions(history: list[dict]) -> list[float]:
    """Per step, the mean number of tokens per image that differ from their first commit: masked again, or holding
    another token. 0 at every step for the samplers that never revise (confidence, halton, random)."""
    first = None  # (B, h, w) the first committed token at each position, -1 before it
    out = []
    for hs in history:
        ids, mask = hs["ids"], hs["mask"]
        now = torch.where(mask, -1, ids)  # (B, h, w) the committed token, -1 where masked
        first = torch.where(now >= 0, now, -1) if first is None else torch.where((first < 0) & (now >= 0), now, first)
        out.append(float(((first >= 0) & (now != first)).sum()) / ids.shape[0])
    return out


def mask_free_edit(transformer, ids, text, settings: SampleConfig, *, num_iters=100, resample_frac=0.08, uncond=None,
         generator=None, keep_at=()):
    """Mask-free editing (Muse §3.3): `num_iters` times, mask a fresh random `resample_frac` of the tokens and refill
    them in one step of `sample` under the new prompt `text`, with the guidance, temperature and top-k of `settings`
    (Muse: 8%, 100 iterations, guidance 4, top-k 3). ids (B, h, w). With `keep_at` (iteration numbers), also returns
    {iteration: ids} after those iterations, since Muse notes an intermediate iteration can be the better edit."""
    B, (h, w) = ids.shape[0], transformer.grid
    L = h * w
    n = max(1, math.ceil(resample_frac * L))
    one_step = dataclasses.replace(settings, num_steps=1, sampler="confidence", guidance_schedule="constant")
    ids, kept = ids.reshape(B, h, w), {}
    for i in range(num_iters):
        pos = uniform((B, L), generator, ids.device).argsort(1)[:, :n]                          # (B, n) positions
        region = torch.zeros(B, L, dtype=torch.bool, device=ids.device).scatter(1, pos, True)  # (B, L)
        ids = sample(transformer, text, one_step, uncond=uncond, generator=generator, init_ids=ids,
                     init_mask=region.view(B, h, w))
        if i + 1 in keep_at:
            kept[i + 1] = ids.clone()
    return (ids, kept) if keep_at else ids


def _start_grid(transformer, init_ids, init_mask, B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid the loop starts from, (B, L) ids and (B, L) mask (True = to generate): all [MASK], or `init_ids` with
    `init_mask` (default: where init_ids is mask_id) when editing."""
    (h, w), mask_id = transformer.grid, transformer.mask_id
    L = h * w
    if init_ids is None:
        ids = torch.full((B, L), mask_id, dtype=torch.long, device=device)
    else:
        if init_ids.numel() != B * L or (init_mask is not None and init_mask.numel() != B * L):
            raise ValueError(f"init_ids and init_mask must have shape (B, h, w) = ({B}, {h}, {w}), got "
                             f"{tuple(init_ids.shape)} and {None if init_mask is None else tuple(init_mask.shape)}")
        ids = init_ids.reshape(B, L).to(device=device, dtype=torch.long)  # (B, h, w) -> (B, L)
    mask = ids == mask_id if init_mask is None else init_mask.reshape(B, L).to(device).bool()  # (B, L)
    return ids, mask


def _fixed_order(sampler: str, h: int, w: int, B: int, generator, device) -> torch.Tensor | None:
    """(B, L) priorities of the two rules whose order is fixed for the whole call (higher = committed sooner)."""
    L = h * w
    if sampler == "halton":  # earlier in the order = more "confident" = committed sooner
        rank = torch.empty(L, device=device)
        rank[torch.tensor(halton_order(h, w), device=device)] = torch.arange(L, dtype=torch.float, device=device)
        return (-rank).expand(B, L)
    if sampler == "random":
        return uniform((B, L), generator, device)  # one random order per sample, fixed for the call
    return None


def _draw(logits, head_index, L: int, temperature: float, top_k: int, generator, entropy: bool):
    """One token per position from (B, M, K) logits at `head_index` (or (B, L, K) at every position), with its log p
    and (if `entropy`) the entropy it was drawn from, each (B, L). The uniforms are drawn for all L positions either
    way, so the two paths draw the same tokens."""
    B, K, device = logits.shape[0], logits.shape[-1], logits.device
    u = uniform((B, L, K), generator, device)
    if head_index is not None:  # the logs only where the head ran
        u = u.gather(1, head_index[..., None].expand(-1, -1, K))  # (B, M, K)
    token, token_logp, ent = sample_tokens(logits, temperature, top_k, gumbel_from(u), entropy)
    if head_index is not None:  # back to the full grid: (B, M) -> (B, L)
        token = torch.zeros(B, L, dtype=torch.long, device=device).scatter(1, head_index, token)
        token_logp = torch.zeros(B, L, device=device).scatter(1, head_index, token_logp)
        if entropy:
            ent = torch.zeros(B, L, device=device).scatter(1, head_index, ent)
    return token, token_logp, ent


def _step_record(ids, mask, new_mask, committed, conf_map, ent_map, grid) -> dict:
    """One step of the history, each (B, L) map as (B, h, w): see `sample`."""
    B = ids.shape[0]
    return {"ids": ids.view(B, *grid).clone(), "mask": new_mask.view(B, *grid).clone(),
            "committed": committed.view(B, *grid), "confidence": conf_map.view(B, *grid),
            "entropy": ent_map.view(B, *grid), "remasked": (~mask & new_mask).view(B, *grid)}
