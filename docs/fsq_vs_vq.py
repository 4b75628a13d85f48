"""FSQ against VQ at the same code count (K = 256), data, steps and seed: train both, then eval_tokenizer each.

    OMP_NUM_THREADS=1 python docs/fsq_vs_vq.py [STEPS] > docs/results/fsq_vs_vq.jsonl

The laptop tokenizer preset with `tokenizer.steps` = STEPS (default 1000, a shortened schedule so both fit in
minutes); FSQ uses levels (4, 4, 4, 4) = 256 codes, VQ 256 l2-normalized codes of dimension 32.
"""
import json
import sys
import tempfile
import time

from minimuse.presets import get_config
from minimuse.measures import eval_tokenizer
from minimuse.train_tokenizer import train_tokenizer

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
for quantizer in ("vq", "fsq"):
    cfg = get_config("laptop", **{"tokenizer.quantizer": quantizer, "tokenizer.steps": steps, "tokenizer.ckpt_every": steps})
    out = tempfile.mkdtemp(prefix=f"{quantizer}_")
    t = time.time()
    train_tokenizer(cfg, out)
    seconds = time.time() - t
    m = eval_tokenizer(out, n=1000)
    print(json.dumps({"quantizer": quantizer, "codes": cfg.tokenizer.codebook_size, "steps": steps,
                      "batch": cfg.tokenizer.batch_size, "train_seconds": round(seconds, 1), **m}), flush=True)
