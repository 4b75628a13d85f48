"""The super-resolution transformer: turns the base model's low-res tokens into high-res tokens (Muse §2.4, Fig. 4).

A low-res encoder (an embedding of the base tokenizer's ids with its own 2-D positions, then self-attention + MLP
blocks) reads the 8x8 grid the base model drew. Its output, projected to the high-res width and normalised, is
concatenated with the projected text along the sequence axis, and every block of an ordinary masked transformer
(transformer.py, not a fork) cross-attends to that concatenation while it fills the 16x16 high-res grid. Training
masks the high-res tokens only; the low-res tokens are always given (see `train_superres` in train.py for why they
are never dropped). Sampling is the one loop of sampler.py with `lowres_ids`; decimation is a box filter, as Muse's.
`upscale_cli` is `minimuse upscale`. Taught in notebooks/07_superres.ipynb.
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
    KIND = "superres"

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


# ----------------------------------------------------------------------------------------------------------- CLI
def _upscale_jobs(image, prompt, out, in_dir, out_dir) -> tuple[list, list[str], list]:
    """(inputs, prompts, outputs) of `minimuse upscale`: one IMAGE with its prompt, or every PNG of in_dir captioned
    by its captions.jsonl ({"file", "caption"} lines, as `minimuse dataset` writes them)."""
    from pathlib import Path
    if in_dir is None:
        if image is None or prompt is None:
            raise ValueError("give IMAGE and --prompt TEXT, or --in-dir DIR --out-dir OUT")
        if out_dir is not None:
            raise ValueError("--out-dir goes with --in-dir; a single IMAGE writes --out")
        return [Path(image)], [prompt], [Path(out if out is not None else "upscaled.png")]
    if image is not None or prompt is not None or out is not None:
        raise ValueError("--in-dir takes every image and caption from DIR; give no IMAGE, --prompt or --out")
    if out_dir is None:
        raise ValueError("--in-dir needs --out-dir")
    src = Path(in_dir)
    if not src.is_dir():
        raise ValueError(f"--in-dir {src} is not a directory")
    captions_file = src / "captions.jsonl"
    if not captions_file.exists() and not captions_file.is_symlink():
        raise ValueError(f"{captions_file} is missing: upscale --in-dir reads each image's prompt from it "
                         '({"file": NAME, "caption": TEXT} per line, as `minimuse dataset` writes)')
    captions = _read_captions(captions_file)
    images = sorted(p for p in src.iterdir() if p.suffix.lower() == ".png" and p.name != "grid.png")
    if not images:
        raise ValueError(f"--in-dir {src} holds no PNG images")
    missing = [p.name for p in images if p.name not in captions]
    if missing:
        raise ValueError(f"{len(missing)} image(s) in {src} have no caption in captions.jsonl, e.g. {missing[0]}")
    return images, [captions[p.name] for p in images], [Path(out_dir) / p.name for p in images]


def _read_captions(path) -> dict[str, str]:
    """{file name: caption} of a captions.jsonl, every line checked: a caption that is null, a number or a list
    would otherwise become the prompt "None", "5" or "['a']"; a file captioned twice is ambiguous."""
    from .inputs import MAX_CAPTIONS_BYTES, read_jsonl
    captions = {}
    for n, row in read_jsonl(path, "captions file", MAX_CAPTIONS_BYTES):
        name, caption = row.get("file"), row.get("caption")
        if not isinstance(name, str) or not isinstance(caption, str) or not caption.strip():
            raise ValueError(f'captions file {path}, line {n}: needs "file" (a file name) and "caption" (non-empty '
                             f"text), got file={name!r}, caption={caption!r}")
        if name in captions:
            raise ValueError(f"captions file {path}, line {n}: {name} is captioned a second time; keep one line per image")
        captions[name] = caption
    return captions


def upscale_cli(checkpoint, image=None, prompt=None, out=None, in_dir=None, out_dir=None, seed: int = 0,
                num_steps: int | None = None, guidance_scale: float | None = None, batch_size: int = 64,
                device=None, overwrite: bool = False) -> list:
    """What `minimuse upscale` does. Every input is read and checked (size, caption, output paths) before the first
    image is upscaled, and each PNG is written atomically. Returns the output paths."""
    import numpy as np
    from .checkpoint import atomic_save_image, check_outputs
    from .inputs import check_batch_seeds, read_image
    from .pipeline import load_pipeline
    inputs, prompts, outs = _upscale_jobs(image, prompt, out, in_dir, out_dir)
    check_outputs(outs, overwrite)
    check_batch_seeds(seed, len(inputs), batch_size, "images")  # batch i draws with seed + its first index
    pipe = load_pipeline(checkpoint, device=device)
    if pipe.superres is None:
        raise ValueError(f"{checkpoint} has no super-res stage (no superres/ folder)")
    (h, w), S = pipe.superres.grid, pipe.config.data.image_size
    if num_steps is not None and num_steps > h * w:
        raise ValueError(f"--steps must be at most the {h * w} tokens of the super-res stage's {h}x{w} grid, got {num_steps}")
    images = []
    for path in inputs:
        im = read_image(path)
        if im.shape[:2] != (S, S):
            raise ValueError(f"image {path} is {im.shape[1]}x{im.shape[0]} px; upscale takes the base size, {S}x{S} px")
        images.append(im)
    pipe.check_prompts(prompts)
    for start in range(0, len(images), batch_size):
        sl = slice(start, start + batch_size)
        up = pipe.upscale(np.stack(images[sl]), prompts[sl], seed=seed + start, num_steps=num_steps,
                          guidance_scale=guidance_scale)
        for img, path in zip(up, outs[sl]):
            atomic_save_image(path, img)
    return outs
