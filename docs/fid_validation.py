"""Validate the shapes FID (features.py) the way a domain FID must be: against real renders, FID must rise with
every corruption as it gets stronger (docs/FID.md).

    .venv/bin/python docs/fid_validation.py [FEATURES_DIR] [N]     # defaults: data/checkpoints/features, 2000

Set A: N real renders of the held-out stream (eval seed 10,000). Set B: N real renders of another stream (seed
20,000), the "model" whose FID against A is the floor, then corrupted six ways at three strengths: Gaussian blur,
Gaussian noise, a colour shift (each channel mixed with the next), occlusion by a grey square, a spatial shift
(zero-filled), and token dropout through the shipped tokenizer (that share of tokens replaced by random codes, then
decoded). Writes docs/results/fid/validation.json and docs/fid_validation.png.
"""
import io
import math
import sys
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from minimuse.checkpoint import atomic_write_bytes, atomic_write_json  # noqa: E402
from minimuse.data import make_sample, to_tensor  # noqa: E402
from minimuse.metrics import fid  # noqa: E402
from minimuse.features import ShapesFeatures  # noqa: E402
from minimuse.tokenizer import Tokenizer  # noqa: E402

FEATS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "checkpoints" / "features"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
net = ShapesFeatures.from_pretrained(FEATS)
tok = Tokenizer.from_pretrained(ROOT / "data" / "checkpoints" / "laptop" / "tokenizer")
A = torch.stack([to_tensor(make_sample(10_000, i, 32)["image"]) for i in range(N)])  # (N, 3, 32, 32)
B = torch.stack([to_tensor(make_sample(20_000, i, 32)["image"]) for i in range(N)])
g = torch.Generator().manual_seed(0)


def blur(x, s):
    k = 2 * math.ceil(3 * s) + 1
    return TF.gaussian_blur(x, [k, k], [s, s])


def noise(x, s):
    return (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)


def color(x, a):
    return (1 - a) * x + a * x[:, [1, 2, 0]]


def occlude(x, side):
    x = x.clone()
    for i, (r, c) in enumerate(torch.randint(0, 32 - side + 1, (len(x), 2), generator=g).tolist()):
        x[i, :, r:r + side, c:c + side] = 0.5
    return x


def shift(x, px):
    out = torch.zeros_like(x)
    for i, d in enumerate(torch.randint(0, 4, (len(x),), generator=g).tolist()):  # right, left, down, up
        dy, dx = [(0, px), (0, -px), (px, 0), (-px, 0)][d]
        out[i] = torch.roll(x[i], (dy, dx), (1, 2))
        if dx > 0:
            out[i, :, :, :dx] = 0
        if dx < 0:
            out[i, :, :, dx:] = 0
        if dy > 0:
            out[i, :, :dy] = 0
        if dy < 0:
            out[i, :, dy:] = 0
    return out


@torch.no_grad()
def token_drop(x, p):
    ids = torch.cat([tok.encode(x[i:i + 500]) for i in range(0, len(x), 500)])  # (N, 8, 8)
    drop = torch.rand(ids.shape, generator=g) < p
    ids = torch.where(drop, torch.randint(0, tok.codebook_size, ids.shape, generator=g), ids)
    return torch.cat([tok.decode(ids[i:i + 500]) for i in range(0, len(ids), 500)])


CORRUPTIONS = {"blur (sigma px)": (blur, [0.5, 1.0, 2.0]), "noise (std)": (noise, [0.05, 0.1, 0.2]),
               "colour shift (mix)": (color, [0.1, 0.25, 0.5]), "occlusion (side px)": (occlude, [4, 8, 12]),
               "spatial shift (px)": (shift, [2, 4, 8]), "token dropout (share)": (token_drop, [0.1, 0.3, 0.6])}
floor = fid(A, B, net)
result = {"n": N, "floor_real_vs_real": round(floor, 3), "tokenizer_round_trip": round(fid(A, token_drop(B, 0.0), net), 3),
          "corruptions": {}}
print(f"FID, real A vs real B (n = {N} each): {floor:.3f}")
for name, (fn, strengths) in CORRUPTIONS.items():
    vals = [round(fid(A, fn(B, s), net), 3) for s in strengths]
    mono = all(b > a for a, b in zip(vals, vals[1:]))  # over the three strengths
    above = [v > floor for v in vals]  # and each against the real-vs-real floor
    result["corruptions"][name] = {"strengths": strengths, "fid": vals, "rises_with_strength": mono, "above_floor": above}
    print(f"{name:24s} {strengths} -> {vals}  {'rises' if mono else 'NOT MONOTONIC'}; above the floor: {above}")
result["all_rise_with_strength"] = all(c["rises_with_strength"] for c in result["corruptions"].values())
result["command"] = f"python docs/fid_validation.py {FEATS.relative_to(ROOT) if FEATS.is_relative_to(ROOT) else FEATS} {N}"
atomic_write_json(ROOT / "docs" / "results" / "fid" / "validation.json", result)

fig, axes = plt.subplots(1, 6, figsize=(16, 3))
for ax, (name, c) in zip(axes, result["corruptions"].items()):
    ax.plot([0] + c["strengths"], [floor] + c["fid"], "o-")
    ax.set_yscale("log")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("strength")
axes[0].set_ylabel("FID against real renders (log)")
fig.suptitle(f"Shapes FID against real renders under six corruptions (n = {N} per set; strength 0: real vs real, {floor:.2f})",
             fontsize=10)
fig.tight_layout()
buf = io.BytesIO()
fig.savefig(buf, format="png", dpi=80)
atomic_write_bytes(ROOT / "docs" / "fid_validation.png", buf.getvalue())
print("all rise with strength:", result["all_rise_with_strength"])
