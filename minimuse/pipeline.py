"""The text-to-image pipeline: prompt -> frozen LM -> sampler -> tokenizer.decode -> uint8 images.

Glue only (the pipeline of docs/CONTRACTS.md): it loads the trained parts from a checkpoint directory (`tokenizer/`, `transformer/`, and
for Muse's cascade `superres/` with `superres_tokenizer/`), encodes the prompts, calls the written-out loop in
sampler.py (once per stage), and decodes. Every sampling
feature is a named argument whose default is the checkpoint's measured best (its SampleConfig). Arguments are
checked before any work, once: a wrong type is a TypeError, a wrong value a ValueError (ConfigError for sampling
settings), each naming the argument. Taught in notebooks/06_sampling.ipynb.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import editing
from .autoregressive import ARTransformer, generate
from .checkpoint import CheckpointError, read_config, resolve_checkpoint
from .config import Config, ConfigError, SampleConfig, check_output_type
from .inputs import check_device, check_outputs, check_prompt_text, check_seed, default_device
from .sampler import sample
from .critic import TokenCritic
from .text_encoder import TextEncoder, trusted_text_config
from .tokenizer import Tokenizer
from .superres import SuperResTransformer
from .transformer import MaskedTransformer
from .viz import to_uint8
from .vqmodel import VQTokenizer, is_diffusers_vq

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "laptop"


class MusePipeline:
    """Base stage (tokenizer, transformer) and, optionally, the super-res stage (superres, superres_tokenizer: Muse
    §2.4). With transformer=None it is an upscaler only: `upscale` works, generation does not."""

    def __init__(self, config: Config, tokenizer: Tokenizer, text_encoder: TextEncoder, transformer: MaskedTransformer | None,
                 superres: SuperResTransformer | None = None, superres_tokenizer: Tokenizer | None = None, critic=None):
        if (superres is None) != (superres_tokenizer is None):
            raise ValueError("the super-res stage needs both superres and superres_tokenizer")
        if transformer is None and superres is None:
            raise ValueError("a pipeline needs a transformer, a super-res stage, or both")
        self.config, self.tokenizer, self.text_encoder = config, tokenizer.eval(), text_encoder
        self.transformer = transformer.eval() if transformer is not None else None
        self.superres = superres.eval() if superres is not None else None
        self.superres_tokenizer = superres_tokenizer.eval() if superres_tokenizer is not None else None
        self.critic = critic.eval() if critic is not None else None  # critic.py: what sampler="critic" asks
        # which decoding loop draws the base stage: the pipeline decides it once, from the model it was given
        self.autoregressive = isinstance(transformer, ARTransformer)

    @classmethod
    def from_pretrained(cls, checkpoint=None, **kwargs) -> "MusePipeline":
        """diffusers' name for `load_pipeline` (below): the same folder layout, the same checks, the same keywords."""
        return load_pipeline(checkpoint, **kwargs)

    def save_pretrained(self, out_dir, overwrite: bool = False) -> Path:
        """Write this pipeline as a checkpoint folder that `from_pretrained` (and every command's --checkpoint) loads:
        one subfolder per model, each a config.json and a model.safetensors written atomically. Existing files are
        refused, before any is written, unless `overwrite`. A finetuned super-res decoder is saved as the
        superres_tokenizer it decodes for (same encoder and codebook, so the same tokens: Muse §2.5)."""
        out = Path(out_dir)
        parts = {"tokenizer": self.tokenizer, "transformer": self.transformer, "superres": self.superres,
                 "superres_tokenizer": self.superres_tokenizer, "critic": self.critic}
        parts = {name: model for name, model in parts.items() if model is not None}
        check_outputs([out / name / f for name in parts for f in ("config.json", "model.safetensors")], overwrite)
        for name, model in parts.items():
            if isinstance(model, (Tokenizer, VQTokenizer)):
                model.save_pretrained(out / name)
            else:  # a transformer checks that the config describes it; the critic's is the base one with its own section
                cfg = dataclasses.replace(self.config, transformer=model.cfg) if name == "critic" else self.config
                model.save_pretrained(out / name, cfg)
        return out

    @property
    def device(self) -> torch.device:
        return next((self.transformer or self.superres).parameters()).device

    def to(self, device) -> "MusePipeline":
        """Move every model to `device`. A `seed` seeds a generator on the pipeline's device, so a seed gives the
        same images run after run on one device, but not the CPU's images on a GPU (another random stream, and
        arithmetic that differs in the last bits); pass `generator=torch.Generator().manual_seed(s)` for CPU draws."""
        device = check_device(device)
        for part in (self.transformer, self.tokenizer, self.text_encoder, self.superres, self.superres_tokenizer, self.critic):
            if part is not None:
                part.to(device)
        return self

    @property
    def mask_id(self) -> int:
        return self.transformer.mask_id

    def stage_parts(self) -> tuple[dict, dict]:
        """({stage: tokenizer}, {stage: mask id}) for viz's history pictures, whose steps name their stage."""
        toks, ids = {"base": self.tokenizer}, {"base": (self.transformer or self.superres).mask_id}
        if self.superres is not None:
            toks["superres"], ids["superres"] = self.superres_tokenizer, self.superres.mask_id
        return toks, ids

    # Editing (Muse §3.3), each through the one sampler loop: minimuse/editing.py, notebooks/08_editing.ipynb
    inpaint, outpaint, edit = editing.inpaint, editing.outpaint, editing.edit

    def __call__(self, prompts, num_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                 return_history: bool = False, sampler: str | None = None, negative_prompt: str | None = None,
                 schedule: str | None = None, guidance_schedule: str | None = None, choice_temperature: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, generator: torch.Generator | None = None,
                 precision: str = "fp32", superres: bool | None = None, remask_prob: float | None = None,
                 output_type: str = "np"):
        """Draw one image per prompt. Returns uint8 (B, H, W, 3) (or as `output_type` says: "pil", "ids"; see
        `output`), and the per-step history if asked.

        With a super-res stage (superres=None or True) the base grid is then upscaled (Muse's cascade): 64 px images,
        and a history whose steps carry "stage": "base" then "superres". superres=False returns the base output.

        precision="bf16" runs the transformer under bf16 autocast: on a CPU with AVX-512 bf16, 1.17x faster for the
        laptop model at batch 16 (slower at batch 1), 1.4x at width 256, with faithfulness within noise
        (docs/BENCHMARKS.md); fp32 is the default because it is bit-reproducible across machines."""
        check_output_type(output_type)
        prompts, s = self.validate(prompts, negative_prompt, seed, return_history, generator, precision,
                                   num_steps=num_steps, guidance_scale=guidance_scale, sampler=sampler, schedule=schedule,
                                   guidance_schedule=guidance_schedule, choice_temperature=choice_temperature,
                                   temperature=temperature, top_k=top_k, remask_prob=remask_prob)
        cascade = self._use_superres(superres)
        generator = generator or torch.Generator(self.device).manual_seed(seed)  # one stream through both stages
        ids, history = self.sample_ids(prompts, s, generator=generator, negative_prompt=negative_prompt,
                                       precision=precision, return_history=return_history)
        if cascade:
            ids, sr_history = self.upscale_ids(ids, prompts, generator=generator, precision=precision,
                                               return_history=return_history)
            history = [{**h, "stage": "base"} for h in history] + sr_history if return_history else None
        images = self.output(ids, "superres" if cascade else "base", output_type)          # (B, H, W, 3)
        return (images, history) if return_history else images

    def _use_superres(self, superres) -> bool:
        if self.transformer is None:
            raise ValueError("this pipeline holds only the super-res stage: use pipe.upscale(images, prompts)")
        if superres not in (None, True, False):
            raise TypeError(f"superres must be True, False or None, got {type(superres).__name__}")
        if superres and self.superres is None:
            raise ValueError("superres=True, but this checkpoint has no super-res stage (no superres/ folder); "
                             "train one with `minimuse train-superres`")
        return self.superres is not None and superres is not False

    def upscale_ids(self, lowres_ids: torch.Tensor, prompts: list[str], *, seed: int = 0, generator=None,
                    num_steps: int | None = None, guidance_scale: float | None = None, precision: str = "fp32",
                    return_history: bool = False, init_ids=None, init_mask=None):
        """The super-res stage on base-tokenizer ids (B, h, w): high-res ids (B, H', W') and its history, run by the
        one sampler loop with `lowres_ids` and the stage's own steps, guidance and temperature (config.superres; Muse:
        8 steps). Greedy by default: an upscaler should draw the likeliest high-res image of the one it was given."""
        if self.superres is None:
            raise ValueError("this checkpoint has no super-res stage (no superres/ folder); train one with "
                             "`minimuse train-superres`")
        given = {"num_steps": num_steps, "guidance_scale": guidance_scale}  # else the stage's own settings
        s = dataclasses.replace(self.config.superres.sample, **{k: v for k, v in given.items() if v is not None})
        ids, history = self.sample_ids(prompts, s, seed=seed, generator=generator, precision=precision,
                                       return_history=return_history, model=self.superres, lowres_ids=lowres_ids,
                                       init_ids=init_ids, init_mask=init_mask)
        return ids, [{**h, "stage": "superres"} for h in history] if return_history else None

    def upscale(self, images: np.ndarray, prompts, seed: int = 0, num_steps: int | None = None,
                guidance_scale: float | None = None, generator=None, return_history: bool = False,
                output_type: str = "np"):
        """uint8 images (B, S, S, 3) at the base size and their prompts -> uint8 (B, 2S, 2S, 3) (or `output_type`)
        through the super-res stage: the base tokenizer reads each image, the super-res model draws the high-res
        tokens (Muse §2.4)."""
        check_output_type(output_type)
        prompts = self.check_prompts(prompts)
        check_seed(seed)
        S = self.config.data.image_size
        x = np.asarray(images)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (S, S, 3):
            raise ValueError(f"upscale takes uint8 images of shape (B, {S}, {S}, 3), got {x.dtype} {x.shape}")
        if len(prompts) != len(x):
            raise ValueError(f"{len(x)} images but {len(prompts)} prompts; give one prompt per image")
        ids, history = self.upscale_ids(self.encode_images(x), prompts, seed=seed, generator=generator,
                                        num_steps=num_steps, guidance_scale=guidance_scale, return_history=return_history)
        out = self.output(ids, "superres", output_type)
        return (out, history) if return_history else out

    def sample_ids(self, prompts: list[str], s: SampleConfig, *, seed: int = 0, generator=None, negative_prompt=None,
                   precision: str = "fp32", return_history: bool = False, init_ids=None, init_mask=None,
                   model=None, lowres_ids=None):
        """Encode the (validated) prompts and run the one sampler loop with settings `s`: token ids (B, h, w) and the
        history (None unless asked). init_ids / init_mask (B, h, w) keep the known tokens: the editing methods' path.
        model / lowres_ids: the super-res stage (default: the base transformer, unconditioned on a grid)."""
        dev = self.device  # the parts may sit on different devices (training samples a GPU model with a CPU tokenizer)
        encode = lambda texts: tuple(x.to(dev) for x in self.text_encoder(texts))
        text = encode(prompts)                                                             # (B, T, E), (B, T)
        # one row each: the sampler shares a batch-1 unconditional (or negative) text across the batch
        uncond = encode([""]) if s.guidance_scale != 0 else None                           # (1, 2, E), (1, 2)
        negative = encode([negative_prompt]) if negative_prompt is not None else None
        # the draws come from the model's device: on a GPU, a CPU generator would make every step wait for (B, L, K)
        # uniforms drawn on the host (7x slower at batch 256, docs/GPU.md). A CPU generator reproduces the CPU's draws.
        generator = generator or torch.Generator(dev).manual_seed(seed)
        if model is None and self.autoregressive:  # its own raster loop, under the same contract: whole images only
            if init_ids is not None or return_history:
                editing.refuse_autoregressive(self, "no inpainting, outpainting or step history")
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return generate(self.transformer, text, s, uncond=uncond, negative=negative, generator=generator), None
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = sample(model or self.transformer, text, s, uncond=uncond, negative=negative, generator=generator,
                         init_ids=init_ids, init_mask=init_mask, lowres_ids=lowres_ids, return_history=return_history,
                         critic=self.critic if model is None else None)
        ids, history = out if return_history else (out, None)
        if history is not None:  # on the host, wherever the model ran: plots and widgets read it with numpy
            history = [{k: v.cpu() for k, v in h.items()} for h in history]
        return ids, history

    def decode(self, ids: torch.Tensor, stage: str = "base") -> np.ndarray:
        """Token ids (B, h, w) of `stage` ("base" or "superres") -> uint8 images (B, H, W, 3)."""
        tok = self.tokenizer if stage == "base" else self.superres_tokenizer
        with torch.inference_mode():
            return to_uint8(tok.decode(ids.to(next(tok.parameters()).device)))

    def output(self, ids: torch.Tensor, stage: str = "base", output_type: str = "np"):
        """What every call that draws returns, as diffusers names it: "np" uint8 images (B, H, W, 3), "pil" a list of
        PIL images, "ids" the token ids (B, h, w) undecoded (diffusers' "latent")."""
        check_output_type(output_type)
        if output_type == "ids":
            return ids
        images = self.decode(ids, stage)
        return [Image.fromarray(im) for im in images] if output_type == "pil" else images

    def encode_images(self, images: np.ndarray, stage: str = "base") -> torch.Tensor:
        """uint8 images (B, S, S, 3) of the stage's size -> token ids (B, h, w) on the model's device."""
        tok = self.tokenizer if stage == "base" else self.superres_tokenizer
        x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div(255)  # (B, 3, S, S)
        with torch.inference_mode():
            return tok.encode(x.to(next(tok.parameters()).device)).to(self.device)

    def validate(self, prompts, negative_prompt=None, seed=0, return_history=False, generator=None, precision="fp32",
                 **overrides) -> tuple[list[str], SampleConfig]:
        """Everything __call__ checks before drawing: returns (prompts as a list, the sampling settings)."""
        prompts = self.check_prompts(prompts, negative_prompt)
        check_seed(seed)
        if not isinstance(return_history, bool):
            raise TypeError(f"return_history must be True or False, got {type(return_history).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}; choose one of: fp32, bf16")
        return prompts, self.settings(**overrides)

    def check_prompts(self, prompts, negative_prompt=None) -> list[str]:
        """`prompts` as a list, refusing a wrong type (TypeError), no prompt at all, or a prompt the text tokenizer
        reduces to nothing (ValueError): that one would encode exactly like "", and silently draw an unconditional image."""
        prompts = check_prompt_text(prompts, negative_prompt)
        named = [("prompt", p) for p in prompts] + ([("negative prompt", negative_prompt)] if negative_prompt is not None else [])
        for (what, p), n in zip(named, self.text_encoder.content_token_count([p for _, p in named])):
            if n == 0:
                hint = "leave it out" if what == "negative prompt" else "write what to draw, e.g. 'two red circles'"
                raise ValueError(f"empty {what} {p[:40]!r}: the text encoder keeps no token of it (whitespace, control and "
                                 f"zero-width characters are dropped), so it would act as \"\", the model's unconditional "
                                 f"input; {hint}")
        return list(prompts)

    def settings(self, **overrides) -> SampleConfig:
        """The checkpoint's sampling defaults with any non-None override applied (validated by SampleConfig), with
        num_steps at most the tokens of the grid: every step must commit at least one token."""
        s = dataclasses.replace(self.config.sample, **{k: v for k, v in overrides.items() if v is not None})
        h, w = (self.transformer or self.superres).grid
        if s.num_steps > h * w:
            raise ValueError(f"num_steps={s.num_steps} exceeds the {h * w} tokens of this model's {h}x{w} grid; "
                             f"use at most {h * w} steps")
        return s


def transformer_class(kind: str):
    """The class of a base-stage transformer.kind: Muse's masked model or the autoregressive baseline."""
    if kind == "autoregressive":
        return ARTransformer
    if kind != "masked":
        raise CheckpointError(f"a pipeline's transformer/ holds a masked or autoregressive model, not a {kind!r} one")
    return MaskedTransformer


def _saved_config(ckpt_dir: Path, kind: str) -> Config:
    try:
        return Config.from_dict(read_config(ckpt_dir, kind)["config"])
    except ConfigError as e:  # name the file, not just the field
        raise CheckpointError(f"{ckpt_dir / 'config.json'} holds an invalid config: {e}") from None


def load_pipeline(checkpoint=None, config: Config | None = None, device=None, superres: bool = True) -> MusePipeline:
    """Load `checkpoint` (a directory with tokenizer/ and transformer/), default: the shipped laptop model, onto
    `device` (default: CUDA when present, else the CPU). When it also holds superres/ (with superres_tokenizer/) it
    is Muse's cascade; a superres_decoder/ there (Muse §2.5: the finetuned decoder of the same tokens) then decodes
    the high-res tokens. A directory with only tokenizer/, superres_tokenizer/ and superres/ (a `train-superres` run)
    loads as an upscaler. superres=False loads the base stage only (pipe(...) then draws at the base size, as a
    checkpoint without superres/ does). Any missing, corrupt or mismatched part is a CheckpointError naming it:
    nothing falls back to another model."""
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):  # else pathlib's TypeError, unnamed
        raise TypeError(f"checkpoint must be a folder path (str or Path) or a Hub repo id, got {type(checkpoint).__name__}")
    device = check_device(device if device is not None else default_device())
    root = resolve_checkpoint(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT  # a folder or a Hub repo id
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"no pipeline checkpoint at {root}: it is a file; give the directory that holds "
                              "tokenizer/ and transformer/")
    has_sr = (root / "superres").is_dir() and (superres or not (root / "transformer").is_dir())
    if not (root / "tokenizer").is_dir() or not ((root / "transformer").is_dir() or has_sr):
        raise CheckpointError(f"no pipeline checkpoint at {root}: expected the folders tokenizer/ and transformer/ "
                              "(train one with `minimuse train --preset laptop`)")
    transformer = None
    if (root / "transformer").is_dir():
        saved = _saved_config(root / "transformer", "transformer")
        transformer = transformer_class(saved.transformer.kind).from_pretrained(root / "transformer", config)
    else:
        saved = _saved_config(root / "superres", "superres")
    if not is_diffusers_vq(root / "tokenizer"):  # else a pretrained VQModel, checked against the config on load
        _saved_config(root / "tokenizer", "tokenizer")
    tokenizer = Tokenizer.from_pretrained(root / "tokenizer", saved)
    if transformer is not None and tokenizer.codebook_size != transformer.codebook_size:
        raise CheckpointError(f"{root}: tokenizer has K={tokenizer.codebook_size} codes but the transformer predicts {transformer.codebook_size}")
    superres = superres_tokenizer = None
    if has_sr:
        if not (root / "superres_tokenizer").is_dir():
            raise CheckpointError(f"{root} holds superres/ but no superres_tokenizer/: the super-res stage needs both")
        sr_saved = _saved_config(root / "superres", "superres")
        superres = SuperResTransformer.from_pretrained(root / "superres")
        decoder_dir = root / "superres_decoder" if (root / "superres_decoder").is_dir() else root / "superres_tokenizer"
        superres_tokenizer = Tokenizer.from_pretrained(decoder_dir, sr_saved)
        if superres.lowres_codebook_size != tokenizer.codebook_size or superres_tokenizer.codebook_size != superres.codebook_size:
            raise CheckpointError(f"{root}: the super-res stage reads K={superres.lowres_codebook_size} base codes and "
                                  f"predicts K={superres.codebook_size}, but the tokenizers have {tokenizer.codebook_size} "
                                  f"and {superres_tokenizer.codebook_size}")
        base_grid = transformer.grid if transformer is not None else saved.grid
        if superres.lowres_grid != base_grid or superres.text_dim != saved.text.text_dim:
            raise CheckpointError(f"{root}: the super-res stage reads a {superres.lowres_grid} grid and {superres.text_dim}-d "
                                  f"text, but the base stage makes a {base_grid} grid and {saved.text.text_dim}-d text")
        # the stage's own settings (size, steps, guidance) come from its own checkpoint
        saved = sr_saved if transformer is None else dataclasses.replace(saved, superres=sr_saved.superres)
    critic = None
    if (root / "critic").is_dir() and transformer is not None:  # Token-Critic for sampler="critic" (critic.py)
        critic = TokenCritic.from_pretrained(root / "critic")
        if (critic.codebook_size, critic.grid, critic.text_dim) != (transformer.codebook_size, transformer.grid,
                                                                     transformer.text_dim):
            raise CheckpointError(f"{root / 'critic'} judges {critic.grid} grids of K={critic.codebook_size} codes, but "
                                  f"the transformer draws {transformer.grid} grids of K={transformer.codebook_size}")
    # a downloaded checkpoint's text.cache_dir or text.encoder may not point outside it: the user's own cache comes from
    # MINIMUSE_TEXT_CACHE (text_encoder.py)
    text = TextEncoder(trusted_text_config(saved.text, root))
    return MusePipeline(config or saved, tokenizer, text, transformer, superres, superres_tokenizer, critic).to(device)
