"""Eight real Nouns characters of the train split with their captions: docs/nouns_samples.png (docs/NOUNS.md).

    .venv/bin/python docs/nouns_figure.py [--assets PATH]    # the artwork: PATH, else the cache, else npm

The first eight of `Nouns.sample(8, "train", seed=0)`, the characters `minimuse dataset --source nouns --n 8` writes.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from minimuse.checkpoint import atomic_save_image  # noqa: E402
from minimuse.data import contact_sheet  # noqa: E402
from minimuse.nouns import load  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--assets", help="dist/image-data.json of @nouns/assets 0.10.0")
p.add_argument("--out", default=str(ROOT / "docs" / "nouns_samples.png"))
args = p.parse_args()
nouns = load(args.assets)
combos = nouns.sample(8, "train", seed=0)
sheet = contact_sheet([nouns.render(c) for c in combos], [nouns.caption(c) for c in combos], cols=4, tile=192)
atomic_save_image(args.out, sheet)
print(f"wrote {args.out}: {', '.join(map(str, combos))}")
