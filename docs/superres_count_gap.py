"""The cascade's count gap at a larger n (docs/SUPERRES.md): base against cascade on held-out count prompts, with the
super-res stage's sampling settings varied. The base stage draws the same tokens in every row (same seeds).

    .venv/bin/python docs/superres_count_gap.py 256 docs/results/superres/cpu/count_gap.json [CASCADE_DIR]

CASCADE_DIR (default: the shipped data/checkpoints/laptop) is any cascade checkpoint, e.g. a copy of the shipped one
whose superres/ is replaced by a new train-superres run's.
"""
import dataclasses
import sys
import time

import torch

import minimuse
from minimuse.checkpoint import atomic_write_json
from minimuse.measures import faithfulness_at

n, out_path = int(sys.argv[1]), sys.argv[2]
pipe = minimuse.load_pipeline(sys.argv[3] if len(sys.argv) > 3 else "data/checkpoints/laptop", device="cpu")
out = {"n_per_kind": n}
with torch.inference_mode():
    t = time.time()
    out["base"] = faithfulness_at(pipe, n, None, ("count",), 128, (None,), superres=False)[0]
    print("base", out["base"]["by_kind"], out["base"]["by_count"], round(time.time() - t), "s", flush=True)
    cfg0 = pipe.config
    for name, kw in [("default", {}), ("sr_guidance_1", {"guidance_scale": 1.0}), ("sr_16_steps", {"num_steps": 16})]:
        sr = dataclasses.replace(cfg0.superres, sample=dataclasses.replace(cfg0.superres.sample, **kw))
        pipe.config = dataclasses.replace(cfg0, superres=sr)
        t = time.time()
        at_64, at_32 = faithfulness_at(pipe, n, None, ("count",), 128, (None, cfg0.data.image_size), superres=True)
        out[name] = {"superres_settings": kw, "at_64": at_64, "at_32": at_32}
        print(name, "64 px", at_64["by_kind"], at_64["by_count"], "| at 32 px", at_32["by_kind"], round(time.time() - t), "s",
              flush=True)
atomic_write_json(out_path, out)
