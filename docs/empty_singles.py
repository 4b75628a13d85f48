"""Why a single shape comes out empty: trace the sampler step by step on held-out single-shape prompts.

A token counts as background when, in the images the judge passes, the 4x4 pixels it decodes to never hold an object
pixel in more than 20% of its uses (judge.find_objects' threshold of 32). Before each step the model's conditional
probability that a masked position is an object token, p(obj), is read from one extra forward pass on the grid the
sampler held then. For each image the script reports whether the judge passed it, how many object tokens it holds,
the highest p(obj) over its masked positions at any step and at the last step, and the step at which the first
object token was committed.

Usage: .venv/bin/python docs/empty_singles.py CHECKPOINT SEED N [--sampler remask --remask-prob 0.35] > out.json
"""
import argparse
import collections
import json

import numpy as np
import torch

from minimuse.data import eval_prompts
from minimuse.judge import score
from minimuse.pipeline import load_pipeline

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint"), ap.add_argument("seed", type=int), ap.add_argument("n", type=int)
ap.add_argument("--sampler", default=None), ap.add_argument("--remask-prob", type=float, default=None)
args = ap.parse_args()

pipe = load_pipeline(args.checkpoint, device="cpu", superres=False)
prompts = eval_prompts(args.n, seed=args.seed, kinds=["single"])
captions = [c for c, _, _ in prompts]
images, hist = pipe(captions, seed=args.seed, superres=False, return_history=True, sampler=args.sampler,
                    remask_prob=args.remask_prob)                                    # (B, H, W, 3), one dict per step
ok = torch.tensor([score(im, spec)[0] for im, (_, spec, _) in zip(images, prompts)])
B, (h, w), mask_id = len(captions), pipe.transformer.grid, pipe.transformer.mask_id
final = hist[-1]["ids"].view(B, -1)                                                  # (B, L)

# background tokens, from the passed images: a token whose patches hold an object pixel in < 20% of its uses
p = images.shape[1] // h
patch_obj = torch.from_numpy(images.reshape(B, h, p, w, p, 3).max(axis=(2, 4, 5)) > 32).view(B, -1)  # (B, L)
uses = collections.defaultdict(list)
for tok, o in zip(final[ok].flatten().tolist(), patch_obj[ok].flatten().tolist()):
    uses[tok].append(o)
background = torch.tensor(sorted(t for t, v in uses.items() if np.mean(v) < 0.2))

text_emb, text_mask = pipe.text_encoder(captions)
ctx = pipe.transformer.encode_text(text_emb, text_mask)
grid = torch.full_like(final, mask_id)                                               # the grid before step 0
peak, last, first_obj = torch.zeros(B), torch.zeros(B), torch.full((B,), -1)
for t, step in enumerate(hist):
    with torch.inference_mode():
        p_obj = 1 - pipe.transformer(grid, ctx=ctx).float().softmax(-1)[..., background].sum(-1)  # (B, L)
    masked = grid == mask_id
    top = torch.where(masked, p_obj, torch.zeros_like(p_obj)).max(1).values          # (B,)
    peak, last = torch.maximum(peak, top), top
    after = step["ids"].view(B, -1)
    new_obj = ((after != mask_id) & masked & ~torch.isin(after, background)).any(1)
    first_obj = torch.where((first_obj < 0) & new_obj, torch.full_like(first_obj, t), first_obj)
    grid = after

obj_tokens = (~torch.isin(final, background)).sum(1)
rows = [{"caption": c, "ok": bool(ok[i]), "object_tokens": int(obj_tokens[i]), "peak_p_obj": round(float(peak[i]), 3),
         "last_step_p_obj": round(float(last[i]), 3), "first_object_commit_step": int(first_obj[i])}
        for i, c in enumerate(captions)]
failed = [r for r in rows if not r["ok"]]
summary = {"checkpoint": args.checkpoint, "seed": args.seed, "n": B, "settings": {"sampler": args.sampler or "default",
           "remask_prob": args.remask_prob}, "steps": len(hist), "background_tokens": len(background),
           "passed": int(ok.sum()), "failed": len(failed),
           "failed_with_no_object_token": sum(r["object_tokens"] == 0 for r in failed),
           "median_peak_p_obj_failed": float(np.median([r["peak_p_obj"] for r in failed])) if failed else None,
           "median_last_step_p_obj_failed": float(np.median([r["last_step_p_obj"] for r in failed])) if failed else None,
           "median_first_object_commit_step_passed": float(np.median([r["first_object_commit_step"] for r in rows if r["ok"]])),
           "images": rows}
print(json.dumps(summary, indent=1))
