"""The autoregressive baseline: the same transformer with causal self-attention, decoded one token at a time.

Muse's claim of speed (§1, §4.3: "significantly more efficient than ... autoregressive models") is against models
like Parti that draw the image tokens in raster order, each conditioned on all before it. This is that baseline at
equal size: the width, depth, text cross-attention and 2-D positions of `MaskedTransformer`, with a causal mask on
self-attention and the input shifted right by one (a [BOS] that reuses the [MASK] embedding row). Trained by the same
loop on the same batches (`minimuse train --preset laptop-ar`), every token a target. Decoding keeps a KV cache, so
each of the L sequential passes runs one new token through the blocks: fewer FLOPs than num_steps parallel steps over
all L tokens, but L passes against num_steps. Taught in notebooks/09_experiments.ipynb; `minimuse bench --compare-ar`
times it.
"""
from __future__ import annotations

import torch

from .config import SampleConfig
from .decoding import Guided, gumbel_from, guidance_weight, guided_logits, sample_tokens, uniform
from .transformer import MaskedTransformer


class KVCache:
    """One layer's self-attention keys and values so far, in (B, H, L, Dh) buffers filled left to right."""

    def __init__(self, max_len: int):
        self.max_len, self.n, self.k, self.v = max_len, 0, None, None

    def append(self, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, t, Dh) after the earlier keys; return all keys and values so far, (B, H, n + t, Dh)."""
        B, H, t, Dh = k.shape
        if self.k is None:  # allocated once: no per-token torch.cat
            self.k = k.new_empty(B, H, self.max_len, Dh)
            self.v = v.new_empty(B, H, self.max_len, Dh)
        if self.n + t > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot append {t} after {self.n}")
        self.k[:, :, self.n:self.n + t] = k
        self.v[:, :, self.n:self.n + t] = v
        self.n += t
        return self.k[:, :, :self.n], self.v[:, :, :self.n]


class ARTransformer(MaskedTransformer):
    """p(x_i | x_<i, text) over raster-ordered tokens. Same parameters as MaskedTransformer (state-dict keys too);
    the extra embedding row is [BOS] here, the input before the first token."""
    MODEL_KIND = "autoregressive"

    @property
    def bos_id(self) -> int:
        return self.mask_id

    def forward(self, ids: torch.Tensor, text=None, text_mask=None, *, ctx=None, **unused):
        """Teacher forcing: ids (B, n) or (B, h, w), n <= L -> logits (B, n, K); logits[:, i] predicts ids[:, i] from
        ids[:, :i] and the text (ids[:, -1] is never read). One pass for training; decoding uses `decode_step`."""
        if unused.get("head_index") is not None or unused.get("return_attn"):
            raise ValueError("the autoregressive model takes no head_index or return_attn")
        B = ids.shape[0]
        ids = ids.reshape(B, -1)  # (B, n)
        n, L = ids.shape[1], self.grid[0] * self.grid[1]
        if not 1 <= n <= L:
            raise ValueError(f"ids hold {n} tokens per image; this model draws 1 to {L} ({self.grid[0]}x{self.grid[1]})")
        layers = self.text_layers(self.resolve_ctx(text, text_mask, ctx), B)
        inp = torch.cat([ids.new_full((B, 1), self.bos_id), ids[:, :-1]], dim=1)  # (B, n): shifted right by one
        x = self.tok_emb(inp) + self.positions()[:n]  # (B, n, D)
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()[None, None]  # (1, 1, n, n): keys <= query
        for blk, text_slices in zip(self.blocks, layers):
            x, _ = blk(x, text_slices, self_mask=causal)
        return self.head(self.ln_f(x))  # (B, n, K)

    def decode_step(self, prev: torch.Tensor, i: int, layers: list, caches: list[KVCache]) -> torch.Tensor:
        """Position i's logits (B, K) from the token before it, prev (B,) ([BOS] at i = 0), and the caches of
        positions < i, which this call extends by position i. No mask: the cache holds only earlier keys."""
        x = self.tok_emb(prev)[:, None] + self.positions()[i]  # (B, 1, D)
        for blk, text_slices, cache in zip(self.blocks, layers, caches):
            x, _ = blk(x, text_slices, cache=cache)
        return self.head(self.ln_f(x))[:, 0]  # (B, 1, K) -> (B, K)


def generate(model: ARTransformer, text, settings: SampleConfig, *, uncond=None, negative=None, generator=None,
             use_cache: bool = True) -> torch.Tensor:
    """Draw token grids (B, h, w) in raster order, one token per pass, under the sampler's contract (sampler.sample):
    `text` = (text_emb (B, T, E), text_mask (B, T) or None), `uncond` / `negative` = (emb, mask) of "" or a negative
    prompt. L passes of the 2B guided rows (cond, then "" or the negative prompt), each token drawn at the settings'
    temperature and top-k from the guided logits (Muse §2.7's formula, ramped over positions when guidance_schedule
    is "linear"); num_steps, schedule and the commit rule have no meaning here. One uniform (B, K) per position from
    `generator`, so use_cache=False (every pass re-runs the whole prefix, O(L^2): the test's reference) draws the same
    tokens. The text's K/V are computed once, as in the parallel sampler."""
    s = settings
    h, w = model.grid
    text_emb, text_mask = text
    uncond_emb, uncond_mask = negative if negative is not None else (uncond or (None, None))
    L, K, B, device = h * w, model.codebook_size, text_emb.shape[0], text_emb.device
    weights = [guidance_weight(i, L, s.guidance_scale, s.guidance_schedule) for i in range(L)]
    temperature, top_k = s.temperature, s.top_k
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if text_mask is None:
                text_mask = torch.ones(text_emb.shape[:2], dtype=torch.bool, device=device)
            guided = Guided(model, text_emb, text_mask, uncond_emb, uncond_mask, weights)
            both = guided.ctx_both is not None  # then every pass runs 2B rows, even where the ramp's weight is 0,
            ctx = guided.ctx_both if both else guided.ctx_cond  # so that the unconditional rows' cache stays whole
            rows = 2 * B if both else B
            layers = model.text_layers(ctx, rows)
            caches = [KVCache(L) for _ in model.blocks]
            ids = torch.zeros(B, L, dtype=torch.long, device=device)
            prev = torch.full((rows,), model.bos_id, dtype=torch.long, device=device)
            for i in range(L):
                if use_cache:
                    logits = model.decode_step(prev, i, layers, caches)  # (rows, K)
                else:
                    prefix = ids[:, :i + 1].repeat(2, 1) if both else ids[:, :i + 1]  # (rows, i + 1)
                    logits = model(prefix, ctx=ctx)[:, i]  # (rows, K)
                if both:
                    cond, uncond = logits.float().chunk(2)
                    logits = guided_logits(cond, uncond, weights[i])  # (B, K)
                u = uniform((B, K), generator, device)
                token, _, _ = sample_tokens(logits, temperature, top_k, gumbel_from(u), entropy=False)  # (B,)
                ids[:, i] = token
                prev = token.repeat(2) if both else token  # (rows,)
    finally:
        model.train(was_training)
    return ids.view(B, h, w)  # (B, L) -> (B, h, w)
