"""The shapes world (docs/CONTRACTS.md): generator geometry, determinism, caption grammar, the judge (judge.py), files on disk."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from minimuse.config import CAPTION_KINDS
from minimuse.hfdata import ImageTextDataset
from minimuse.data import (PALETTE, SHAPES, ShapesDataset, Spec, canonical_caption,
                           centroid, collate, eval_prompts, make_sample, parse_caption, render, specs_of_kind,
                           write_dataset)
from minimuse.judge import judge_agreement, label_components, score

INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
CROSS = {"left of": "above", "right of": "below", "above": "right of", "below": "left of"}


def samples(n, size=32, seed=0, **kw):
    return [make_sample(seed, i, size, **kw) for i in range(n)]


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_geometry_sizes_gaps_inside(size):
    gap = math.ceil(3 * size / 32)
    for s in samples(150, size):
        img, boxes = s["image"], s["boxes"]
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert len(boxes) == sum(n for n, _, _ in s["spec"].objects)
        covered = np.zeros((size, size), bool)
        for x, y, d in boxes:
            assert 0.25 * size <= d <= 0.38 * size
            assert x >= 0 and y >= 0 and x + d <= size and y + d <= size
            covered[int(y):math.ceil(y + d), int(x):math.ceil(x + d)] = True
        for a, b in itertools.combinations(boxes, 2):
            gx = max(b[0] - a[0] - a[2], a[0] - b[0] - b[2])
            gy = max(b[1] - a[1] - a[2], a[1] - b[1] - b[2])
            assert max(gx, gy) >= gap
        assert not img[~covered].any(), "paint outside every object's box"


def test_palette_exact_in_interior():
    pal = {v: k for k, v in PALETTE.items()}
    for s in samples(200):
        items = [(c, sh) for n, c, sh in s["spec"].objects for _ in range(n)]
        seen = {tuple(p) for p in s["image"].reshape(-1, 3)} & set(pal)
        assert {pal[p] for p in seen} == {c for c, _ in items}
        for (color, shape), box in zip(items, s["boxes"]):
            cx, cy = centroid(shape, box)
            assert tuple(s["image"][int(cy), int(cx)]) == PALETTE[color]


def test_antialiased_edges_are_scaled_palette_colors():
    # A rim pixel is color x coverage: same hue as some palette entry, darker, never a new color.
    img = samples(1)[0]["image"].astype(float)
    rim = img[(img.max(-1) > 0) & ~np.isin(img.sum(-1), [sum(v) for v in PALETTE.values()])]
    assert len(rim) > 0
    pal = np.array(list(PALETTE.values()), float)
    alpha = rim.sum(1, keepdims=True) / pal.sum(1)                         # (N, 6) coverage under each color
    err = np.abs(alpha[..., None] * pal[None] - rim[:, None]).max(-1).min(-1)
    assert err.max() <= 1.0


def test_deterministic_by_seed_and_index():
    a, b = make_sample(7, 11), make_sample(7, 11)
    assert np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"] and a["spec"] == b["spec"]
    assert not np.array_equal(a["image"], make_sample(7, 12)["image"])
    assert not np.array_equal(a["image"], make_sample(8, 11)["image"])
    ds = ShapesDataset(size=16, seed=7, length=20)
    assert torch.equal(ds[11]["image"], torch.from_numpy(make_sample(7, 11, 16)["image"]).permute(2, 0, 1) / 255)


def test_bad_size_raises():
    for size in (12, 0, 30):
        with pytest.raises(ValueError, match="multiple of 8"):
            make_sample(0, 0, size)


def test_all_kinds_appear_and_kinds_filter():
    kinds = [s["kind"] for s in samples(100, 16)]
    assert set(kinds) == set(CAPTION_KINDS)
    only = samples(30, 16, kinds=("count",))
    assert {s["kind"] for s in only} == {"count"}
    assert all(2 <= s["spec"].objects[0][0] <= 4 and len(s["spec"].objects) == 1 for s in only)


def test_kind_shapes_match_grammar():
    for s in samples(200, 16):
        spec, kind = s["spec"], s["kind"]
        counts = [n for n, _, _ in spec.objects]
        assert (spec.relation is not None) == (kind == "relation")
        assert {"single": [[1]], "count": [[2], [3], [4]], "relation": [[1, 1]], "pair": [[1, 1]],
                "mixed": [[2, 1], [3, 1]]}[kind].count(counts) == 1
        if len(spec.objects) == 2:
            assert spec.objects[0][1:] != spec.objects[1][1:]
        assert parse_caption(s["caption"]) == spec


def test_paraphrases_keep_image_and_spec():
    changed = 0
    for i in range(40):
        a, b = make_sample(3, i), make_sample(3, i, paraphrase_prob=1.0)
        assert np.array_equal(a["image"], b["image"]) and a["spec"] == b["spec"]
        assert a["caption"] == canonical_caption(a["spec"])
        changed += b["caption"] != a["caption"]
    assert changed == 40


def test_canonical_caption_exact_strings():
    assert canonical_caption(Spec(((1, "red", "circle"),))) == "a red circle"
    assert canonical_caption(Spec(((2, "blue", "square"),))) == "two blue squares"
    assert canonical_caption(Spec(((1, "red", "circle"), (1, "blue", "square")), "left of")) == \
        "a red circle to the left of a blue square"
    assert canonical_caption(Spec(((1, "red", "circle"), (1, "blue", "square")), "below")) == \
        "a red circle below a blue square"
    assert canonical_caption(Spec(((2, "red", "circle"), (1, "blue", "square")))) == "two red circles and a blue square"


def test_parse_round_trip_every_spec():
    n = 0
    for kind in CAPTION_KINDS:
        for spec in specs_of_kind(kind):
            text = canonical_caption(spec)
            assert parse_caption(text) == spec
            assert parse_caption("  " + text.upper().replace(" ", "   ") + ". ") == spec
            n += 1
    assert n == 18 + 54 + 18 * 17 * 4 + 18 * 17 + 2 * 18 * 17


@pytest.mark.parametrize("text, part", [
    ("a purple blob", "purple blob"), ("two red circle", "two red circle"), ("a red circles", "a red circles"),
    ("five red circles", "five red circles"), ("", "cannot parse"), ("a red circle and", "a red circle and"),
    ("two red circles to the left of a blue square", "relation"), ("three red circles and two blue squares", "1 to 4"),
    ("a red circle above a red circle", "different")])
def test_parse_errors_name_the_problem(text, part):
    with pytest.raises(ValueError, match=part.replace("'", "")):
        parse_caption(text)


def test_label_components_four_connected():
    m = np.zeros((6, 6), bool)
    m[0:2, 0:2] = True          # a block
    m[2, 2] = True              # touches the block only diagonally: separate under 4-connectivity
    m[4:6, 1:5] = True
    lab = label_components(m)
    assert (lab[~m] == -1).all() and len(np.unique(lab[m])) == 3
    assert len(np.unique(lab[0:2, 0:2])) == 1 and len(np.unique(lab[4:6, 1:5])) == 1


def _mutations(spec):
    """Specs that differ from `spec` in one color, one shape, one count, or the relation."""
    (n, c, s), rest = spec.objects[0], spec.objects[1:]
    other_c = next(x for x in PALETTE if x != c and all(o[1:] != (x, s) for o in rest))
    other_s = next(x for x in SHAPES if x != s and all(o[1:] != (c, x) for o in rest))
    out = [Spec(((n, other_c, s),) + rest, spec.relation), Spec(((n, c, other_s),) + rest, spec.relation)]
    if rest:
        out.append(Spec(rest))
    if spec.relation is None:
        total = sum(o[0] for o in spec.objects)
        out.append(Spec(((n + 1 if total < 4 else n - 1, c, s),) + rest))
    else:
        out += [Spec(spec.objects, INVERSE[spec.relation]), Spec(spec.objects, CROSS[spec.relation]),
                Spec(spec.objects[::-1], spec.relation)]
    return out


@pytest.mark.parametrize("kind", CAPTION_KINDS)
def test_score_rejects_wrong_specs(kind):
    for s in samples(60, 32, seed=5, kinds=(kind,)):
        assert score(s["image"], s["spec"]) == (True, "ok")
        for wrong in _mutations(s["spec"]):
            ok, reason = score(s["image"], wrong)
            assert not ok and reason != "ok", (s["caption"], canonical_caption(wrong))


def test_score_reasons_and_input_formats():
    spec = Spec(((1, "red", "circle"), (1, "blue", "square")), "left of")
    img = render(spec, 32, np.random.default_rng(0))
    chw = torch.from_numpy(img).permute(2, 0, 1).float() / 255           # (3, S, S)
    assert score(img, spec) == score(chw, spec) == score(chw.numpy(), spec) == (True, "ok")
    ok, reason = score(img, Spec(spec.objects, "right of"))
    assert not ok and reason.startswith("relation: red circle is not right of blue square")
    assert score(img, Spec(((2, "red", "circle"),))) == \
        (False, "expected 0 blue square, found 1; expected 2 red circle, found 1")
    assert score(np.zeros((32, 32, 3), np.uint8), Spec(((1, "red", "circle"),))) == \
        (False, "expected 1 red circle, found 0")
    with pytest.raises(ValueError, match="shape"):
        score(np.zeros((32, 32), np.uint8), spec)


def test_judge_agreement_on_2000_per_kind():
    result = judge_agreement(n_per_kind=2000, size=32, seed=10_000)["agreement"]
    assert result["overall"] >= 0.99, result
    assert all(result[k] >= 0.98 for k in CAPTION_KINDS), result


def test_eval_prompts_balanced_and_canonical():
    prompts = eval_prompts(18, kinds=("single", "relation"))
    assert [k for _, _, k in prompts] == ["single"] * 18 + ["relation"] * 18
    assert {sp for _, sp, k in prompts if k == "single"} == set(specs_of_kind("single"))   # every single spec once
    assert all(parse_caption(c) == sp for c, sp, _ in prompts)
    assert prompts == eval_prompts(18, kinds=("single", "relation"))
    assert eval_prompts(5, seed=1) != eval_prompts(5, seed=2)


def test_dataset_items_and_collate():
    ds = ShapesDataset(size=16, seed=0, length=8, paraphrase_prob=0.5)
    assert len(ds) == 8
    item = ds[3]
    assert set(item) == {"image", "caption", "spec", "kind"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0 and item["image"].max() > 0.5
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["caption"] == [ds[i]["caption"] for i in range(4)] and len(batch["spec"]) == len(batch["kind"]) == 4
    with pytest.raises(IndexError):
        ds[8]


def test_write_dataset(tmp_path):
    out = write_dataset(12, tmp_path / "shapes", size=16, seed=2)
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:03d}.png" for i in range(12)] + ["captions.jsonl", "grid.png"]
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for i, row in enumerate(rows):
        s = make_sample(2, i, 16)
        assert set(row) == {"file", "caption", "kind", "spec"} and row["file"] == f"{i:03d}.png"
        assert np.array_equal(np.asarray(Image.open(out / row["file"])), s["image"])
        assert row["caption"] == s["caption"] and row["kind"] == s["kind"]
        assert Spec(row["spec"]["objects"], row["spec"]["relation"]) == s["spec"]
    grid = Image.open(out / "grid.png")
    assert grid.width >= 8 * 128 and grid.height > 2 * 128


def test_image_folder_dataset(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = (0, 255, 0)                                          # the middle third survives the center crop
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "wide.png", "text": "green"}\n\n'
                                             '{"file_name": "small.png", "text": "white"}\n')
    ds = ImageTextDataset(tmp_path, size=16)
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["caption"] == "green" and a["spec"] is None and a["kind"] == "real"
    assert a["image"].shape == b["image"].shape == (3, 16, 16) and a["image"].dtype == torch.float32
    assert torch.allclose(a["image"][:, :, 4:12], torch.tensor([0., 1., 0.]).view(3, 1, 1).expand(3, 16, 8), atol=0.02)
    assert torch.allclose(b["image"], torch.ones(3, 16, 16))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "wide.png"}\n')
    with pytest.raises(ValueError, match="line 1.*'text'"):
        ImageTextDataset(tmp_path)
    (tmp_path / "metadata.jsonl").unlink()
    with pytest.raises(ValueError, match="metadata.jsonl"):
        ImageTextDataset(tmp_path)
