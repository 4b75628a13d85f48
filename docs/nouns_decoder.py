"""Decoder finetuning (Muse §2.5) of the shipped Nouns tokenizer: the encoder and codebook stay frozen, so every image
keeps its tokens and the shipped transformer needs no retraining; only the decoder trains, on the reconstruction loss
of the tokenizer's config, from the shipped decoder's weights.

Prints one JSON line: the tokenizer's ceiling (eval_nouns.round_trip on n held-out characters) before and after, and,
with --eval, the shipped transformer's eval_nouns (n held-out captions, the same seeds) drawn through the shipped and
through the finetuned decoder: a paired comparison, since only the decoder differs.

    .venv/bin/python docs/nouns_decoder.py [steps] [n] [--eval] > docs/results/nouns/nouns_decoder.json
"""
import copy
import json
import math
import sys
import time

import numpy as np
import torch

import minimuse
from minimuse.eval_nouns import eval_nouns, round_trip
from minimuse.nouns import load
from nouns_tokenizer import through  # docs/nouns_tokenizer.py: the same round trip

SHIPPED = "data/checkpoints/nouns"
LR, BATCH, WARMUP, SEED = 5e-4, 16, 100, 0      # Adam (0.9, 0.99) as the tokenizer; a linear warmup times a cosine decay


def ceiling(nouns, tok, held) -> dict:
    return round_trip(nouns, held, through(tok))


def finetune(nouns, tok, steps: int) -> list[float]:
    torch.manual_seed(SEED)
    tok.eval()                                    # no EMA codebook update, no dead-code restart: the tokens stay
    for p in tok.parameters():
        p.requires_grad_(False)
    params = list(tok.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.99))
    pool, rng, losses = nouns.sample(20_000, "train", seed=0), np.random.default_rng(SEED), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = LR * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / steps))
        batch = np.stack([nouns.render(pool[i]) for i in rng.integers(0, len(pool), BATCH)])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)               # (B, 3, 32, 32)
        with torch.no_grad():
            codes = tok.quantizer.lookup(tok.encode(x))                                # the frozen tokens' codes
        err = (tok.decoder(codes) + 1) / 2 - x
        loss = err.abs().mean() if tok.config.recon_loss == "l1" else err.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main(steps: int = 1500, n: int = 256, with_eval: bool = False) -> dict:
    torch.set_num_threads(2)
    nouns, pipe = load(), minimuse.load_pipeline(SHIPPED)
    held = nouns.sample(n, "heldout", seed=0)
    real = torch.from_numpy(np.stack([nouns.render(c) for c in held])).permute(0, 3, 1, 2).float().div(255)
    tok = copy.deepcopy(pipe.tokenizer)
    before = ceiling(nouns, tok, held)
    start = time.perf_counter()
    losses = finetune(nouns, tok, steps)
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        assert torch.equal(tok.encode(real), pipe.tokenizer.encode(real)), "the tokens changed"
    row = {"checkpoint": SHIPPED, "steps": steps, "batch_size": BATCH, "lr": LR, "seconds": round(seconds, 1),
           "first_loss": round(float(np.mean(losses[:50])), 5), "last_loss": round(float(np.mean(losses[-50:])), 5),
           "ceiling_before": before, "ceiling_after": ceiling(nouns, tok, held)}
    if with_eval:
        row["eval_shipped_decoder"] = eval_nouns(pipe, n=n, nouns=nouns)
        pipe.tokenizer = tok.eval()
        row["eval_finetuned_decoder"] = eval_nouns(pipe, n=n, nouns=nouns)
    return row


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--eval"]
    print(json.dumps(main(*(int(a) for a in args), with_eval="--eval" in sys.argv)))
