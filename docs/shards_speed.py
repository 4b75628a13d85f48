"""Issue 14's two speed targets, measured on this machine (docs/REAL_DATA.md):

1. `minimuse pretokenize` on a 50,000-image shapes image folder, end to end (the `datasets` image-folder scan, the
   PNG decoding, the tokenizer, the Arrow shards, the caption table), in images per second.
2. One laptop training step from shards against one from pixels, interleaved in one process (median of N each).
   From shards: the step's batch is indexed out of the token pool and the caption table (pool.train_step_inputs).
   From pixels: what a loop without shards does each step: decode and crop the batch's PNGs, run the tokenizer on
   them and the text encoder on their captions, then the same forward, backward and optimizer step. Both steps run
   at the laptop preset's precision (train.mixed_precision "auto": bf16 autocast on a CPU with bf16, as it trains).

    .venv/bin/python docs/shards_speed.py [N_IMAGES] [OUT_JSON] [fp32|bf16]
    # defaults: 50000, docs/results/data/shards_speed.json, the laptop preset's precision
Run it alone: another job on the same 2 cores halves both numbers.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from minimuse.checkpoint import atomic_write_json  # noqa: E402
from minimuse.presets import get_config  # noqa: E402
from minimuse.hfdata import ImageTextDataset, write_imagefolder  # noqa: E402
from minimuse.pool import train_step_inputs  # noqa: E402
from minimuse.runs import resolve_precision  # noqa: E402
from minimuse.scheduler import add_noise, make_labels, masked_ce, random_mask  # noqa: E402
from minimuse.shards import load_shards  # noqa: E402
from minimuse.text_encoder import TextEncoder  # noqa: E402
from minimuse.tokenizer import Tokenizer  # noqa: E402
from minimuse.transformer import MaskedTransformer  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "results" / "data" / "shards_speed.json"
TOK = ROOT / "data" / "checkpoints" / "laptop" / "tokenizer"
REPEATS = 15
PRECISION = {"fp32": "no", "bf16": "bf16"}[sys.argv[3]] if len(sys.argv) > 3 else None  # default: the preset's

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    t = time.time()
    write_imagefolder(tmp / "shapes", "shapes", n=N, size=32)
    write_s = time.time() - t
    cmd = [str(ROOT / ".venv" / "bin" / "minimuse"), "pretokenize", "--preset", "laptop", "--data", str(tmp / "shapes"),
           "--tokenizer", str(TOK), "--out", str(tmp / "shards")]
    t = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
                                                                    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                                                                    "HF_DATASETS_CACHE": str(tmp / "hf_cache"),
                                                                    })
    pretok_s = time.time() - t
    assert run.returncode == 0, run.stderr[-2000:]
    print(run.stdout.strip())
    print(f"pretokenize: {N} images in {pretok_s:.1f} s = {N / pretok_s:.0f} images/s (writing them took {write_s:.0f} s)")

    # ------------------------------------------------------------------------------------ one step, two data paths
    cfg = get_config("laptop")
    tok, enc = Tokenizer.from_pretrained(TOK, cfg), TextEncoder(cfg.text)
    pool, table = load_shards(tmp / "shards", tok, enc)
    images = ImageTextDataset(tmp / "shapes", size=32)
    model = MaskedTransformer.from_config(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    B, L = cfg.train.batch_size, cfg.num_tokens

    precision = PRECISION or resolve_precision(cfg.train.mixed_precision)  # the preset's: bf16 where the CPU has it

    def step(inputs, labels, text, mask):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = masked_ce(model(inputs, text, mask), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def from_shards(s):
        inputs, labels, text, mask = train_step_inputs(pool, table, cfg, s, B, model.mask_id)
        step(inputs, labels, text, mask)

    def from_pixels(s):
        g = torch.Generator().manual_seed(s)
        rows = torch.randint(0, N, (B,), generator=g).tolist()
        items = [images[r] for r in rows]
        with torch.inference_mode():
            ids = tok.encode(torch.stack([it["image"] for it in items])).flatten(1)  # (B, L)
        enc._cache.clear()  # from pixels means from text too: no caption is encoded ahead
        text, mask = enc([it["caption"] for it in items])
        m = random_mask(B, cfg.grid, g)
        step(add_noise(ids, m, model.mask_id), make_labels(ids, m), text, mask)

    times = {"shards": [], "pixels": []}
    for s in range(3):  # warm-up: allocator, oneDNN kernels, the encoders' first batches
        from_shards(s), from_pixels(s)
    for s in range(REPEATS):
        for name, fn in (("shards", from_shards), ("pixels", from_pixels)):
            t = time.perf_counter()
            fn(100 + s)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"laptop step, batch {B}, {precision}: from shards {med['shards'] * 1e3:.0f} ms, from pixels {med['pixels'] * 1e3:.0f} ms "
          f"= {med['pixels'] / med['shards']:.2f}x (median of {REPEATS}, interleaved)")
    atomic_write_json(OUT, {
        "command": " ".join(["python docs/shards_speed.py", *sys.argv[1:]]), "threads": torch.get_num_threads(),
        "pretokenize": {"images": N, "seconds": round(pretok_s, 1), "images_per_s": round(N / pretok_s, 1)},
        "step_ms": {k: {"median": round(med[k] * 1e3, 1), "min": round(min(v) * 1e3, 1), "max": round(max(v) * 1e3, 1),
                        "n": len(v)} for k, v in times.items()},
        "pixels_over_shards": round(med["pixels"] / med["shards"], 2), "batch": B, "precision": precision})
