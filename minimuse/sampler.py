"""The decoding loop: from an all-[MASK] grid to image tokens in T parallel steps (MaskGIT §3.2, Muse §2.7-2.8).

Each step predicts every masked token at once, samples one token per masked position, commits the most confident
and re-masks the rest, so that floor(N gamma((t+1)/T)) stay masked (scheduler.py). Commit rules: `confidence`
(MaskGIT/Muse: log p + annealed Gumbel noise), `halton` (a fixed 2-D low-discrepancy order, Besnier et al. 2025),
`random`, and two that may mask committed tokens again: `remask` (after ReMDM) and `critic` (Token-Critic, critic.py).
An autoregressive model (autoregressive.py) is handed to its own raster loop. Classifier-free guidance runs the unconditional pass in the same batch; Muse's linear ramp and negative
prompts are options. Inpainting, outpainting and mask-free editing reuse the same loop. Taught in
notebooks/06_sampling.ipynb; the per-step history feeds viz.py.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from .config import SampleConfig
from .scheduler import MaskScheduler


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: l_u + (1 + w)(l_c - l_u) = (1 + w) l_c - w l_u (Muse §2.7); w = 0 is the plain model."""
    return uncond + (1.0 + w) * (cond - uncond)


def guidance_weight(t: int, T: int, scale: float, schedule: str = "constant") -> float:
    """The weight w at step t: constant, or Muse's ramp rising linearly from 0 at the first step to `scale` at the last."""
    if schedule == "constant":
        return float(scale)
    if schedule == "linear":
        return float(scale) * t / (T - 1) if T > 1 else float(scale)
    raise ValueError(f"unknown guidance_schedule {schedule!r}; choose one of: constant, linear")


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


def _uniform(shape, generator, device) -> torch.Tensor:
    # Draw on the generator's device so a CPU generator gives the same numbers whatever device the model is on.
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _gumbel_from(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp_min(1e-20)))


def _gumbel(shape, generator, device) -> torch.Tensor:
    return _gumbel_from(_uniform(shape, generator, device))


def _log_probs(logits, temperature, top_k):
    """log p of the distribution tokens are drawn from: top-k filtered, then softmax at `temperature`, (..., K)."""
    logits = logits.float()
    if top_k > 0:  # keep the k largest logits, as Muse's editing uses (top-k 3)
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return F.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)


def _sample_tokens(logits, temperature, top_k, gumbel, entropy: bool = True):
    """Sample one token per row of logits (..., K) by Gumbel-max; return (token, log p(token), entropy or None).

    A NaN or inf anywhere in a row makes its log p(token) non-finite, so one check on the (B, M) result catches a
    broken model without a pass over the (B, M, K) logits."""
    logp = _log_probs(logits, temperature, top_k)
    token = (logp + gumbel).argmax(-1) if temperature > 0 else logp.argmax(-1)  # temperature 0 is greedy
    token_logp = logp.gather(-1, token[..., None])[..., 0]
    if not bool(torch.isfinite(token_logp).all()):
        raise FloatingPointError("the model's logits became non-finite (NaN or inf) while sampling; the checkpoint or "
                                 "the inputs are broken (try precision fp32, or another checkpoint)")
    return token, token_logp, torch.special.entr(logp.exp()).sum(-1) if entropy else None


class _Guided:
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
                raise ValueError("guidance_scale > 0 needs uncond_emb: the text encoding of the empty prompt \"\"")
            if uncond_emb.shape[0] not in (1, text_emb.shape[0]):
                raise ValueError(f"uncond_emb holds {uncond_emb.shape[0]} texts for {text_emb.shape[0]} prompts; "
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
        from .autoregressive import generate
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
    L, K, mask_id = h * w, transformer.codebook_size, transformer.mask_id

    was_training = transformer.training
    transformer.eval()
    try:
        with torch.inference_mode():
            if text_mask is None:
                text_mask = torch.ones(text_emb.shape[:2], dtype=torch.bool, device=device)
            cond = {} if lowres_ids is None else {"lowres_ids": lowres_ids.to(device)}
            model = _Guided(transformer, text_emb, text_mask, uncond_emb, uncond_mask, weights, cond)
            if init_ids is None:
                ids = torch.full((B, L), mask_id, dtype=torch.long, device=device)
            else:
                if init_ids.numel() != B * L or (init_mask is not None and init_mask.numel() != B * L):
                    raise ValueError(f"init_ids and init_mask must have shape (B, h, w) = ({B}, {h}, {w}), got "
                                     f"{tuple(init_ids.shape)} and {None if init_mask is None else tuple(init_mask.shape)}")
                ids = init_ids.reshape(B, L).to(device=device, dtype=torch.long)  # (B, h, w) -> (B, L)
            mask = ids == mask_id if init_mask is None else init_mask.reshape(B, L).to(device).bool()  # (B, L)
            ids = scheduler.add_noise(ids, mask, mask_id)
            N = mask.sum(1)  # (B,) positions to generate: the whole grid, or the inpainting region
            scheduler.set_timesteps(num_steps, N)  # every per-step count, computed once here

            if sampler == "halton":  # earlier in the order = more "confident" = committed sooner
                rank = torch.empty(L, device=device)
                rank[torch.tensor(halton_order(h, w), device=device)] = torch.arange(L, dtype=torch.float, device=device)
                priority = (-rank).expand(B, L)
            elif sampler == "random":
                priority = _uniform((B, L), generator, device)  # one random order per sample, fixed for the call
            conf_map = torch.ones(B, L, device=device)
            ent_map = torch.zeros(B, L, device=device)
            history = []
            region = mask  # the positions this call generates; tokens outside it are given and never change
            revise = sampler in ("remask", "critic")
            if sampler == "critic":
                critic.eval()
            critic_ctx = critic.encode_text(text_emb, text_mask) if sampler == "critic" else None

            # else inpainting regions differ in size, or remask scores committed tokens too: the full head
            same_count = bool((N == N[0]).all()) and sampler != "remask"
            for t in range(num_steps):
                head_index = _head_positions(mask, same_count)
                logits = model(ids, weights[t], head_index)  # (B, M, K) or (B, L, K)
                u = _uniform((B, L, K), generator, device)  # drawn at every position, so both paths agree
                if head_index is not None:  # the logs only where the head ran
                    u = u.gather(1, head_index[..., None].expand(-1, -1, K))  # (B, M, K)
                token, token_logp, entropy = _sample_tokens(logits, temperature, top_k, _gumbel_from(u), return_history)
                if head_index is not None:  # back to the full grid: (B, M) -> (B, L)
                    token = torch.zeros(B, L, dtype=torch.long, device=device).scatter(1, head_index, token)
                    token_logp = torch.zeros(B, L, device=device).scatter(1, head_index, token_logp)
                    if return_history:
                        entropy = torch.zeros(B, L, device=device).scatter(1, head_index, entropy)

                tau = choice_temperature * (1.0 - (t + 1) / num_steps)  # noise annealed to 0 (MaskGIT)
                candidates = mask
                if sampler in ("confidence", "remask"):  # log p under the distribution drawn from
                    confidence = token_logp + tau * _gumbel((B, L), generator, device)
                elif sampler == "critic":  # the critic's logit that a token is wrong, on the grid with every gap filled
                    filled = torch.where(mask, token, ids)  # (B, L)
                    wrong = critic(filled, ctx=critic_ctx)  # (B, L)
                    confidence = -wrong.float() + tau * _gumbel((B, L), generator, device)
                    candidates = region
                else:
                    confidence = priority
                if sampler == "remask" and remask_prob > 0:  # committed tokens rejoin the draw with probability remask_prob, scored by
                    # log p of the token they hold under the distribution this step draws from (top-k included)
                    held = _log_probs(logits, temperature, top_k).gather(-1, ids.clamp_max(K - 1)[..., None])[..., 0]
                    confidence = torch.where(mask, confidence, held + tau * _gumbel((B, L), generator, device))
                    candidates = mask | (region & (_uniform((B, L), generator, device) < remask_prob))
                new_mask = scheduler.step(confidence, candidates, t, N)  # (B, L); non-candidates get +inf inside
                committed = mask & ~new_mask
                ids = torch.where(committed, token, ids)
                if revise:
                    ids = torch.where(new_mask, mask_id, ids)  # revised tokens are masked again
                if return_history:
                    conf_map = torch.where(mask, token_logp.exp(), conf_map)
                    ent_map = torch.where(mask, entropy, ent_map)
                    history.append({"ids": ids.view(B, h, w).clone(), "mask": new_mask.view(B, h, w).clone(),
                                    "committed": committed.view(B, h, w), "confidence": conf_map.view(B, h, w),
                                    "entropy": ent_map.view(B, h, w),
                                    "remasked": (~mask & new_mask).view(B, h, w)})  # each (B, L) -> (B, h, w)
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
        pos = _uniform((B, L), generator, ids.device).argsort(1)[:, :n]                          # (B, n) positions
        region = torch.zeros(B, L, dtype=torch.bool, device=ids.device).scatter(1, pos, True)  # (B, L)
        ids = sample(transformer, text_emb, text_mask, uncond_emb, uncond_mask, num_steps=1, guidance_scale=guidance_scale,
                     temperature=temperature, top_k=top_k, generator=generator, init_ids=ids, init_mask=region.view(B, h, w))
        if i + 1 in keep_at:
            kept[i + 1] = ids.clone()
    return (ids, kept) if keep_at else ids
