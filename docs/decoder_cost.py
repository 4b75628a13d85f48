"""ms per image to decode 16x16 tokens to 64 px: the tokenizer's own decoder against the finetuned one (Muse §2.5),
timed interleaved in one process, median of 7 rounds, 2 threads. `minimuse bench` times the transformers only.

    .venv/bin/python docs/decoder_cost.py
"""
import statistics
import time

import torch

from minimuse.pipeline import DEFAULT_CHECKPOINT
from minimuse.tokenizer import Tokenizer

torch.set_num_threads(2)
decoders = {d: Tokenizer.from_pretrained(DEFAULT_CHECKPOINT / d).eval() for d in ("superres_tokenizer", "superres_decoder")}
for B in (1, 16):
    ids = torch.randint(0, 256, (B, 16, 16), generator=torch.Generator().manual_seed(0))
    times = {d: [] for d in decoders}
    with torch.inference_mode():
        for d, tok in decoders.items():
            tok.decode(ids)  # warm-up
        for _ in range(7):
            for d, tok in decoders.items():
                t = time.perf_counter()
                tok.decode(ids)
                times[d].append(1000 * (time.perf_counter() - t) / B)
    print(f"batch {B}: " + ", ".join(f"{d} {statistics.median(v):.2f} ms/image (range {min(v):.2f}-{max(v):.2f})"
                                     for d, v in times.items()))
