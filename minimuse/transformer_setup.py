"""What `train_transformer` (train.py) builds before its first step: the tokenizers, the token pool and text table,
the critic's frozen generator, the optimizer, the state a resume reads back, and the `save(step)` the loop calls.

Split from train.py so that the transformer's stage there reads as its batch, its loss and its log line (Muse §2.6);
the loop itself is loop.py. Taught in notebooks/05_training.ipynb.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .config import Config
from .pipeline import transformer_class
from .pool import build_token_pool, text_table
from .runs import full_state, resolve_precision, restore, restore_rng, rng_states, save_training_state
from .shards import load_shards
from .tokenizer import Tokenizer

TIMING = {"setup_s": 0.0, "step_s": 0.0, "eval_s": 0.0, "ckpt_s": 0.0, "steps": 0}  # where a run's seconds went (--report)
TIMING_KEYS = tuple(TIMING)


def load_tokenizers(cfg: Config, tok_src, sr_src):
    """(the base tokenizer, the super-res one or None without sr_src)."""
    superres_tokenizer = None
    tokenizer = Tokenizer.from_pretrained(tok_src, cfg)
    if sr_src is not None:
        superres_tokenizer = Tokenizer.from_pretrained(sr_src, cfg)
        if superres_tokenizer.stage != "superres":
            raise CheckpointError(f"--superres-tokenizer {sr_src} is not a super-res stage tokenizer (a pretrained "
                                  "VQModel serves the base stage only)")
    return tokenizer, superres_tokenizer


def token_data(cfg: Config, tc, data, tokenizer, superres_tokenizer, text_encoder, tok_src, sr_src, pool_dir):
    """(the token pool, the text table): read from shards, after checking they are this run's tokenizer's and
    encoder's, or built from the shapes world (and cached in pool_dir)."""
    sr = superres_tokenizer is not None
    if data is None:
        pool = build_token_pool(cfg, superres_tokenizer if sr else tokenizer, cfg.data.pool_size, pool_dir,
                                **({"lowres_tokenizer": tokenizer} if sr else {}))
        return pool, text_table(text_encoder, pool["vocab"])
    pool, table = load_shards(data, superres_tokenizer if sr else tokenizer, text_encoder, tokenizer if sr else None,
                              tokenizer_src=sr_src if sr else tok_src)
    grid = (cfg.superres.image_size // superres_tokenizer.downsample,) * 2 if sr else cfg.grid
    for name, want in (("ids", grid), ("lowres_ids", cfg.grid)):
        if name in pool and tuple(pool[name].shape[1:]) != tuple(want):
            raise ValueError(f"shards in {data} hold {tuple(pool[name].shape[1:])} {name} grids; preset "
                             f"'{cfg.name}' trains on {tuple(want)} (pretokenize at its image sizes)")
    if tc.kind_weights and not set(pool["kinds"]) <= set(cfg.data.kinds):
        raise ValueError(f"train.kind_weights weighs caption kinds, but the shards in {data} have none; set "
                         "train.kind_weights=[] to train on them")
    return pool, table


def load_generator(cfg: Config, generator, device):
    """The frozen masked generator whose samples the critic learns to judge, checked to fit cfg."""
    gen = transformer_class("masked").from_pretrained(Path(generator) / "transformer").to(device)
    if (gen.codebook_size, gen.grid, gen.text_dim) != (cfg.tokenizer.codebook_size, cfg.grid, cfg.text.text_dim):
        raise ValueError(f"the generator {generator} draws {gen.grid} grids of K={gen.codebook_size} codes from "
                         f"{gen.text_dim}-d text; preset '{cfg.name}' describes {cfg.grid}, K="
                         f"{cfg.tokenizer.codebook_size}, {cfg.text.text_dim}-d")
    return gen


NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (a, b, c), torch.optim.Muon's default


def orthogonalize(G, steps: int = 5, dtype=torch.bfloat16, coefficients=NEWTON_SCHULZ, eps: float = 1e-7):
    """Muon's Newton-Schulz iterations: roughly U V^T for G = U S V^T. X = G / |G|_F, then `steps` times
    X <- a X + b (X X^T) X + c (X X^T)^2 X, which maps each singular value x to a x + b x^3 + c x^5 and pushes it
    towards 1 (Keller Jordan's coefficients stop near it, about 0.7 to 1.2, for speed). torch.optim.Muon runs them
    in bf16; `dtype` chooses. Returns `dtype`."""
    a, b, c = coefficients
    tall = G.size(0) > G.size(1)
    X = G.to(dtype).T if tall else G.to(dtype)             # (m, n) with m <= n: the Gram matrix is the small one
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T                                        # (m, m)
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.T if tall else X


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update with the Newton-Schulz precision a choice: Nesterov momentum, the orthogonalised
    update, decoupled weight decay, and Moonshot's scale 0.2 sqrt(max(A, B)) that matches AdamW's update size
    (adjust_lr_fn="match_rms_adamw"). torch's casts to bf16, which a CPU without bf16 instructions emulates, at 18 to
    32 times the fp32 cost where docs/SPEEDRUN.md measured it. With ns_dtype bf16 it steps exactly as torch's does;
    its state (a momentum_buffer per matrix) and group keys are torch's, so a run saved by either resumes in the other."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float = 0.95, ns_dtype=torch.bfloat16):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": True,
                                  "ns_coefficients": NEWTON_SCHULZ, "eps": 1e-7, "ns_steps": 5,
                                  "adjust_lr_fn": "match_rms_adamw"})
        self.ns_dtype = ns_dtype  # not a group key: loading a state replaces the groups with the saved ones

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        for group in self.param_groups:
            if group["adjust_lr_fn"] != "match_rms_adamw":
                raise ValueError(f"Muon scales its update as match_rms_adamw, not {group['adjust_lr_fn']!r}")
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf  # Nesterov: look one step ahead
                update = orthogonalize(update, group["ns_steps"], self.ns_dtype, group["ns_coefficients"], group["eps"])
                p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr * (0.2 * math.sqrt(max(p.shape))))


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the blocks' weight matrices and AdamW on the rest (embeddings, positions, the text
    projection, the head, norms and biases), the split of modded-nanogpt and Keller Jordan's Muon. Muon's step is
    scaled to AdamW's update size (`match_rms_adamw`), so one learning rate and one schedule serve both. To the loop
    it is one optimizer: it holds both parts' param groups (the same dicts, so setting a group's lr reaches its part),
    steps both, and saves both states."""

    def __init__(self, matrices, rest, lr: float, weight_decay: float, betas, ns_dtype=torch.bfloat16):
        self.muon = Muon(matrices, lr=lr, weight_decay=weight_decay, ns_dtype=ns_dtype)
        self.adamw = torch.optim.AdamW(rest, lr=lr, betas=betas, fused=True)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})

    @torch.no_grad()
    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
        # loading gives each part new group dicts (and Accelerate's prepare loads the state once): hold those, or the
        # loop's learning rate would land on the old dicts and both parts would train at their first lr for ever
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def muon_matrices(model) -> list:
    """(name, parameter) of the matrices Muon steps: the blocks' 2-D weights; embeddings, the text projection, the
    head, norms and biases stay on AdamW."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]


def newton_schulz_dtype(precision: str):
    """Muon's Newton-Schulz runs in the run's precision: fp32 for "no" (a CPU without bf16 would emulate bf16
    products), bf16 otherwise, as torch.optim.Muon always does."""
    return torch.float32 if precision == "no" else torch.bfloat16


def make_optimizer(model, tc, precision: str | None = None):
    """AdamW (or Adafactor) with weight decay on the matrices only: not on biases, norms or embeddings; with
    train.optimizer "muon", the blocks' matrices go to Muon instead (MuonAdamW), its Newton-Schulz in the run's
    precision (default: train.mixed_precision, resolved; newton_schulz_dtype)."""
    params = list(model.named_parameters())
    hidden = [p for _, p in muon_matrices(model)] if tc.optimizer == "muon" else []
    ids = set(map(id, hidden))
    rest = [(n, p) for n, p in params if id(p) not in ids]
    decays = [p.dim() >= 2 and "emb" not in n for n, p in rest]
    groups = [{"params": [p for (_, p), d in zip(rest, decays) if d], "weight_decay": tc.weight_decay},
              {"params": [p for (_, p), d in zip(rest, decays) if not d], "weight_decay": 0.0}]
    if hidden:
        return MuonAdamW([{"params": hidden, "weight_decay": tc.weight_decay}], groups, tc.lr, tc.weight_decay, tc.betas,
                         ns_dtype=newton_schulz_dtype(precision or resolve_precision(tc.mixed_precision)))
    if tc.optimizer == "adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(groups, lr=tc.lr, relative_step=False, scale_parameter=False, warmup_init=False)
    # fused: one kernel for all parameters instead of a dozen elementwise passes per step (CPU and CUDA alike)
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, fused=True)


def resume_state(state: dict, path, out_dir, data_key, model, optimizer, ema, fsdp: bool):
    """Load the training state into the model, optimizer, EMA and RNGs; (start, history, window, elapsed, timing)."""
    if state.get("data") != data_key:
        raise ValueError(f"cannot resume {out_dir}: it was trained on other data "
                         f"({(state.get('data') or {}).get('source', 'the shapes pool')}); pass the same --data")
    restore(model, state, "model", path)
    if not fsdp:  # FSDP's optimizer state loads onto the shards, after prepare
        restore(optimizer, state, "optimizer", path)
    if ema is not None:
        if [tuple(e.shape) for e in ema] != [tuple(getattr(s, "shape", ())) for s in state["ema"]]:
            raise CheckpointError(f"{path}: key 'ema' does not hold this model's weights; start over with --overwrite")
        for e, s in zip(ema, state["ema"]):
            e.copy_(s)
    timing = state.get("timing", dict(TIMING))
    if not isinstance(timing, dict) or not all(isinstance(timing.get(k), (int, float)) for k in TIMING_KEYS):
        raise CheckpointError(f"{path}: key 'timing' is not the timing minimuse wrote; start over with --overwrite")
    restore_rng(state["rng"], path)
    return state["step"], state["history"], state["window"], state["elapsed_s"], timing


def exporter(accelerator, raw, optimizer, fsdp: bool, cfg: Config, cls, state_path, export_dir, kept: dict, clock):
    """save(step) for the loop: what a user loads (EMA weights if enabled) and, beside it, everything needed to resume
    (`kept`: the history, config, EMA, window, data key and timing, which the loop updates in place)."""
    def save(step: int):
        accelerator.wait_for_everyone()
        weights, moments = full_state(raw, optimizer.optimizer) if fsdp else (raw.state_dict(), optimizer.state_dict())
        if not accelerator.is_main_process:
            return
        save_training_state(state_path, {
            "step": step, "model": weights, "optimizer": moments, "rng": rng_states(), "history": kept["history"],
            "config": kept["config"], "ema": kept["ema"], "window": kept["window"], "data": kept["data"],
            "elapsed_s": clock(), "timing": kept["timing"]})
        if fsdp or kept["ema"] is not None:
            shadow = cls.from_config(cfg)
            if fsdp:
                shadow.load_state_dict(weights)
            else:
                for p, e in zip(shadow.parameters(), kept["ema"]):
                    p.data.copy_(e)
            shadow.save_pretrained(export_dir, cfg)
        else:
            raw.save_pretrained(export_dir, cfg)
    return save
