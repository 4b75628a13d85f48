"""Editing (Muse §3.3): inpainting keeps every token outside its region, outpainting windows cover the new region once,
mask-free editing resamples ceil(frac * L) tokens per iteration, and bad inputs are refused before any sampling.

A random-initialised ci pipeline (16 px, a 4x4 grid of 4 px cells) checks the mechanics exactly; quality is measured
by `minimuse eval --task`, not here.
"""
import math

import numpy as np
import pytest
import torch

import minimuse.pipeline as pipeline_mod
import minimuse.sampler as sampler_mod
from minimuse.data import make_sample
from minimuse.editing import cell_mask, outpaint_windows, parse_extend
from minimuse.pipeline import load_pipeline


@pytest.fixture(scope="module")
def pipe(ckpt):
    return load_pipeline(ckpt, device="cpu")


def scenes(n, size=16):
    return np.stack([make_sample(10_000, i, size)["image"] for i in range(n)])  # (n, S, S, 3) uint8


def final_ids(pipe, monkeypatch):
    """Capture the token ids each edit decodes last."""
    seen = []
    decode = pipe.decode
    monkeypatch.setattr(pipe, "decode", lambda ids, stage="base": (seen.append(ids.clone()), decode(ids, stage))[1])
    return seen


def test_cell_mask_snaps_outwards_to_whole_cells():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 16, 16)) < 0.02
    got = cell_mask(masks, (4, 4))
    for b in range(5):  # the rule, written as a loop: a cell is on when any of its 4x4 pixels is
        for i in range(4):
            for j in range(4):
                assert got[b, i, j] == masks[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4].any()
    one = np.zeros((1, 16, 16), bool)
    one[0, 7, 8] = True  # row 7 is in cell row 1, column 8 starts cell column 2
    assert np.argwhere(cell_mask(one, (4, 4))).tolist() == [[0, 1, 2]]


def test_inpainting_keeps_every_token_outside_the_region(pipe, monkeypatch):
    images = scenes(3)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, :6, :6] = True   # snaps to 2x2 cells
    masks[1, :, 13] = True    # one column of cells
    masks[2, 5:11, 5:11] = True
    seen = final_ids(pipe, monkeypatch)
    out, history = pipe.inpaint(images, masks, ["a red circle", "two blue squares", "a green triangle"],
                                num_steps=3, seed=1, return_history=True)
    region = torch.from_numpy(cell_mask(masks, (4, 4)))
    before, after = pipe.encode_images(images), seen[-1]
    assert torch.equal(after[~region], before[~region])                 # bit for bit
    assert (after[region] != pipe.mask_id).all() and out.shape == images.shape and out.dtype == np.uint8
    assert history[0]["mask"].sum((1, 2)).tolist()[0] < int(region[0].sum())  # the schedule counts the region only
    assert not (history[0]["mask"] & ~region).any()


def test_inpainting_is_deterministic_for_a_seed(pipe):
    images, masks = scenes(2), np.zeros((2, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    a = pipe.inpaint(images, masks, "a red circle", seed=3)
    assert np.array_equal(a, pipe.inpaint(images, masks, "a red circle", seed=3))
    assert not np.array_equal(a, pipe.inpaint(images, masks, "a red circle", seed=4))


@pytest.mark.parametrize("known,new,size", [(8, 1, 8), (8, 4, 8), (8, 8, 8), (8, 21, 8), (4, 9, 4), (16, 3, 16)])
def test_outpaint_windows_cover_the_new_region_once(known, new, size):
    windows = outpaint_windows(known, new, size)
    covered = []
    for start, end, first_new in windows:
        assert end - start == size and 0 <= start <= first_new < end   # a whole model window, on the canvas
        assert first_new - start >= size - max(1, size // 2)             # at least half of it already known
        covered += range(first_new, end)
    assert covered == list(range(known, known + new))                   # each new token exactly once, in order


@pytest.mark.parametrize("side", ["right", "left", "bottom", "top"])
def test_outpainting_keeps_the_image_and_grows_the_canvas(pipe, monkeypatch, side):
    images = scenes(2)
    seen = final_ids(pipe, monkeypatch)
    out = pipe.outpaint(images, "a red circle and a blue square", extend=f"{side}:8", num_steps=2)
    before, canvas = pipe.encode_images(images), seen[-1]               # (2, 4, 4), (2, h', w')
    grows_rows = side in ("top", "bottom")
    assert canvas.shape == ((2, 6, 4) if grows_rows else (2, 4, 6))
    assert out.shape == ((2, 24, 16, 3) if grows_rows else (2, 16, 24, 3))
    kept = {"right": canvas[:, :, :4], "left": canvas[:, :, 2:], "bottom": canvas[:, :4], "top": canvas[:, 2:]}[side]
    assert torch.equal(kept, before) and (canvas != pipe.mask_id).all()


def test_mask_free_editing_resamples_ceil_frac_of_the_tokens_per_iteration(pipe, monkeypatch):
    counts, real = [], sampler_mod.sample
    monkeypatch.setattr(sampler_mod, "sample", lambda *a, **k: (counts.append(k["init_mask"].sum((1, 2)).tolist()),
                                                                 real(*a, **k))[1])
    out, history = pipe.edit(scenes(2), "a green circle", num_iters=5, resample_frac=0.2, return_history=True,
                             history_at=(2, 5, 9))
    assert counts == [[math.ceil(0.2 * 16)] * 2] * 5
    assert sorted(history) == [2, 5] and np.array_equal(history[5], out)
    assert np.array_equal(out, pipe.edit(scenes(2), "a green circle", num_iters=5, resample_frac=0.2))


def test_mask_free_editing_defaults_come_from_the_checkpoints_edit_settings(pipe, monkeypatch):
    import dataclasses
    from minimuse.config import EditConfig
    seen, real = [], sampler_mod.sample
    monkeypatch.setattr(sampler_mod, "sample", lambda *a, **k: (seen.append((a[2].guidance_scale, a[2].top_k,
                                                                             int(k["init_mask"].sum()))), real(*a, **k))[1])
    monkeypatch.setattr(pipe, "config", dataclasses.replace(pipe.config, edit=EditConfig(
        num_iters=3, resample_frac=0.2, guidance_scale=1.5, top_k=2)))
    by_config = pipe.edit(scenes(1), "a green circle", seed=4)
    assert seen == [(1.5, 2, math.ceil(0.2 * 16))] * 3  # three iterations, each with the configured settings
    explicit = pipe.edit(scenes(1), "a green circle", num_iters=3, resample_frac=0.2, guidance_scale=1.5, top_k=2, seed=4)
    assert np.array_equal(by_config, explicit)
    seen.clear()
    pipe.edit(scenes(1), "a green circle", guidance_scale=0.0, top_k=1, seed=4)  # an argument beats the config
    assert seen == [(0.0, 1, math.ceil(0.2 * 16))] * 3


@pytest.mark.parametrize("call,error,fragment", [
    (lambda p, im: p.inpaint(im, np.zeros((1, 8, 8), bool), "a red circle"), ValueError, "must have its image's size"),
    (lambda p, im: p.inpaint(im, np.zeros((1, 16, 16), bool), "a red circle"), ValueError, "selects nothing"),
    (lambda p, im: p.inpaint(im, np.ones((1, 16, 16), bool), "a red circle"), ValueError, "that is generation"),
    (lambda p, im: p.inpaint(im, np.ones((1, 16, 16), np.uint8), "a red circle"), ValueError, "must be bool"),
    (lambda p, im: p.inpaint(im.astype(np.float32), None, "a red circle"), ValueError, "must be uint8"),
    (lambda p, im: p.inpaint(np.zeros((1, 20, 20, 3), np.uint8), None, "x"), ValueError, "this model edits 16x16"),
    (lambda p, im: p.edit(np.zeros((1, 32, 32, 3), np.uint8), "x"), NotImplementedError, "no super-resolution stage"),
    (lambda p, im: p.edit(im, ["a", "b"]), ValueError, "2 prompts for 1 images"),
    (lambda p, im: p.edit(im, "a red circle", num_iters=0), ValueError, "num_iters must be a positive integer"),
    (lambda p, im: p.edit(im, "a red circle", resample_frac=0), ValueError, "resample_frac must lie in"),
    (lambda p, im: p.edit(im, "a red circle", top_k=0), ValueError, "top_k must be a positive integer"),
    (lambda p, im: p.edit(im, "a red circle", guidance_scale=-1.0), ValueError, "'guidance_scale': must be 0 or more"),
    (lambda p, im: p.outpaint(im, "x", extend="right:6"), ValueError, "multiple of the 4 px token cell"),
    (lambda p, im: p.outpaint(im, "x", extend="up:8"), ValueError, "SIDE:PIXELS"),
])
def test_bad_edit_inputs_are_refused_before_sampling(pipe, monkeypatch, call, error, fragment):
    for module in (sampler_mod, pipeline_mod):  # the pipeline holds its own reference to sample
        monkeypatch.setattr(module, "sample", lambda *a, **k: pytest.fail("sampled before refusing"))
    with pytest.raises(error, match=fragment):
        call(pipe, scenes(1))


def test_parse_extend_counts_tokens():
    assert parse_extend("right:16", 4) == ("right", 4) and parse_extend(" top:8 ", 4) == ("top", 2)


# ----------------------------------------------------------------------------------------------------------- CLI
def save_png(path, array):
    from PIL import Image
    Image.fromarray(array).save(path)
    return path


def run_cli(capsys, *argv):
    from minimuse.cli import main
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_png(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def test_edit_cli_inpaints_and_edits_like_the_methods(capsys, pipe, ckpt, tmp_path):
    images = scenes(2)
    img0, img1 = save_png(tmp_path / "a.png", images[0]), save_png(tmp_path / "b.png", images[1])
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    m = save_png(tmp_path / "m.png", mask)
    code, out, err = run_cli(capsys, "edit", img0, "--prompt", "a red circle", "--mask", m, "--checkpoint", ckpt,
                             "--out", tmp_path / "o.png", "--seed", 2, "--device", "cpu")
    assert code == 0, err
    assert np.array_equal(read_png(tmp_path / "o.png"), pipe.inpaint(images[:1], mask[None] > 127, "a red circle", seed=2)[0])
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([f'{{"image": "{img1}", "prompt": "a blue square", "mask": null, "seed": 1}}',
                               f'{{"image": "{img0}", "prompt": "a red circle", "mask": "{m}", "seed": 2}}']) + "\n")
    code, out, err = run_cli(capsys, "edit", "--jobs", jobs, "--out-dir", tmp_path / "d", "--checkpoint", ckpt,
                             "--num-iters", 3, "--device", "cpu")
    assert code == 0, err
    assert np.array_equal(read_png(tmp_path / "d" / "000.png"), pipe.edit(images[1:], "a blue square", num_iters=3, seed=1)[0])
    assert np.array_equal(read_png(tmp_path / "d" / "001.png"), read_png(tmp_path / "o.png"))


def test_outpaint_cli_writes_the_bigger_image(capsys, pipe, ckpt, tmp_path):
    img = save_png(tmp_path / "a.png", scenes(1)[0])
    code, out, err = run_cli(capsys, "outpaint", img, "--prompt", "a red circle and a blue square", "--extend", "left:8",
                             "--checkpoint", ckpt, "--out", tmp_path / "o.png", "--device", "cpu")
    assert code == 0, err
    assert np.array_equal(read_png(tmp_path / "o.png"),
                          pipe.outpaint(scenes(1), "a red circle and a blue square", extend="left:8")[0])


@pytest.mark.parametrize("case,fragment", [
    ("mask-size", "is 8x8 px but its image is 16x16"),
    ("mask-black", "selects nothing"),
    ("mask-white", "that is generation"),
    ("image-size", "this model edits 16x16"),
    ("image-missing", "does not exist"),
    ("image-corrupt", "is not a readable image"),
    ("jobs-line", "line 2: not JSON"),
    ("jobs-field", "line 1: expected"),
    ("jobs-no-out-dir", "--jobs needs --out-dir"),
    ("top-k", "--top-k must be at least 1"),
    ("guidance", "--guidance must be 0 or more"),
])
def test_edit_cli_bad_input_is_one_line_and_writes_nothing(capsys, ckpt, tmp_path, case, fragment):
    img = save_png(tmp_path / "a.png", scenes(1)[0])
    masks = {"mask-size": np.full((8, 8), 255, np.uint8), "mask-black": np.zeros((16, 16), np.uint8),
             "mask-white": np.full((16, 16), 255, np.uint8)}
    argv = ["edit", img, "--prompt", "a red circle"]
    if case in masks:
        argv += ["--mask", save_png(tmp_path / "m.png", masks[case])]
    elif case == "image-size":
        argv[1] = save_png(tmp_path / "big.png", np.zeros((20, 20, 3), np.uint8))
    elif case == "image-missing":
        argv[1] = tmp_path / "nope.png"
    elif case == "image-corrupt":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
        argv[1] = tmp_path / "bad.png"
    elif case.startswith("jobs"):
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text({"jobs-line": f'{{"image": "{img}", "prompt": "x"}}\n{{oops\n',
                         "jobs-field": '{"image": 3, "prompt": "x"}\n',
                         "jobs-no-out-dir": f'{{"image": "{img}", "prompt": "x"}}\n'}[case])
        argv = ["edit", "--jobs", jobs] + ([] if case == "jobs-no-out-dir" else ["--out-dir", tmp_path / "d"])
    argv += {"top-k": ["--top-k", 0], "guidance": ["--guidance", -1]}.get(case, [])
    argv += ["--checkpoint", ckpt, "--device", "cpu"] + ([] if case.startswith("jobs") else ["--out", tmp_path / "o.png"])
    code, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("minimuse: error: ") and fragment in lines[0], err
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "d").exists()
