"""diffusers' `VQModel` (aMUSEd's pretrained VQGAN, 8192 codes at 16x downsampling) behind minimuse's tokenizer
interface, so a paper-scale run can start from a pretrained tokenizer instead of training one (Muse §2.2 uses a
VQGAN with 8192 codes; aMUSEd, Patil et al. 2024, released one).

Opt-in and offline by default: `VQTokenizer.from_pretrained` reads a local folder saved by diffusers
(`config.json` with "_class_name": "VQModel" and its weights), or a Hub name such as "amused/amused-256" with
subfolder "vqvae" only where the files are already in the local Hugging Face cache. `Tokenizer.from_pretrained`
hands such folders here, so `pretokenize`, `train` and the pipeline take one as `tokenizer/`. Set the preset's
tokenizer.codebook_size and tokenizer.channel_mult (one entry per 2x downsampling, plus one) to match it.
It serves as the base stage's tokenizer (the super-res stage keeps minimuse's own). Tested on a tiny random VQModel
built from a config (tests/test_adapters.py); docs/REAL_DATA.md.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CheckpointError


def is_diffusers_vq(path) -> bool:
    """A folder saved by diffusers' VQModel.save_pretrained (its config.json names the class)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("_class_name") == "VQModel"
    except (OSError, ValueError, AttributeError):
        return False


class VQTokenizer(nn.Module):
    """encode: float (B, 3, H, W) in [0, 1] -> ids long (B, h, w); decode: ids -> images in [0, 1]. Frozen."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq.eval().requires_grad_(False)
        self.config = dict(vq.config)  # identity and checks read it (checkpoint.tokenizer_identity)
        self.codebook_size = vq.config.num_vq_embeddings  # K
        self.downsample = 2 ** (len(vq.config.block_out_channels) - 1)  # f: one 2x down block per stage but the last
        self.full_config, self.stage = None, "base"

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] % self.downsample or images.shape[3] % self.downsample:
            raise ValueError(f"expected images (B, 3, H, W) with H, W divisible by {self.downsample}, got {tuple(images.shape)}")
        h = self.vq.encode(images.float() * 2 - 1).latents  # (B, C, h, w)
        _, _, (_, _, ids) = self.vq.quantize(h)
        return ids.reshape(h.shape[0], h.shape[2], h.shape[3])  # (B*h*w,) -> (B, h, w)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 3 or ids.dtype != torch.long or (ids.numel() and (ids.min() < 0 or ids.max() >= self.codebook_size)):
            raise ValueError(f"decode expects long ids (B, h, w) in [0, {self.codebook_size})")
        B, h, w = ids.shape
        C = self.vq.quantize.embedding.weight.shape[1]
        quant = self.vq.quantize.get_codebook_entry(ids.reshape(-1), (B, h, w, C))  # (B, C, h, w)
        # VQModel.decode after its quantizer, written out: it reads ids itself only when lookup_from_codebook is set
        dec = self.vq.decoder(self.vq.post_quant_conv(quant), quant if self.vq.config.norm_type == "spatial" else None)
        return ((dec + 1) / 2).clamp(0, 1)

    def save_pretrained(self, out_dir, config=None, stage=None):
        """diffusers' own layout, each file moved into place whole (diffusers writes in place)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".vq-"))
        try:
            self.vq.save_pretrained(tmp, safe_serialization=True)
            for f in tmp.iterdir():
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    @classmethod
    def from_pretrained(cls, name_or_path, config=None, subfolder: str | None = None) -> "VQTokenizer":
        """Load safetensors weights only (use_safetensors: no pickle), from local files only; a given minimuse
        Config must agree on K and the downsampling factor, named by field."""
        from diffusers import VQModel
        try:
            vq = VQModel.from_pretrained(str(name_or_path), subfolder=subfolder, use_safetensors=True, local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as e:
            raise CheckpointError(f"no diffusers VQModel at {name_or_path}{f' (subfolder {subfolder})' if subfolder else ''} "
                                  f"in local files ({type(e).__name__}); download it once with `huggingface-cli download "
                                  f"{name_or_path}` on a machine with network") from None
        tok = cls(vq)
        tc = getattr(config, "tokenizer", config)
        if tc is not None:
            if tc.codebook_size != tok.codebook_size:
                raise CheckpointError(f"VQModel {name_or_path} has {tok.codebook_size} codes; set tokenizer.codebook_size="
                                      f"{tok.codebook_size} (now {tc.codebook_size})")
            if tc.downsample != tok.downsample:
                raise CheckpointError(f"VQModel {name_or_path} downsamples {tok.downsample}x; set tokenizer.channel_mult "
                                      f"to {len(vq.config.block_out_channels)} entries (now {tc.downsample}x)")
        return tok.eval()
