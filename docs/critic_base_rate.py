"""How often the critic's label is "wrong" on its training batches, and how often the shipped critic is right.

The base rate is what a critic that always answers "right" scores; the critic must beat it to be of any use.
Usage: .venv/bin/python docs/critic_base_rate.py data/checkpoints/laptop [batches]
"""
import json
import sys
from pathlib import Path

import torch

from minimuse.critic import TokenCritic, critic_batch
from minimuse.pool import build_token_pool, text_table, train_step_inputs
from minimuse.presets import get_config
from minimuse.text_encoder import TextEncoder
from minimuse.tokenizer import Tokenizer
from minimuse.transformer import MaskedTransformer

root, batches = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20
cfg = get_config("laptop-critic", **{"data.pool_size": 4096, "data.train_seed": 777, "train.seed": 12345})  # unseen images and masks
gen = MaskedTransformer.from_pretrained(root / "transformer")
critic = TokenCritic.from_pretrained(root / "critic")
pool = build_token_pool(cfg, Tokenizer.from_pretrained(root / "tokenizer"), cfg.data.pool_size, None)
table = text_table(TextEncoder(cfg.text), pool["vocab"])
wrong = right = total = 0
with torch.inference_mode():
    for step in range(batches):
        inputs, labels, text, mask = train_step_inputs(pool, table, cfg, step, 64, gen.mask_id)
        filled, y = critic_batch(gen, inputs, labels, text, mask, torch.Generator().manual_seed(step))
        pred = (critic(filled, text, mask) > 0).float()
        wrong += int(y.sum())
        right += int((pred == y).sum())
        total += y.numel()
print(json.dumps({"tokens": total, "label_wrong_rate": round(wrong / total, 4),
                  "always_right_accuracy": round(1 - wrong / total, 4), "critic_accuracy": round(right / total, 4)}))
