"""The decoding loop: from an all-[MASK] grid to image tokens in T parallel steps (MaskGIT §3.2, Muse §2.7-2.8).

Each step predicts every masked token at once, samples one token per masked position, commits the most confident
and re-masks the rest, so that floor(N gamma((t+1)/T)) stay masked (scheduler.py). Commit rules: `confidence`
(MaskGIT/Muse: log p + annealed Gumbel noise), `halton` (a fixed 2-D low-discrepancy order, Besnier et al. 2025),
`random`, and two that may mask committed tokens again: `remask` (after ReMDM) and `critic` (Token-Critic, critic.py).
An autoregressive model (autoregressive.py) is handed to its own raster loop. Classifier-free guidance runs the
unconditional pass in the same batch (decoding.py, shared with that loop); Muse's linear ramp and negative prompts are
options. Inpainting, outpainting and mask-free editing reuse the same loop. Taught in
notebooks/06_sampling.ipynb; the per-step history feeds viz.py.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from .autoregressive import generate
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


def sample(transformer, text_emb, text_mask, uncond_emb=None, uncond_mask=None, *, num_steps=12, schedule="cosine",
           sampler="confidence", guidance_scale=0.0, guidance_schedule="constant", negative_emb=None,
           negative_mask=None, choice_temperature=1.0, temperature=1.0, top_k=0, generator=None, init_ids=None,
           init_mask=None, lowres_ids=None, return_history=False, remask_prob=0.05, critic=None):
    """Generate token grids (B, h, w) for text embeddings (B, T, E) with padding masks (B, T).

    `lowres_ids` (B, h', w') conditions a super-res transformer (superres.py) on the base model's grid; guidance then
    contrasts the text with "" while both halves see the same low-res tokens.
    `init_ids` (B, h, w) with `init_mask` (True = regenerate; default: where init_ids == mask_id) inpaints or
    outpaints: only the masked region is sampled and every other token is kept. `negative_emb` replaces the
    unconditional text in guidance. With `return_history=True` also returns one dict per step: `ids` (the grid after
    the step, mask_id where still masked), `mask`, `committed`, `confidence` = the model's probability of the token
    drawn at each position (positions committed earlier keep the value from their last draw; given tokens 1.0) and
    `entropy` of the distribution sampled from (given tokens 0.0). Same generator seed, same tokens.

    Two samplers revise committed tokens. `remask` (training-free, after ReMDM, Wang et al. 2025): at each step every
    committed token of the region joins the masked positions as a candidate with probability `remask_prob`, scored by
    the model's current log p of it. `critic` (Token-Critic, Lezama et al. 2022): the masked positions are filled, and
    `critic` (critic.py) scores every token of the region in the filled grid. Count rule, the same for all five
    samplers: after step t exactly floor(N gamma((t+1)/T)) positions of the region are masked, the least confident
    candidates (for the three others the candidates are the masked positions only); the last step leaves none.
    """
    # the same checks as the config and the CLI (finite, in range, known names): one mechanism, one message style
    SampleConfig(num_steps=num_steps, schedule=schedule, sampler=sampler, guidance_scale=guidance_scale,
                 guidance_schedule=guidance_schedule, choice_temperature=choice_temperature, temperature=temperature,
                 top_k=top_k, remask_prob=remask_prob)
    if sampler == "critic" and critic is None:
        raise ValueError("sampler 'critic' needs a trained critic (a checkpoint's critic/ folder: `minimuse train-critic`)")
    if getattr(transformer, "ARCH", "masked") == "autoregressive":  # raster order, one token per pass: its own loop
        if init_ids is not None or lowres_ids is not None or return_history:
            raise ValueError("the autoregressive model draws whole images in raster order: no init_ids (editing), "
                             "lowres_ids or step history")
        return generate(transformer, text_emb, text_mask, uncond_emb, uncond_mask, guidance_scale=guidance_scale,
                        guidance_schedule=guidance_schedule, negative_emb=negative_emb, negative_mask=negative_mask,
                        temperature=temperature, top_k=top_k, generator=generator)
    h, w = transformer.grid
    if num_steps > h * w:
        # every step commits at least one token, so more steps than tokens only adds passes that commit nothing
        raise ValueError(f"num_steps {num_steps} exceeds the {h * w} tokens of the {h}x{w} grid; use 1 to {h * w}")
    scheduler = MaskScheduler(schedule)
    weights = [guidance_weight(t, num_steps, guidance_scale, guidance_schedule) for t in range(num_steps)]
    if negative_emb is not None:  # a negative prompt takes the place of l_u (Muse §2.7)
        uncond_emb, uncond_mask = negative_emb, negative_mask
    B, device = text_emb.shape[0], text_emb.device
    L, mask_id = h * w, transformer.mask_id

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
            scheduler.set_timesteps(num_steps, N)  # every per-step count, computed once here

            priority = _fixed_order(sampler, h, w, B, generator, device)  # halton, random: (B, L); else None
            conf_map, ent_map = torch.ones(B, L, device=device), torch.zeros(B, L, device=device)  # history's maps
            history = []
            region = mask  # the positions this call generates; tokens outside it are given and never change
            revise = sampler in ("remask", "critic")
            critic_ctx = critic.eval().encode_text(text_emb, text_mask) if sampler == "critic" else None

            # else inpainting regions differ in size, or remask scores committed tokens too: the full head
            same_count = bool((N == N[0]).all()) and sampler != "remask"
            for t in range(num_steps):
                head_index = _head_positions(mask, same_count)
                logits = model(ids, weights[t], head_index)  # (B, M, K) or (B, L, K)
                token, token_logp, entropy = _draw(logits, head_index, L, temperature, top_k, generator, return_history)

                tau = choice_temperature * (1.0 - (t + 1) / num_steps)  # noise annealed to 0 (MaskGIT)
                if sampler == "critic":  # the critic's logit that a token is wrong, on the grid with every gap filled
                    wrong = critic(torch.where(mask, token, ids), ctx=critic_ctx)  # (B, L)
                    confidence, candidates = -wrong.float() + tau * gumbel((B, L), generator, device), region
                elif sampler in ("confidence", "remask"):  # log p under the distribution drawn from
                    confidence, candidates = token_logp + tau * gumbel((B, L), generator, device), mask
                else:
                    confidence, candidates = priority, mask
                if sampler == "remask" and remask_prob > 0:
                    confidence, candidates = _remask_candidates(logits, ids, mask, region, confidence, tau, remask_prob,
                                                                temperature, top_k, generator)
                new_mask = scheduler.step(confidence, candidates, t, N)  # (B, L); non-candidates get +inf inside
                committed = mask & ~new_mask
                ids = torch.where(committed, token, ids)
                if revise:
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


def edit(transformer, ids, text_emb, text_mask, uncond_emb=None, uncond_mask=None, *, num_iters=100,
         resample_frac=0.08, guidance_scale=4.0, top_k=3, temperature=1.0, generator=None, keep_at=()):
    """Mask-free editing (Muse §3.3): `num_iters` times, mask a fresh random `resample_frac` of the tokens and refill
    them in one step of `sample` under the new prompt, with guidance and top-k (Muse: 8%, 100 iterations, guidance 4,
    top-k 3). ids (B, h, w). With `keep_at` (iteration numbers), also returns {iteration: ids} after those iterations,
    since Muse notes an intermediate iteration can be the better edit."""
    B, (h, w) = ids.shape[0], transformer.grid
    L = h * w
    n = max(1, math.ceil(resample_frac * L))
    ids, kept = ids.reshape(B, h, w), {}
    for i in range(num_iters):
        pos = uniform((B, L), generator, ids.device).argsort(1)[:, :n]                          # (B, n) positions
        region = torch.zeros(B, L, dtype=torch.bool, device=ids.device).scatter(1, pos, True)  # (B, L)
        ids = sample(transformer, text_emb, text_mask, uncond_emb, uncond_mask, num_steps=1, guidance_scale=guidance_scale,
                     temperature=temperature, top_k=top_k, generator=generator, init_ids=ids, init_mask=region.view(B, h, w))
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


def _remask_candidates(logits, ids, mask, region, confidence, tau: float, remask_prob: float, temperature: float,
                       top_k: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The remask rule (after ReMDM): each committed token of the region rejoins the candidates with probability
    remask_prob, scored by log p of the token it holds under the distribution this step draws from (top-k included)."""
    (B, L), K, device = ids.shape, logits.shape[-1], ids.device
    held = log_probs(logits, temperature, top_k).gather(-1, ids.clamp_max(K - 1)[..., None])[..., 0]  # (B, L)
    confidence = torch.where(mask, confidence, held + tau * gumbel((B, L), generator, device))
    candidates = mask | (region & (uniform((B, L), generator, device) < remask_prob))
    return confidence, candidates


def _step_record(ids, mask, new_mask, committed, conf_map, ent_map, grid) -> dict:
    """One step of the history, each (B, L) map as (B, h, w): see `sample`."""
    B = ids.shape[0]
    return {"ids": ids.view(B, *grid).clone(), "mask": new_mask.view(B, *grid).clone(),
            "committed": committed.view(B, *grid), "confidence": conf_map.view(B, *grid),
            "entropy": ent_map.view(B, *grid), "remasked": (~mask & new_mask).view(B, *grid)}
