"""How much of a Nouns character survives a tokenizer's round trip: how many pixels per token, how many codes?

For n held-out characters (exact renders), encode and decode through the tokenizer at TOKENIZER_DIR and print one
JSON line: the share whose every part the judge of parts still finds (eval_nouns.round_trip), with its Wilson
interval, each part's share, and the PSNR. No model drawing through this tokenizer can score above that share.

    .venv/bin/python docs/nouns_tokenizer.py TOKENIZER_DIR [n]
"""
import json
import sys

import torch

from minimuse.eval_nouns import round_trip
from minimuse.nouns import load
from minimuse.tokenizer import Tokenizer


def main(tok_dir: str, n: int = 256) -> dict:
    nouns, tok = load(), Tokenizer.from_pretrained(tok_dir).eval()

    def through(real):  # (n, 32, 32, 3) uint8 -> the same, after encode and decode
        x = torch.from_numpy(real).permute(0, 3, 1, 2).float().div(255)                 # (n, 3, 32, 32)
        with torch.inference_mode():
            back = tok.decode(tok.encode(x)).clamp(0, 1)
        return back.mul(255).round().byte().permute(0, 2, 3, 1).numpy()

    grid = list(tok.encode(torch.zeros(1, 3, 32, 32)).shape[1:])
    return {"tokenizer": tok_dir, "codebook_size": tok.codebook_size, "grid": grid, "n": n,
            **round_trip(nouns, nouns.sample(n, "heldout", seed=0), through)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 256)))
