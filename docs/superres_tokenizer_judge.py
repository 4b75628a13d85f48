"""Is the judge's verdict kept through a tokenizer's round trip? True held-out renders, encoded and decoded, judged
against their specs: the ceiling any model on those tokens has (docs/SUPERRES.md, the count gap).

    .venv/bin/python docs/superres_tokenizer_judge.py 256 docs/results/superres/cpu/tokenizer_judge.json
"""
import json
import sys

import numpy as np
import torch

from minimuse.data import make_sample, to_tensor
from minimuse.judge import score
from minimuse.pipeline import DEFAULT_CHECKPOINT
from minimuse.tokenizer import Tokenizer
from minimuse.viz import to_uint8

n, out_path = int(sys.argv[1]), sys.argv[2]
out = {"n_per_kind": n}
for size, name in [(32, "tokenizer"), (64, "superres_tokenizer"), (64, "superres_decoder")]:
    if not (DEFAULT_CHECKPOINT / name).is_dir():
        continue
    tok = Tokenizer.from_pretrained(DEFAULT_CHECKPOINT / name)
    out[name] = {}
    for kind in ("count", "pair", "mixed"):
        samples = [make_sample(10_000, i, size, (kind,)) for i in range(n)]
        images = np.stack([s["image"] for s in samples])                      # (n, S, S, 3)
        with torch.no_grad():
            trip = to_uint8(tok.decode(tok.encode(torch.stack([to_tensor(a) for a in images]))))
        out[name][kind] = {"true_render": float(np.mean([score(a, s["spec"])[0] for a, s in zip(images, samples)])),
                           "round_trip": float(np.mean([score(a, s["spec"])[0] for a, s in zip(trip, samples)]))}
    print(size, name, out[name], flush=True)
with open(out_path, "w") as f:
    json.dump(out, f, indent=1)
