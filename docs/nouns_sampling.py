"""Choose the Nouns model's sampling defaults on a selection set, apart from the characters it is reported on.

    .venv/bin/python docs/nouns_sampling.py 256 > docs/results/nouns/nouns_sampling.jsonl

`minimuse eval --task nouns` reports on the held-out characters of seed 0; this sweep draws n other held-out
characters (seed 1: another sample of the same split, and other sampler seeds) at each setting below and prints one
JSON line per setting: the setting, each part's accuracy and all five right (eval_nouns, Wilson intervals). Every
setting sees the same captions and seeds, so differences come from the setting alone. docs/NOUNS.md reports it.
"""
import json
import sys
import time

import torch

import minimuse
from minimuse.eval_nouns import eval_nouns
from minimuse.nouns import load

SHIPPED = "data/checkpoints/nouns"
SELECTION_SEED = 1
SETTINGS = [
    ("shipped: guidance 1", {}),
    ("guidance 0", dict(guidance_scale=0.0)),
    ("guidance 0.5", dict(guidance_scale=0.5)),
    ("guidance 2", dict(guidance_scale=2.0)),
    ("guidance 3", dict(guidance_scale=3.0)),
    ("guidance 3 ramp (Muse)", dict(guidance_scale=3.0, guidance_schedule="linear")),
    ("choice temperature 0.5", dict(choice_temperature=0.5)),
    ("choice temperature 2", dict(choice_temperature=2.0)),
    ("temperature 0.7", dict(temperature=0.7)),
    # a second round around the best of the first
    ("temperature 0.5", dict(temperature=0.5)),
    ("temperature 0.3", dict(temperature=0.3)),
    ("temperature 0 (greedy tokens)", dict(temperature=0.0)),
    ("temperature 0.7, guidance 0.5", dict(temperature=0.7, guidance_scale=0.5)),
    ("temperature 0.5, guidance 0.5", dict(temperature=0.5, guidance_scale=0.5)),
]


def main(n: int = 256, names: list[str] | None = None) -> None:
    torch.set_num_threads(2)
    nouns, pipe = load(), minimuse.load_pipeline(SHIPPED)
    for name, setting in SETTINGS:
        if names and name not in names:
            continue
        start = time.perf_counter()
        row = eval_nouns(pipe, n=n, seed=SELECTION_SEED, nouns=nouns, **setting)
        row.pop("tokenizer_ceiling")  # the same for every setting
        print(json.dumps({"setting": name, **setting, "seconds": round(time.perf_counter() - start, 1), **row}),
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256, sys.argv[2:] or None)
