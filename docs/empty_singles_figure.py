"""One single-shape prompt that comes out empty under confidence decoding, drawn again with the remask sampler from the
same seed: the decoded grid after chosen steps (masked positions grey), one row per sampler.

Usage: .venv/bin/python docs/empty_singles_figure.py CHECKPOINT SEED N OUT.png
(the first image of `docs/empty_singles.py CHECKPOINT SEED N` that failed under confidence decoding)
"""
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minimuse.data import eval_prompts  # noqa: E402
from minimuse.judge import score  # noqa: E402
from minimuse.pipeline import load_pipeline  # noqa: E402
from minimuse.viz import step_panels  # noqa: E402

ckpt, seed, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pipe = load_pipeline(ckpt, device="cpu", superres=False)
prompts = eval_prompts(n, seed=seed, kinds=["single"])
rows = {name: pipe([c for c, _, _ in prompts], seed=seed, superres=False, return_history=True, **kw)
        for name, kw in (("confidence", {"sampler": "confidence"}),
                         ("remask, p = 0.35", {"sampler": "remask", "remask_prob": 0.35}))}
images, _ = rows["confidence"]
index = next(i for i, (im, (_, spec, _)) in enumerate(zip(images, prompts)) if not score(im, spec)[0])
steps = [3, 7, 11, 13, 15, 17, 19, 23]
fig, axes = plt.subplots(2, len(steps), figsize=(1.4 * len(steps), 3.4), squeeze=False)
for r, (name, (imgs, hist)) in enumerate(rows.items()):
    for c, t in enumerate(steps):
        ax = axes[r][c]
        ax.imshow(step_panels(hist, pipe.tokenizer, pipe.mask_id, t, index)["image"])
        ax.set_xticks([]), ax.set_yticks([])
        if r == 0:
            ax.set_title(f"step {t + 1}", fontsize=8)
        if c == 0:
            ax.set_ylabel(f"{name}\n{'passed' if score(imgs[index], prompts[index][1])[0] else 'failed'}", fontsize=8)
fig.suptitle(f'"{prompts[index][0]}" (seed {seed}, image {index})', fontsize=9)
fig.tight_layout()
fig.savefig(out, dpi=100)
print(out, prompts[index][0], index)
