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

from .checkpoint import check_config, config_diff, load_checkpoint, load_state_strict, save_checkpoint
from .config import Config, TransformerConfig


class TextContext(NamedTuple):
    """What cross-attention needs from the text, computed once per sampling call by `encode_text`."""
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each (B, H, T, Dh)
    attn_mask: torch.Tensor                       # (B, 1, 1, T) bool, True at real text tokens


class MaskedTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, codebook_size: int, grid: tuple[int, int], text_dim: int):
        super().__init__()
        self.cfg, self.codebook_size, self.grid, self.text_dim = cfg, codebook_size, tuple(grid), text_dim
        self.mask_id = codebook_size  # the one extra embedding row; the head never predicts it
        D, (h, w) = cfg.width, self.grid
        self.tok_emb = nn.Embedding(codebook_size + 1, D)
        # Factorised 2-D positions: a row vector plus a column vector, (h + w) * D parameters instead of h * w * D,
        # so "same row" and "same column" are built in rather than learned per cell.
        self.row_emb = nn.Parameter(torch.zeros(h, D))
        self.col_emb = nn.Parameter(torch.zeros(w, D))
        # One shared projection E -> D (Muse §2.3); the LayerNorm puts T5, CLIP and MiniLM states on one scale.
        self.text_proj = nn.Linear(text_dim, D)
        self.text_norm = nn.LayerNorm(D)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, codebook_size)
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
        if text.dim() != 3 or text.shape[-1] != self.text_dim or text_mask.shape != text.shape[:2]:
            raise ValueError(f"expected text (B, T, {self.text_dim}) and text_mask (B, T); "
                             f"got {tuple(text.shape)} and {tuple(text_mask.shape)}")
        if not bool(text_mask.any(dim=1).all()):
            # an all-padding row makes softmax over nothing (NaN); "" encodes to real [CLS][SEP] tokens instead
            raise ValueError("a text_mask row has no real token; use the encoding of the empty prompt '' as the "
                             "unconditional input, not an all-False mask")
        ctx = self.text_norm(self.text_proj(text))  # (B, T, D)
        kv = [blk.cross.text_kv(ctx) for blk in self.blocks]
        return TextContext(kv, text_mask.bool()[:, None, None, :])  # (B, 1, 1, T)

    def forward(self, ids: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                *, ctx: TextContext | None = None, head_index: torch.Tensor | None = None, return_attn: bool = False):
        """ids (B, L) or (B, h, w) with mask_id at masked positions -> logits (B, L, K), or (B, M, K) at head_index.

        Give the text either as (text, text_mask) or as a precomputed `ctx`; a ctx of batch 1 (the "" prompt)
        is broadcast to the batch of ids. With return_attn=True, also returns the per-layer cross-attention
        weights (B, H, L, T), computed explicitly (slower; for visualisation only).
        """
        B = ids.shape[0]
        ids = ids.reshape(B, -1)  # (B, L)
        (h, w), L = self.grid, ids.shape[1]
        if L != h * w:
            raise ValueError(f"ids hold {L} tokens per image; this transformer is built for a {h}x{w} grid ({h * w})")
        if (ctx is None) == (text is None):
            raise ValueError("pass the text either as (text, text_mask) or as ctx=model.encode_text(...), not both or neither")
        if ctx is None:
            if text_mask is None:
                raise ValueError("text_mask (B, T) bool is required with text")
            ctx = self.encode_text(text, text_mask)
        kv, attn_mask = ctx
        if attn_mask.shape[0] not in (1, B):
            raise ValueError(f"ctx holds {attn_mask.shape[0]} texts for {B} images; pass one text per image, or one for all")
        if attn_mask.shape[0] != B:  # expand is a view: the batch-1 unconditional ctx costs nothing to share
            kv = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kv]
            attn_mask = attn_mask.expand(B, -1, -1, -1)

        pos = (self.row_emb[:, None, :] + self.col_emb[None, :, :]).reshape(L, -1)  # (h, w, D) -> (L, D)
        x = self.tok_emb(ids) + pos  # (B, L, D)
        attns = []
        for blk, (k, v) in zip(self.blocks, kv):
            x, attn = blk(x, k, v, attn_mask, return_attn)
            attns.append(attn)
        if head_index is not None:
            x = torch.gather(x, 1, head_index[..., None].expand(-1, -1, x.shape[-1]))  # (B, M, D)
        logits = self.head(self.ln_f(x))  # (B, L, K) or (B, M, K)
        return (logits, attns) if return_attn else logits

    def save_pretrained(self, out_dir, config: Config):
        """Write config.json (the full Config, kind "transformer") and model.safetensors atomically."""
        diff = config_diff(self._arch(config), self._arch_of_self())
        if diff:
            raise ValueError(f"save_pretrained: `config` does not describe this model: field {diff}; "
                             "pass the Config the model was built from")
        return save_checkpoint(out_dir, "transformer", config.to_dict(), self.state_dict())

    @classmethod
    def from_pretrained(cls, ckpt_dir, config: Config | None = None) -> "MaskedTransformer":
        """Rebuild from the saved config and load strictly; with `config`, first check its architecture fields."""
        meta, state = load_checkpoint(ckpt_dir, "transformer")
        saved = Config.from_dict(meta["config"])
        if config is not None:
            check_config(cls._arch(saved), cls._arch(config), ckpt_dir)
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
    """Pre-norm: x + SelfAttn(LN x), then + CrossAttn(LN x, text), then + MLP(LN x)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        D = cfg.width
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = SelfAttention(cfg)
        self.cross = CrossAttention(cfg)
        hidden = int(cfg.mlp_ratio * D)
        self.mlp = nn.Sequential(OrderedDict(fc=nn.Linear(D, hidden), gelu=nn.GELU(), out=nn.Linear(hidden, D)))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, k, v, attn_mask, return_attn: bool):
        x = x + self.drop(self.attn(self.ln1(x)))
        y, attn = self.cross(self.ln2(x), k, v, attn_mask, return_attn)
        x = x + self.drop(y)
        x = x + self.drop(self.mlp(self.ln3(x)))
        return x, attn


class SelfAttention(nn.Module):
    """Bidirectional: no causal mask, every image token sees every other one."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.H, self.p = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)
        Dh = cfg.width // cfg.heads
        self.q_norm = nn.LayerNorm(Dh) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(Dh) if cfg.qk_norm else nn.Identity()

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.H, D // self.H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)  # (B, H, L, Dh)
        return self.out(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to the projected text (keys/values); padded text gets zero weight."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.H, self.p = cfg.heads, cfg.dropout
        self.q = nn.Linear(cfg.width, cfg.width)
        self.kv = nn.Linear(cfg.width, 2 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)
        Dh = cfg.width // cfg.heads
        self.q_norm = nn.LayerNorm(Dh) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(Dh) if cfg.qk_norm else nn.Identity()

    def text_kv(self, ctx):
        """(B, T, D) projected text -> this layer's k, v, each (B, H, T, Dh); text is fixed while sampling."""
        B, T, D = ctx.shape
        k, v = self.kv(ctx).view(B, T, 2, self.H, D // self.H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, Dh)
        return self.k_norm(k), v

    def forward(self, x, k, v, attn_mask, return_attn: bool):
        B, L, D = x.shape
        q = self.q_norm(self.q(x).view(B, L, self.H, D // self.H).transpose(1, 2))  # (B, H, L, Dh)
        if return_attn:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, L, T)
            attn = scores.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1)  # (B, H, L, T)
            y = attn @ v  # (B, H, L, Dh)
        else:
            attn = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               dropout_p=self.p if self.training else 0.0)  # (B, H, L, Dh)
        return self.out(y.transpose(1, 2).reshape(B, L, D)), attn  # (B, L, D)
