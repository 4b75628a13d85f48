"""The image tokenizer: a fully convolutional VQ-VAE / VQGAN that turns images into a grid of integer ids.

Muse §2.2 (following VQGAN): a conv encoder downsamples by f, a quantizer snaps every latent vector to one of K
codes, and a conv decoder maps codes back to pixels; there is no attention, so any resolution divisible by f works.
The two quantizers (VQ and FSQ) are in quantizer.py.
An optional patch discriminator adds VQGAN's hinge loss on GPU presets. Taught in notebooks/02_tokenizer.ipynb.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import (CheckpointError, check_config, load_checkpoint, load_state_strict, read_config,
                         save_checkpoint, saved_config)
from .config import Config, TokenizerConfig
from .quantizer import FSQuantizer, VectorQuantizer, codebook_usage, perplexity
from .vqmodel import VQTokenizer, is_diffusers_vq

# Fields that change the meaning of an id; the rest (lr, steps, ...) may differ when loading. The decoder's own size
# (decoder_channels, decoder_res_blocks) is not among them: a finetuned decoder reads the same tokens (Muse §2.5), and
# the weights always load strictly into a model built from the checkpoint's own config.
ARCH_FIELDS = ("quantizer", "channels", "channel_mult", "num_res_blocks", "codebook_size")
ARCH_FIELDS_BY_QUANTIZER = {"vq": ("code_dim",), "fsq": ("fsq_levels",)}


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.config = cfg
        self.codebook_size = cfg.codebook_size  # K
        self.downsample = cfg.downsample  # f
        if cfg.quantizer == "vq":
            self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.commitment, cfg.ema_decay, cfg.dead_code_threshold)
        else:
            self.quantizer = FSQuantizer(cfg.fsq_levels)
        self.encoder = Encoder(cfg, self.quantizer.dim)
        self.decoder = Decoder(cfg, self.quantizer.dim)
        self.full_config: Config | None = None  # the whole Config this model was trained under, saved with it
        self.stage = "base"

    def forward(self, images: torch.Tensor):
        """Training pass: (recon, aux). recon is unclamped, so the loss still has a gradient where it overshoots."""
        z = self.encoder(self._check_images(images) * 2 - 1)  # (B, C, h, w)
        zq, ids, quant_loss = self.quantizer(z)
        recon = (self.decoder(zq) + 1) / 2  # (B, 3, H, W)
        err = recon - images
        recon_loss = err.abs().mean() if self.config.recon_loss == "l1" else err.pow(2).mean()
        aux = {"loss": recon_loss + quant_loss, "recon_loss": recon_loss, "quant_loss": quant_loss, "ids": ids,
               "usage": codebook_usage(ids, self.codebook_size), "perplexity": perplexity(ids, self.codebook_size)}
        return recon, aux

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> ids long (B, h, w), with h = H / f."""
        z = self.encoder(self._check_images(images) * 2 - 1)  # (B, C, h, w)
        return self.quantizer.quantize(z)[1]

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids long (B, h, w) in [0, K) -> images float (B, 3, H, W) in [0, 1]."""
        if ids.dim() != 3 or ids.dtype != torch.long:
            raise ValueError(f"decode expects long ids of shape (B, h, w), got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.codebook_size):
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}); got range [{ids.min()}, {ids.max()}] "
                             "(the mask id cannot be decoded: finish sampling first)")
        zq = self.quantizer.lookup(ids)  # (B, C, h, w)
        return ((self.decoder(zq) + 1) / 2).clamp(0, 1)

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[2] % self.downsample or images.shape[3] % self.downsample:
            raise ValueError(f"image side {tuple(images.shape[2:])} must be divisible by the downsampling factor {self.downsample}")
        return images.float()

    # ------------------------------------------------------------------------------------------------ checkpoints
    def save_pretrained(self, out_dir, config: Config | None = None, stage: str | None = None,
                        dtype: torch.dtype | None = None):
        """Write config.json (the full Config) and model.safetensors atomically (floats as `dtype` if given: fp16
        for shipped checkpoints that must fit data/'s budget). EMA buffers are included."""
        config = config or self.full_config or Config(name="custom", tokenizer=self.config)
        stage = stage or self.stage
        if stage not in ("base", "superres"):
            raise ValueError(f"stage must be 'base' or 'superres', got {stage!r}")
        return save_checkpoint(out_dir, "tokenizer", config.to_dict(), self.state_dict(), extra={"stage": stage},
                               dtype=dtype)

    @classmethod
    def from_pretrained(cls, ckpt_dir, config: Config | TokenizerConfig | None = None) -> "Tokenizer":
        """Rebuild from the saved config and load strictly. A given config must match the saved architecture.
        A folder saved by diffusers' VQModel (aMUSEd's VQGAN) loads as vqmodel.VQTokenizer, checked against config."""
        if is_diffusers_vq(ckpt_dir):
            return VQTokenizer.from_pretrained(ckpt_dir, config)
        stage = read_config(ckpt_dir, "tokenizer").get("stage", "base")
        if stage not in ("base", "superres"):
            raise CheckpointError(f"{ckpt_dir}/config.json names stage {stage!r}; a tokenizer is 'base' or 'superres'")
        saved = saved_config(ckpt_dir, "tokenizer", ["tokenizer" if stage == "base" else "superres_tokenizer"])
        if stage == "superres" and saved.superres is None:
            raise CheckpointError(f"{ckpt_dir}/config.json holds a super-res tokenizer but its config has no superres section")
        _, state = load_checkpoint(ckpt_dir, "tokenizer")
        tok_cfg, size = (saved.tokenizer, saved.data.image_size) if stage == "base" else (saved.superres.tokenizer, saved.superres.image_size)
        if config is not None:
            # A bare TokenizerConfig says nothing about the image size, so only the tokenizer fields are compared.
            saved_size = size if isinstance(config, Config) else None
            # A super-res tokenizer also serves as the base tokenizer of a model drawn at its size (the gpu preset
            # draws 64 px through laptop's 64 px tokenizer): then the config's base section must match it.
            view = "base" if stage == "superres" and isinstance(config, Config) and config.data.image_size == size else stage
            check_config(_arch_view(tok_cfg, saved_size, view), _arch_view(config, None, view), ckpt_dir)
        model = cls(tok_cfg)
        load_state_strict(model, state, ckpt_dir)
        model.full_config, model.stage = saved, stage
        return model.eval()


def _arch_view(cfg, image_size, stage: str) -> dict:
    """The architecture part of a config, nested under the names config.json uses, so errors name the real field."""
    if isinstance(cfg, Config):
        if stage == "superres" and cfg.superres is None:
            raise CheckpointError(f"this is a super-res tokenizer, but config '{cfg.name}' has no superres section")
        tok, image_size = (cfg.tokenizer, cfg.data.image_size) if stage == "base" else (cfg.superres.tokenizer, cfg.superres.image_size)
    elif isinstance(cfg, TokenizerConfig):
        tok = cfg
    else:
        raise TypeError(f"config must be a Config or TokenizerConfig, got {type(cfg).__name__}")
    fields = ARCH_FIELDS + ARCH_FIELDS_BY_QUANTIZER[tok.quantizer]
    tok_d = {k: v for k, v in dataclasses.asdict(tok).items() if k in fields}
    if stage == "base":
        return {"tokenizer": tok_d, **({"data": {"image_size": image_size}} if image_size else {})}
    return {"superres": {"tokenizer": tok_d, **({"image_size": image_size} if image_size else {})}}


# ---------------------------------------------------------------------------------------------------- conv nets
def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Stages of ResBlocks; every stage but the last ends with a stride-2 conv, so f = 2**(stages - 1)."""

    def __init__(self, cfg: TokenizerConfig, out_dim: int):
        super().__init__()
        ch = [cfg.channels * m for m in cfg.channel_mult]
        layers, cin = [nn.Conv2d(3, ch[0], 3, padding=1)], ch[0]
        for i, c in enumerate(ch):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, c))
                cin = c
            if i < len(ch) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(cin, cin), _norm(cin), nn.SiLU(), nn.Conv2d(cin, out_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)  # (B, C, h, w)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # nearest + conv: no checkerboard


class Decoder(nn.Module):
    """The encoder mirrored: code vectors (B, C, h, w) -> pixels in [-1, 1] (B, 3, H, W), before clamping."""

    def __init__(self, cfg: TokenizerConfig, in_dim: int):
        super().__init__()
        ch = [(cfg.decoder_channels or cfg.channels) * m for m in cfg.channel_mult]
        cin = ch[-1]
        layers = [nn.Conv2d(in_dim, cin, 3, padding=1), ResBlock(cin, cin)]
        for i in reversed(range(len(ch))):
            for _ in range(cfg.decoder_res_blocks or cfg.num_res_blocks):
                layers.append(ResBlock(cin, ch[i]))
                cin = ch[i]
            if i > 0:
                layers.append(Upsample(cin))
        layers += [_norm(cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


# ------------------------------------------------------------------------------------------------ discriminator
class PatchDiscriminator(nn.Module):
    """A small PatchGAN (VQGAN): one real/fake logit per overlapping patch, (B, 3, H, W) -> (B, 1, H/8, W/8)."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        mods, cin = [], 3
        for i in range(layers):
            cout = channels * 2 ** i
            mods += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), *( [_norm(cout)] if i else []), nn.LeakyReLU(0.2)]
            cin = cout
        mods.append(nn.Conv2d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, images):
        return self.net(images * 2 - 1)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
