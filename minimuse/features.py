"""The FID feature network of the shapes world: a small CNN trained to read a scene's attributes, whose penultimate
layer is the feature space FID and diversity are measured in (`minimuse train-features`, metrics.fid).

FID (Heusel et al. 2017) compares the Gaussian statistics of two image sets in a network's feature space. Muse reports
it with InceptionV3, whose ImageNet features know nothing of 32 px flat shapes on black and whose weights are not
here offline. So the features come from a network trained on real renders to predict what a scene holds: how many
objects (1-4), which colours and which shapes are present. Its feature map keeps its 4x4 layout before the last
projection, so where things are still counts. A feature net is only an FID once it is validated: docs/FID.md shows
FID against real renders rising with six corruptions at three strengths (`docs/fid_validation.py`).
Trained as a `Stage` of the one loop (loop.py) with the shared run machinery (runs.py): atomic, pickle-free
checkpoints and exact resume.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import atomic_write_json, load_checkpoint, load_state_strict, save_checkpoint
from .data import ShapesDataset, collate
from .locks import releasing
from .loop import Clock, Schedule, Stage, run_loop
from .runs import (LOG_NAME, STATE_KEYS, STATE_NAME, JsonlLogger, _saved, batch_indices, load_training_state,
                   make_accelerator, prepare_run_dir, restore, restore_rng, rng_states, save_training_state,
                   seed_everything)

COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")
SHAPE_NAMES = ("circle", "square", "triangle")
ARCH = {"width": 32, "num_features": 128, "image_size": 32}


@dataclass(frozen=True)
class FeaturesTrain:
    """How `minimuse train-features` trains the net (AdamW, weight decay 0.01, cosine to 5% of lr); a run's training
    state keeps these as a dict, and a resume with other values is refused."""
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500


TRAIN = FeaturesTrain()


def targets(specs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count class (B,) in 0..3 for 1..4 objects, colours present (B, 6), shapes present (B, 3)) of data.Spec's."""
    count = torch.tensor([sum(n for n, _, _ in s.objects) - 1 for s in specs])
    colors = torch.tensor([[float(any(o[1] == c for o in s.objects)) for c in COLORS] for s in specs])
    shapes = torch.tensor([[float(any(o[2] == k for o in s.objects)) for k in SHAPE_NAMES] for s in specs])
    return count, colors, shapes


class ShapesFeatures(nn.Module):
    """images float (B, 3, S, S) in [0, 1] -> features (B, num_features); `heads` reads the attributes from them.
    `num_features` is what torchmetrics' FrechetInceptionDistance asks a custom feature network for."""

    def __init__(self, width: int = 32, num_features: int = 128, image_size: int = 32):
        super().__init__()
        self.num_features, self.image_size = num_features, image_size
        w = width
        self.convs = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),       # S/2
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(),   # S/4
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4))                                      # 4x4: keeps where things are
        self.proj = nn.Linear(4 * w * 16, num_features)
        self.count_head = nn.Linear(num_features, 4)
        self.attr_head = nn.Linear(num_features, len(COLORS) + len(SHAPE_NAMES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"expected images (B, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}")
        h = self.convs(images.float() * 2 - 1)  # (B, 4w, 4, 4)
        return F.gelu(self.proj(h.flatten(1)))  # (B, 4w*16) -> (B, num_features)

    def heads(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.attr_head(feats)  # (B, 9)
        return self.count_head(feats), a[:, :len(COLORS)], a[:, len(COLORS):]

    def config(self) -> dict:
        return {"width": self.convs[0].out_channels, "num_features": self.num_features, "image_size": self.image_size}

    def save_pretrained(self, out_dir, extra: dict | None = None):
        return save_checkpoint(out_dir, "features", self.config(), self.state_dict(), extra=extra)

    @classmethod
    def from_pretrained(cls, ckpt_dir) -> "ShapesFeatures":
        meta, state = load_checkpoint(ckpt_dir, "features")
        model = cls(**meta["config"])
        load_state_strict(model, state, ckpt_dir)
        model.held_out = meta.get("held_out")  # its accuracy on held-out renders, measured by train_features
        return model.eval().requires_grad_(False)


def loss_and_accuracy(model: ShapesFeatures, images, specs) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on the count, binary cross-entropy on each colour and shape; accuracies per attribute group,
    and `accuracy`: the share of all 10 attributes (count, 6 colours, 3 shapes) read right."""
    count, colors, shapes = (t.to(images.device) for t in targets(specs))
    c_logits, col_logits, sh_logits = model.heads(model(images))
    loss = (F.cross_entropy(c_logits, count) + F.binary_cross_entropy_with_logits(col_logits, colors)
            + F.binary_cross_entropy_with_logits(sh_logits, shapes))
    right = torch.cat([(c_logits.argmax(-1) == count)[:, None], (col_logits > 0) == colors.bool(),
                       (sh_logits > 0) == shapes.bool()], 1).float()  # (B, 10)
    return loss, {"accuracy": right.mean().item(), "count_acc": right[:, 0].mean().item(),
                  "all_right": right.all(1).float().mean().item()}


@releasing  # the lock prepare_run_dir takes on out_dir is held until training returns or fails
def train_features(cfg, out_dir, resume: bool = False, overwrite: bool = False, steps: int | None = None) -> list[dict]:
    """`minimuse train-features`: train ShapesFeatures on real renders of stream cfg.data.train_seed at the base size
    (step s reads images [s*B, (s+1)*B)), then measure it on 1,000 held-out renders (cfg.data.eval_seed), written to
    out_dir/eval.json and into its config.json."""
    tc = dataclasses.replace(TRAIN, steps=steps) if steps else TRAIN
    accelerator = make_accelerator(cfg, "no")
    out = prepare_run_dir(out_dir, STATE_NAME, ("model.safetensors",), resume, overwrite, accelerator)
    seed_everything(tc.seed)
    model = ShapesFeatures(ARCH["width"], ARCH["num_features"], cfg.data.image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=0.01)
    start, history, elapsed = 0, [], 0.0
    if resume:
        path = out / STATE_NAME
        state = load_training_state(path, {**STATE_KEYS, "train": dict})
        if _saved(state) != cfg.to_dict() or state["train"] != dataclasses.asdict(tc):
            raise ValueError(f"cannot resume {out}: it was trained with another config; use a new --out")
        restore(model, state, "model", path)
        restore(opt, state, "optimizer", path)
        start, history, elapsed = state["step"], state["history"], state["elapsed_s"]
        restore_rng(state["rng"], path)
    data = ShapesDataset(cfg.data.image_size, cfg.data.train_seed, tc.steps * tc.batch_size)
    logger = JsonlLogger(out / LOG_NAME, resume_step=start if resume else None)
    clock = Clock(elapsed)
    now = {}  # the step's accuracies, for its log line

    def losses(step: int):
        batch = collate([data[i] for i in batch_indices(step, tc.batch_size)])  # image (B, 3, S, S)
        model.train()
        loss, now["acc"] = loss_and_accuracy(model, batch["image"], batch["spec"])
        now["loss"] = loss
        yield loss

    def after(step: int, lr: float) -> dict:
        return {"step": step + 1, "loss": now["loss"].item(), **now["acc"]}

    def log(step: int, lr: float, record: dict) -> dict:
        return {**record, "elapsed_s": round(clock(), 1)}

    def save(step: int):
        save_training_state(out / STATE_NAME, {"step": step, "model": model.state_dict(), "train": dataclasses.asdict(tc),
                                               "optimizer": opt.state_dict(), "rng": rng_states(), "history": history,
                                               "config": cfg.to_dict(), "elapsed_s": clock()})
        model.save_pretrained(out)

    sched = Schedule(tc.steps, tc.lr, tc.warmup_steps, 0.05, tc.log_every, tc.ckpt_every)
    run_loop(Stage(losses, after, log, save), sched, start, opt, accelerator, model, history, logger, "features",
             "Lower features.TRAIN.lr and retrain, or --resume.", out)
    held = collate([ShapesDataset(cfg.data.image_size, cfg.data.eval_seed, 1000)[i] for i in range(1000)])
    model.eval()
    with torch.no_grad():
        _, acc = loss_and_accuracy(model, held["image"], held["spec"])
    result = {"n": 1000, "seed": cfg.data.eval_seed, **{k: round(v, 4) for k, v in acc.items()}}
    atomic_write_json(out / "eval.json", result)
    model.save_pretrained(out, extra={"held_out": result})
    return history
