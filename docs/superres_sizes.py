"""Time one training step of candidate super-res sizes, interleaved in one process (docs/SUPERRES.md).

Usage: python docs/superres_sizes.py [BATCH]   (default 32). bf16 autocast, random inputs; prints the median of the
repetitions after the first. Run it alone: a training beside it halves every figure.
"""
import dataclasses
import sys
import time

import torch

from minimuse.presets import get_config
from minimuse.superres import SuperResTransformer
from minimuse.runs import keep_freed_memory
from minimuse.scheduler import masked_ce
keep_freed_memory()
torch.manual_seed(0)
base = get_config("laptop")
res = {}
cands = {"w128d4e2": (128, 4, 2), "w128d6e2": (128, 6, 2), "w192d4e2": (192, 4, 2), "w128d4e4": (128, 4, 4), "w96d4e2": (96,4,2)}
B = int(sys.argv[1]) if len(sys.argv) > 1 else 32
models = {}
for name, (w, d, e) in cands.items():
    sr = dataclasses.replace(base.superres, transformer=dataclasses.replace(base.superres.transformer, width=w, depth=d, heads=4), lowres_depth=e)
    cfg = dataclasses.replace(base, superres=sr)
    m = SuperResTransformer.from_config(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
    models[name] = (m, opt)
ids = torch.randint(0, 256, (B, 16, 16)); lo = torch.randint(0, 256, (B, 8, 8))
labels = torch.where(torch.rand(B, 256) < 0.5, ids.flatten(1), -100)
text = torch.randn(B, 12, 384); tm = torch.ones(B, 12, dtype=torch.bool)
times = {k: [] for k in cands}
for rep in range(6):
    for name, (m, opt) in models.items():
        t = time.perf_counter()
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = masked_ce(m(ids, text, tm, lowres_ids=lo), labels, 0.1)
            opt.zero_grad(); loss.backward(); opt.step()
        times[name].append((time.perf_counter() - t) / 3)
for name in cands:
    ts = sorted(times[name][1:])
    print(name, models[name][0].num_params(), f"median {1000*ts[len(ts)//2]:.0f} ms/step at B={B}")
