"""The training loop, written in notebook 05: one masked-token step after another, with AdamW, a warmup and a cosine
decay of the learning rate, and gradient clipping. The batches are minimuse's (train_step_inputs, a pure function
of the seed and the step), so this loop and `minimuse train` see the same data. It leaves out logging, checkpoints,
the EMA, Accelerate, bf16 autocast and the other optimizers and schedules: it repeats `minimuse train` step for step
where the config asks for none of them (train.optimizer "adamw", lr_schedule "cosine", mixed_precision "no",
grad_accum 1, ema_decay 0). Notebook 07 trains the super-res stage with it too."""
import math

import torch
from minimuse.pool import train_step_inputs

from mymuse.masking import masked_ce


def lr_at(step, peak, warmup, total, min_ratio=0.0):
    """Linear warmup to `peak` over `warmup` steps, then a cosine decay to peak * min_ratio at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    left = 0.5 * (1 + math.cos(math.pi * progress))     # the share of the way from the floor to the peak
    return peak * (min_ratio + (1 - min_ratio) * left)


def adamw(model, tc):
    """AdamW with weight decay on the weight matrices only: biases, norms and embeddings are not pulled to 0."""
    named = list(model.named_parameters())
    decays = [p.dim() >= 2 and "emb" not in n for n, p in named]
    groups = [{"params": [p for (_, p), d in zip(named, decays) if d], "weight_decay": tc.weight_decay},
              {"params": [p for (_, p), d in zip(named, decays) if not d], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, fused=True)  # fused: one kernel for every parameter


def my_train(model, cfg, pool, table, steps):
    """Train `model` for `steps` steps on the token pool and text table; return the loss and masked accuracy of each."""
    tc, device = cfg.train, next(model.parameters()).device
    opt = adamw(model, tc)
    losses, accs = [], []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc.lr, tc.warmup_steps, steps, tc.min_lr_ratio)
        batch = train_step_inputs(pool, table, cfg, step, tc.batch_size, model.mask_id)  # masked inputs, labels, text
        inputs, labels, text, text_mask, *lowres = (x.to(device) for x in batch)  # drawn on the CPU, moved to the model
        model.train()
        extra = {"lowres_ids": lowres[0]} if lowres else {}              # a super-res batch adds the low-res grid (07)
        logits = model(inputs, text, text_mask, **extra)                 # (B, L, K)
        loss = masked_ce(logits, labels, tc.label_smoothing)             # only where labels != -100
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        hidden = labels != -100
        losses.append(loss.item())
        accs.append((logits.argmax(-1)[hidden] == labels[hidden]).float().mean().item())
    return losses, accs
