"""The masked image transformer: predicts the image tokens hidden behind [MASK], given the text.

Muse's "Base Model" section (§2.3 of arXiv 2301.00704), after MaskGIT: a bidirectional transformer over
the h x w grid of VQ token ids with learned 2-D position embeddings; every block is self-attention over
image tokens, cross-attention to the projected frozen-LM text embeddings, and an MLP. It returns logits
over the K codebook entries; decoding lives in sampler.py. Taught in notebooks/05_training.ipynb.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import (CheckpointError, check_config, config_diff, load_checkpoint, load_state_strict, save_checkpoint,
                         saved_config)
from .config import Config, TransformerConfig


class TextContext(NamedTuple):
    """What cross-attention needs from the text, computed once per sampling call by `encode_text`."""
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each (B, H, T, Dh)
    attn_mask: torch.Tensor | None                # (B, 1, 1, T) bool, True at real text tokens; None: all are real


# torch's fp32 GEMM on CPU is MKL's, which on AMD CPUs takes its AVX2 path; oneDNN's fused linear runs AVX-512, 2.2x
# faster on this project's AMD EPYC (docs/BENCHMARKS.md), and applies the bias and GELU in the same pass over the
# output. It has no autograd formula, so it serves inference only; training and autocast keep F.linear.
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
USE_ONEDNN = True  # docs/bench_ablation.py switches it off to measure what it pays


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's fused linear serves x @ weight^T: fp32 inference on the CPU, outside autocast."""
    return (USE_ONEDNN and _ONEDNN_LINEAR is not None and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))


class Linear(nn.Linear):
    """nn.Linear (the same weights and state-dict keys) with an optional fused GELU and the oneDNN inference path."""

    def __init__(self, d_in: int, d_out: int, act: str | None = None):
        super().__init__(d_in, d_out)
        self.act = act  # None or "gelu" (exact, erf-based, as nn.GELU)

    def forward(self, x):
        # under torch.compile, F.linear: inductor cannot lower this op with the weights as graph inputs
        if onednn_applies(x, self.weight) and not torch.compiler.is_compiling():
            return _ONEDNN_LINEAR(x, self.weight, self.bias, self.act or "none", [], "none" if self.act else "")
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if self.act == "gelu" else y


def attention(q, k, v, mask=None, dropout_p: float = 0.0, weights: bool = False):
    """softmax(q k^T / sqrt(Dh)) v for q (B, H, L, Dh) and k, v (B, H, T, Dh); mask (B, 1, 1, T), True at real keys.
    Returns (y (B, H, L, Dh), the weights (B, H, L, T) if `weights` else None).

    Inference takes torch's fused kernel. Training on a CPU takes the explicit formula: the CPU kernel's backward is
    slow in bf16, and with it bf16 autocast sped the laptop training step up 1.09x instead of 2.4x (docs/TRAINING.md).
    It is also what `weights=True` (the notebooks' attention maps) needs. The softmax is taken in fp32 under autocast."""
    if not weights and not (torch.is_grad_enabled() and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, L, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    attn = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)  # (B, H, L, T)
    y = F.dropout(attn, dropout_p) @ v if dropout_p > 0 else attn @ v  # (B, H, L, Dh)
    return y, (attn if weights else None)


class MaskedTransformer(nn.Module):
    CHECKPOINT_KIND = "transformer"  # the "kind" its config.json records; superres.py's subclass saves "superres"
    MODEL_KIND = "masked"            # the transformer.kind it is built from (autoregressive.py, critic.py: the others)

    def __init__(self, cfg: TransformerConfig, codebook_size: int, grid: tuple[int, int], text_dim: int):
        super().__init__()
        if cfg.kind != self.MODEL_KIND:
            raise ValueError(f"{type(self).__name__} builds transformer.kind {self.MODEL_KIND!r}, not {cfg.kind!r}")
        self.cfg, self.codebook_size, self.grid, self.text_dim = cfg, codebook_size, tuple(grid), text_dim
        self.mask_id = codebook_size  # the one extra embedding row; the head never predicts it
        D, (h, w) = cfg.width, self.grid
        self.tok_emb = nn.Embedding(codebook_size + 1, D)
        # Factorised 2-D positions: a row vector plus a column vector, (h + w) * D parameters instead of h * w * D,
        # so "same row" and "same column" are built in rather than learned per cell.
        self.row_emb = nn.Parameter(torch.zeros(h, D))
        self.col_emb = nn.Parameter(torch.zeros(w, D))
        # One shared projection E -> D (Muse §2.3); the LayerNorm puts T5, CLIP and MiniLM states on one scale.
        self.text_proj = Linear(text_dim, D)
        self.text_norm = nn.LayerNorm(D)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(D)
        self.head = Linear(D, codebook_size)
        self.apply(self._init)
        # GPT-2 init: N(0, 0.02) everywhere, and the three residual output projections per block scaled by
        # 1/sqrt(3 * depth) so the residual stream keeps unit-ish variance at any depth. Not zero: a fresh model's
        # attention must already mix tokens, or the notebooks' untrained attention maps would be blank.
        for name, p in self.named_parameters():
            if name.endswith("out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(3 * cfg.depth))
        nn.init.normal_(self.row_emb, std=0.02)
        nn.init.normal_(self.col_emb, std=0.02)

    @staticmethod
    def _init(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg: Config) -> "MaskedTransformer":
        return cls(cfg.transformer, cfg.tokenizer.codebook_size, cfg.grid, cfg.text.text_dim)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> TextContext:
        """Project the text (B, T, E) once and precompute every layer's cross-attention K/V."""
        self.check_text(text, text_mask)
        return self.context(self.text_norm(self.text_proj(text)), text_mask.bool())  # (B, T, D)

    def check_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> None:
        if text.dim() != 3 or text.shape[-1] != self.text_dim or text_mask.shape != text.shape[:2]:
            raise ValueError(f"expected text (B, T, {self.text_dim}) and text_mask (B, T); "
                             f"got {tuple(text.shape)} and {tuple(text_mask.shape)}")
        if not bool(text_mask.any(dim=1).all()):
            # an all-padding row makes softmax over nothing (NaN); "" encodes to real [CLS][SEP] tokens instead
            raise ValueError("a text_mask row has no real token; use the encoding of the empty prompt '' as the "
                             "unconditional input, not an all-False mask")

    def context(self, ctx: torch.Tensor, mask: torch.Tensor) -> TextContext:
        """What every block cross-attends to, (B, S, D) with its (B, S) mask of real positions -> per-layer K/V."""
        kv = [blk.cross.text_kv(ctx) for blk in self.blocks]
        all_real = bool(mask.all())  # then no mask at all: attention without one is the faster kernel
        return TextContext(kv, None if all_real else mask[:, None, None, :])  # (B, 1, 1, S)

    def forward(self, ids: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                *, ctx: TextContext | tuple[TextContext, ...] | None = None, head_index: torch.Tensor | None = None,
                return_attn: bool = False):
        """ids (B, L) or (B, h, w) with mask_id at masked positions -> logits (B, L, K), or (B, M, K) at head_index.

        Give the text either as (text, text_mask) or as a precomputed `ctx`; a ctx of batch 1 (the "" prompt)
        is broadcast to the batch of ids. `ctx` may also be a tuple of contexts, one per equal slice of the batch:
        guidance passes (cond, uncond) so that the 2-token empty prompt is not padded to the prompt's length.
        With return_attn=True, also returns the per-layer cross-attention weights (B, H, L, T), computed
        explicitly (slower; for visualisation only).
        """
        B = ids.shape[0]
        ids = ids.reshape(B, -1)  # (B, L)
        (h, w), L = self.grid, ids.shape[1]
        if L != h * w:
            raise ValueError(f"ids hold {L} tokens per image; this transformer is built for a {h}x{w} grid ({h * w})")
        if ctx is None and text is not None:  # training: each block projects the text inside its own forward, where
            layers = self.text_in_blocks(text, text_mask)  # FSDP has gathered that block's weights
        else:
            layers = self.text_layers(self.resolve_ctx(text, text_mask, ctx), B, return_attn)
        x = self.tok_emb(ids) + self.positions()  # (B, L, D)
        x, attns = self.run_blocks(x, layers, return_attn)
        if head_index is not None:
            x = torch.gather(x, 1, head_index[..., None].expand(-1, -1, x.shape[-1]))  # (B, M, D)
        logits = self.head(self.ln_f(x))  # (B, L, K) or (B, M, K)
        return (logits, attns) if return_attn else logits

    def positions(self) -> torch.Tensor:
        """(L, D) raster-order position embeddings: row vector + column vector."""
        return (self.row_emb[:, None, :] + self.col_emb[None, :, :]).reshape(-1, self.row_emb.shape[1])  # (h, w, D) -> (L, D)

    def resolve_ctx(self, text, text_mask, ctx):
        """The text given as (text, text_mask) or as a precomputed ctx, exactly one of them -> the ctx."""
        if (ctx is None) == (text is None):
            raise ValueError("pass the text either as (text, text_mask) or as ctx=model.encode_text(...), not both or neither")
        if ctx is None:
            if text_mask is None:
                raise ValueError("text_mask (B, T) bool is required with text")
            ctx = self.encode_text(text, text_mask)
        return ctx

    def text_in_blocks(self, text: torch.Tensor, text_mask: torch.Tensor) -> list:
        """Per block, one slice (projected text (B, T, D), None, attn_mask): CrossAttention makes its K/V from it."""
        if text_mask is None:
            raise ValueError("text_mask (B, T) bool is required with text")
        self.check_text(text, text_mask)
        mask = text_mask.bool()
        proj = self.text_norm(self.text_proj(text))  # (B, T, D)
        am = None if bool(mask.all()) else mask[:, None, None, :]  # (B, 1, 1, T)
        return [[(proj, None, am)] for _ in self.blocks]

    def text_layers(self, ctx: TextContext | tuple[TextContext, ...], B: int, return_attn: bool = False) -> list:
        """Per block, the (k, v, attn_mask) of each equal slice of a batch of B images (see `forward`'s ctx)."""
        parts = (ctx,) if isinstance(ctx, TextContext) else tuple(ctx)
        if B % len(parts) or (return_attn and len(parts) > 1):
            raise ValueError(f"{len(parts)} text contexts cannot split a batch of {B} images into equal slices"
                             + (" (return_attn takes one context)" if return_attn else ""))
        n = B // len(parts)  # images per slice
        layers = [[] for _ in self.blocks]  # per layer: one (k, v, attn_mask) per slice
        for part in parts:
            m = part.kv[0][0].shape[0]
            if m not in (1, n):
                raise ValueError(f"ctx holds {m} texts for {n} images; pass one text per image, or one for all")
            for per_slice, (k, v) in zip(layers, part.kv):  # expand is a view: a batch-1 ctx costs nothing to share
                am = part.attn_mask
                per_slice.append((k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1),
                                  None if am is None else am.expand(n, -1, -1, -1)))
        return layers

    def run_blocks(self, x, layers, return_attn: bool = False):
        """x (B, L, D) through every block; layers: per block, the (k, v, attn_mask) of each slice of the batch.

        A method of its own so that docs/bench_ablation.py can torch.compile exactly this part (fixed shapes per batch
        size; the head's M changes every step). On this project's CPU compiling did not pay (docs/BENCHMARKS.md)."""
        attns = []
        for blk, text_slices in zip(self.blocks, layers):
            x, attn = blk(x, text_slices, return_attn)
            attns.append(attn)
        return x, attns

    def save_pretrained(self, out_dir, config: Config, dtype: torch.dtype | None = None):
        """Write config.json (the full Config, as CHECKPOINT_KIND) and model.safetensors atomically (floats as `dtype`
        if given)."""
        diff = config_diff(self._arch(config), self._arch_of_self())
        if diff:
            raise ValueError(f"save_pretrained: `config` does not describe this model: field {diff}; "
                             "pass the Config the model was built from")
        return save_checkpoint(out_dir, self.CHECKPOINT_KIND, config.to_dict(), self.state_dict(), dtype=dtype)

    @classmethod
    def from_pretrained(cls, ckpt_dir, config: Config | None = None) -> "MaskedTransformer":
        """Rebuild from the saved config and load strictly; with `config`, first check its architecture fields."""
        saved_as = cls.CHECKPOINT_KIND
        saved = saved_config(ckpt_dir, saved_as, ["superres" if saved_as == "superres" else "transformer"])
        model_kind = cls._arch(saved)["transformer"]["kind"] if saved_as == "transformer" else cls.MODEL_KIND
        if model_kind != cls.MODEL_KIND:
            raise CheckpointError(f"{ckpt_dir} holds a {model_kind!r} transformer; {cls.__name__} loads {cls.MODEL_KIND!r} ones "
                                  "(load_pipeline picks the class)")
        if config is not None:
            check_config(cls._arch(saved), cls._arch(config), ckpt_dir)
        _, state = load_checkpoint(ckpt_dir, saved_as)
        model = cls.from_config(saved)
        load_state_strict(model, state, ckpt_dir)
        return model.eval()

    @staticmethod
    def _arch(cfg: Config) -> dict:
        """The config fields that fix the shapes of the weights (a changed learning rate must still load)."""
        d = cfg.to_dict()
        return {"transformer": d["transformer"], "tokenizer": {"codebook_size": cfg.tokenizer.codebook_size},
                "grid": list(cfg.grid), "text": {"text_dim": cfg.text.text_dim}}

    def _arch_of_self(self) -> dict:
        return {"transformer": dataclasses.asdict(self.cfg), "tokenizer": {"codebook_size": self.codebook_size},
                "grid": list(self.grid), "text": {"text_dim": self.text_dim}}


class Block(nn.Module):
    """Pre-norm: x + SelfAttn(LN x), then + CrossAttn(LN x, text), then + MLP(LN x). With cross=False, a plain
    encoder block (self-attention and MLP): the super-res stage's low-res encoder (superres.py)."""

    def __init__(self, cfg: TransformerConfig, cross: bool = True):
        super().__init__()
        D = cfg.width
        self.ln1, self.ln3 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.ln2 = nn.LayerNorm(D) if cross else None
        self.attn = SelfAttention(cfg)
        self.cross = CrossAttention(cfg) if cross else None
        hidden = int(cfg.mlp_ratio * D)
        # fc carries the GELU, so the oneDNN path applies it in the GEMM's own pass (state-dict keys mlp.fc, mlp.out)
        self.mlp = nn.Sequential(OrderedDict(fc=Linear(D, hidden, act="gelu"), out=Linear(hidden, D)))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, text_slices=None, return_attn: bool = False, self_mask=None, cache=None):
        x = x + self.drop(self.attn(self.ln1(x), self_mask, cache))
        attn = None
        if self.cross is not None:
            y, attn = self.cross(self.ln2(x), text_slices, return_attn)
            x = x + self.drop(y)
        x = x + self.drop(self.mlp(self.ln3(x)))
        return x, attn


class SelfAttention(nn.Module):
    """Bidirectional in Muse: no mask, every image token sees every other one. The autoregressive baseline passes a
    causal `mask` (L, L) in training and, while decoding, a `cache` (autoregressive.KVCache) of the earlier keys."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.H, self.p = cfg.heads, cfg.dropout
        self.qkv = Linear(cfg.width, 3 * cfg.width)
        self.out = Linear(cfg.width, cfg.width)
        Dh = cfg.width // cfg.heads
        self.q_norm = nn.LayerNorm(Dh) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(Dh) if cfg.qk_norm else nn.Identity()

    def forward(self, x, mask=None, cache=None):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.H, D // self.H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, n + L, Dh): every key so far
        y, _ = attention(q, k, v, mask, self.p if self.training else 0.0)  # (B, H, L, Dh)
        return self.out(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to the projected text (keys/values); padded text gets zero weight."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.H, self.p = cfg.heads, cfg.dropout
        self.q = Linear(cfg.width, cfg.width)
        self.kv = Linear(cfg.width, 2 * cfg.width)
        self.out = Linear(cfg.width, cfg.width)
        Dh = cfg.width // cfg.heads
        self.q_norm = nn.LayerNorm(Dh) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(Dh) if cfg.qk_norm else nn.Identity()

    def text_kv(self, ctx):
        """(B, T, D) projected text -> this layer's k, v, each (B, H, T, Dh); text is fixed while sampling."""
        B, T, D = ctx.shape
        k, v = self.kv(ctx).view(B, T, 2, self.H, D // self.H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, Dh)
        return self.k_norm(k), v

    def forward(self, x, text_slices, return_attn: bool):
        """x (B, L, D); text_slices: one (k, v, attn_mask) per equal slice of the batch, k and v (B/n, H, T_i, Dh)."""
        B, L, D = x.shape
        q = self.q_norm(self.q(x).view(B, L, self.H, D // self.H).transpose(1, 2))  # (B, H, L, Dh)
        # a slice (text, None, mask) holds the projected text (B, T, D), not this layer's K/V: make them here
        text_slices = [(*self.text_kv(k), m) if v is None else (k, v, m) for k, v, m in text_slices]
        if return_attn:  # one slice (forward checks)
            (k, v, attn_mask), = text_slices
            y, attn = attention(q, k, v, attn_mask, weights=True)  # (B, H, L, Dh), (B, H, L, T)
        else:
            attn, p = None, self.p if self.training else 0.0
            ys = [attention(qs, k, v, m, p)[0]  # (B/n, H, L, Dh) each
                  for qs, (k, v, m) in zip(q.chunk(len(text_slices)), text_slices)]
            y = ys[0] if len(ys) == 1 else torch.cat(ys)  # (B, H, L, Dh)
        return self.out(y.transpose(1, 2).reshape(B, L, D)), attn  # (B, L, D)
