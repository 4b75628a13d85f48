"""How much of a Nouns character survives a tokenizer's round trip: how many pixels per token, how many codes?

For n held-out characters (exact renders), encode and decode through the tokenizer at TOKENIZER_DIR and print one
JSON line: the share whose every part the judge of parts still finds (eval_nouns.round_trip), with its Wilson
interval, each part's share, the PSNR, and the tokenizer's training steps, batch and loss. No model drawing through
this tokenizer can score above that share.
With --snap, each decoded pixel is first replaced by the nearest colour the artwork uses (pixel art has a palette).

    .venv/bin/python docs/nouns_tokenizer.py TOKENIZER_DIR [n] [--snap]
"""
import json
import sys

import numpy as np
import torch

from minimuse.eval_nouns import round_trip
from minimuse.nouns import load
from minimuse.tokenizer import Tokenizer


def through(tok, palette=None):
    """uint8 images (n, 32, 32, 3) -> the same after tok's encode and decode; each pixel snapped to the nearest colour
    of `palette` (P, 3) if given."""
    def go(real):
        x = torch.from_numpy(real).permute(0, 3, 1, 2).float().div(255)                 # (n, 3, 32, 32)
        with torch.inference_mode():
            back = tok.decode(tok.encode(x)).clamp(0, 1).mul(255).permute(0, 2, 3, 1)   # (n, 32, 32, 3)
        if palette is not None:
            back = palette[torch.cdist(back.reshape(-1, 3), palette).argmin(1)].view(back.shape)
        return back.round().byte().numpy()
    return go


def main(tok_dir: str, n: int = 256, snap: bool = False) -> dict:
    nouns, tok = load(), Tokenizer.from_pretrained(tok_dir).eval()
    palette = np.unique(np.concatenate([nouns.colors[p][nouns.masks[p]] for p in nouns.colors]), axis=0)  # (P, 3)
    palette = torch.from_numpy(palette).float() if snap else None

    grid = list(tok.encode(torch.zeros(1, 3, 32, 32)).shape[1:])
    tc = tok.config  # how it was trained, so that a row says which run it measures
    return {"tokenizer": tok_dir, "codebook_size": tok.codebook_size, "grid": grid, "n": n, "snap": snap,
            "steps": tc.steps, "batch_size": tc.batch_size, "recon_loss": tc.recon_loss,
            **round_trip(nouns, nouns.sample(n, "heldout", seed=0), through(tok, palette))}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--snap"]
    print(json.dumps(main(args[0], int(args[1]) if len(args) > 1 else 256, "--snap" in sys.argv)))
