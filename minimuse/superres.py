"""The super-resolution transformer: turns the base model's low-res tokens into high-res tokens (Muse §2.4, Fig. 4).

A low-res encoder (an embedding of the base tokenizer's ids with its own 2-D positions, then self-attention + MLP
blocks) reads the 8x8 grid the base model drew. Its output, projected to the high-res width and normalised, is
concatenated with the projected text along the sequence axis, and every block of an ordinary masked transformer
(transformer.py, not a fork) cross-attends to that concatenation while it fills the 16x16 high-res grid. Training
masks the high-res tokens only; the low-res tokens are always given (see `train_superres` in train.py for why they
are never dropped). Sampling is the one loop of sampler.py with `lowres_ids`; decimation is a box filter, as Muse's.
Taught in notebooks/07_superres.ipynb.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config, TransformerConfig
from .transformer import Block, Linear, MaskedTransformer, TextContext


def decimate(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Box-filter downsampling (B, 3, H, W) -> (B, 3, H/f, W/f): each low-res pixel is the mean of an f x f block."""
    return F.avg_pool2d(images, factor)


def decimate_uint8(images, factor: int = 2):
    """uint8 (B, S, S, 3) numpy images -> uint8 (B, S/f, S/f, 3): `decimate`, rounded as a PNG would store it."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (B, 3, S, S)
    return decimate(x, factor).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def superres_grid(cfg: Config) -> tuple[int, int]:
    """(h, w) of the high-res token grid: 64 px through an f=4 tokenizer is 16x16."""
    s = cfg.superres.image_size // cfg.superres.tokenizer.downsample
    return (s, s)


class SuperResTransformer(MaskedTransformer):
    """A MaskedTransformer over the high-res grid whose cross-attention context is [text ; encoded low-res tokens]."""
    CHECKPOINT_KIND = "superres"

    def __init__(self, cfg: TransformerConfig, codebook_size: int, grid: tuple[int, int], text_dim: int,
                 lowres_codebook_size: int, lowres_grid: tuple[int, int], lowres_depth: int):
        super().__init__(cfg, codebook_size, grid, text_dim)
        self.lowres_codebook_size, self.lowres_grid, self.lowres_depth = lowres_codebook_size, tuple(lowres_grid), lowres_depth
        D, (h, w) = cfg.width, self.lowres_grid
        self.lowres_emb = nn.Embedding(lowres_codebook_size, D)  # no [MASK] row: the low-res grid is always complete
        self.lowres_row = nn.Parameter(torch.zeros(h, D))       # its own factorised 2-D positions, as the base model's
        self.lowres_col = nn.Parameter(torch.zeros(w, D))
        self.lowres_blocks = nn.ModuleList(Block(cfg, cross=False) for _ in range(lowres_depth))
        # projected to the high-res width, then normalised like the text, so neither source drowns the other
        self.lowres_proj = Linear(D, D)
        self.lowres_norm = nn.LayerNorm(D)
        for m in (self.lowres_emb, self.lowres_blocks, self.lowres_proj):
            m.apply(self._init)
        for name, p in self.lowres_blocks.named_parameters():
            if name.endswith("out.weight"):  # two residual branches per encoder block
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * lowres_depth))
        nn.init.normal_(self.lowres_row, std=0.02)
        nn.init.normal_(self.lowres_col, std=0.02)

    @classmethod
    def from_config(cls, cfg: Config) -> "SuperResTransformer":
        if cfg.superres is None:
            raise ValueError(f"preset '{cfg.name}' has no super-res stage; choose a preset with a superres section")
        sr = cfg.superres
        return cls(sr.transformer, sr.tokenizer.codebook_size, superres_grid(cfg), cfg.text.text_dim,
                   cfg.tokenizer.codebook_size, cfg.grid, sr.lowres_depth)

    def encode_lowres(self, lowres_ids: torch.Tensor) -> torch.Tensor:
        """The low-res encoder: ids (B, h, w) of the base tokenizer -> (B, h*w, D), projected and normalised."""
        B = lowres_ids.shape[0]
        (h, w), K = self.lowres_grid, self.lowres_codebook_size
        if lowres_ids.dim() not in (2, 3) or lowres_ids[0].numel() != h * w:
            raise ValueError(f"lowres_ids must be a (B, {h}, {w}) grid of base-tokenizer ids, got {tuple(lowres_ids.shape)}")
        ids = lowres_ids.reshape(B, h * w).long()  # (B, h, w) -> (B, Llo)
        if ids.numel() and (ids.min() < 0 or ids.max() >= K):
            raise ValueError(f"lowres_ids must lie in [0, {K}) (a finished base grid: no [MASK] left); "
                             f"got range [{ids.min()}, {ids.max()}]")
        pos = (self.lowres_row[:, None, :] + self.lowres_col[None, :, :]).reshape(h * w, -1)  # (h, w, D) -> (Llo, D)
        x = self.lowres_emb(ids) + pos  # (B, Llo, D)
        for blk in self.lowres_blocks:
            x, _ = blk(x)
        return self.lowres_norm(self.lowres_proj(x))  # (B, Llo, D)

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor, lowres_ids: torch.Tensor | None = None) -> TextContext:
        """The cross-attention context [text ; low-res]: (B, T + Llo, D), every low-res position real. A batch-1 text
        (the "" prompt of guidance) is shared by every image; the low-res grid is always per image."""
        if lowres_ids is None:
            raise ValueError("the super-res transformer is conditioned on the base model's tokens: pass lowres_ids (B, h, w)")
        self.check_text(text, text_mask)
        lo = self.encode_lowres(lowres_ids)  # (B, Llo, D)
        B = lo.shape[0]
        if text.shape[0] not in (1, B):
            raise ValueError(f"{text.shape[0]} texts for {B} low-res grids; pass one text per grid, or one for all")
        t = self.text_norm(self.text_proj(text)).expand(B, -1, -1)  # (B, T, D)
        mask = torch.cat([text_mask.bool().expand(B, -1), lo.new_ones(B, lo.shape[1], dtype=torch.bool)], 1)  # (B, T + Llo)
        return self.context(torch.cat([t, lo], 1), mask)  # (B, T + Llo, D)

    def forward(self, ids, text=None, text_mask=None, *, lowres_ids=None, ctx=None, **kwargs):
        """As MaskedTransformer.forward, with the low-res grid beside the text: (ids, text, text_mask, lowres_ids=...)
        or a ctx from encode_text(text, text_mask, lowres_ids)."""
        if ctx is None and text is not None:
            if text_mask is None:
                raise ValueError("text_mask (B, T) bool is required with text")
            ctx, text, text_mask = self.encode_text(text, text_mask, lowres_ids), None, None
        return super().forward(ids, text, text_mask, ctx=ctx, **kwargs)

    @staticmethod
    def _arch(cfg: Config) -> dict:
        sr = cfg.to_dict()["superres"] or {}
        return {"superres": {"transformer": sr.get("transformer"), "lowres_depth": sr.get("lowres_depth"),
                             "tokenizer": {"codebook_size": cfg.superres.tokenizer.codebook_size if cfg.superres else None}},
                "grid": list(superres_grid(cfg)) if cfg.superres else None, "lowres_grid": list(cfg.grid),
                "tokenizer": {"codebook_size": cfg.tokenizer.codebook_size}, "text": {"text_dim": cfg.text.text_dim}}

    def _arch_of_self(self) -> dict:
        return {"superres": {"transformer": dataclasses.asdict(self.cfg), "lowres_depth": self.lowres_depth,
                             "tokenizer": {"codebook_size": self.codebook_size}},
                "grid": list(self.grid), "lowres_grid": list(self.lowres_grid),
                "tokenizer": {"codebook_size": self.lowres_codebook_size}, "text": {"text_dim": self.text_dim}}
