"""viz: pixel conversion, upscaling, partly decoded grids, the step-slider logic and the sizes of the sheets.

A random-initialised ci tokenizer (16 px, 4x4 grid, K = 32) and a tiny transformer give a real sampling history;
nothing is trained. Expected values come from the documented formulas, checked pixel by pixel.
"""
import math
import matplotlib
import numpy as np
import pytest
import torch

from minimuse.config import SampleConfig, TransformerConfig
from minimuse.presets import get_config
from minimuse.sampler import sample
from minimuse.tokenizer import Tokenizer
from minimuse.transformer import MaskedTransformer
from minimuse.viz import (decode_partial, default_steps, history_figure, enlarge, history_png, history_steps, image_grid,
                          step_panels, to_uint8)

matplotlib.use("Agg")

GRAY = 96  # decode_partial's paint for patches not drawn yet


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return Tokenizer(get_config("ci").tokenizer).eval()


@pytest.fixture(scope="module")
def history(tokenizer):
    """A real 3-step sampling history for B = 2 from a tiny random transformer and random text."""
    torch.manual_seed(1)
    K = tokenizer.codebook_size
    model = MaskedTransformer(TransformerConfig(width=16, depth=1, heads=2), K, (4, 4), text_dim=8)
    text, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    s = SampleConfig(num_steps=3, guidance_scale=0.0)
    _, hist = sample(model, (text, mask), s, generator=torch.Generator().manual_seed(0), return_history=True)
    return hist


def test_to_uint8_layout_clamp_and_rounding():
    values = torch.tensor([-0.5, 0.0, 100.4 / 255, 100.6 / 255, 1.0, 1.7])  # below, edge, round down, up, edge, above
    x = torch.stack([values, 1 - values.clamp(0, 1), (torch.arange(6) + 0.5) / 255]).view(1, 3, 2, 3)  # (1, 3, H, W)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3, 3)  # (B, H, W, 3)
    assert out[0, :, :, 0].ravel().tolist() == [0, 0, 100, 101, 255, 255]
    assert out[0, :, :, 1].ravel().tolist() == [255, 255, 155, 154, 0, 0]
    assert out[0, :, :, 2].ravel().tolist() == [0, 2, 2, 4, 4, 6]  # exact ties .5: round half to even, like torch.round
    y = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(to_uint8(y), np.floor(y.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))


def test_upscale_is_exact_nearest_neighbour():
    img = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    big = enlarge(img, 4)
    assert big.shape == (12, 20, 3) and big.dtype == np.uint8
    ys, xs = np.meshgrid(np.arange(12), np.arange(20), indexing="ij")
    assert np.array_equal(big, img[ys // 4, xs // 4])
    assert np.array_equal(enlarge(img, 1), img)


def test_decode_partial_paints_masked_patches_and_keeps_the_rest(tokenizer):
    K, f = tokenizer.codebook_size, tokenizer.downsample
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, K, (2, 4, 4), generator=g)
    mask = torch.rand(2, 4, 4, generator=g) < 0.5
    mask[0, 0, 0], mask[1, 0, 0] = True, False  # at least one masked and one unmasked patch
    out = decode_partial(tokenizer, torch.where(mask, K, ids), mask, mask_id=K)  # history grids hold mask_id
    assert out.dtype == np.uint8 and out.shape == (2, 4 * f, 4 * f, 3)
    pix = mask.numpy().repeat(f, axis=1).repeat(f, axis=2)  # (B, H, W)
    assert (out[pix] == GRAY).all()
    # Everywhere else: the full decode of the grid with masked ids swapped for 0, as documented.
    full = to_uint8(tokenizer.decode(torch.where(mask, 0, ids)))
    assert np.array_equal(out[~pix], full[~pix])
    none = torch.zeros_like(mask)
    assert np.array_equal(decode_partial(tokenizer, ids, none, K), to_uint8(tokenizer.decode(ids)))
    assert (decode_partial(tokenizer, torch.full_like(ids, K), ~none, K) == GRAY).all()


def test_step_panels_keys_shapes_values(tokenizer, history):
    K = tokenizer.codebook_size
    S = 4 * tokenizer.downsample
    for step in range(len(history)):
        for index in (0, 1):
            p = step_panels(history, tokenizer, K, step, index)
            assert set(p) == {"image", "mask", "committed", "confidence", "entropy"}
            assert p["image"].shape == (S, S, 3) and p["image"].dtype == np.uint8
            h = history[step]
            ref = decode_partial(tokenizer, h["ids"], h["mask"], K)[index]
            assert np.array_equal(p["image"], ref)
            for key in ("mask", "committed", "confidence", "entropy"):
                assert p[key].shape == (4, 4) and p[key].dtype.kind == "f", key
                assert np.array_equal(p[key], h[key][index].float().numpy()), key


@pytest.mark.parametrize("step", [-1, 3, 10])
def test_step_panels_out_of_range(tokenizer, history, step):
    with pytest.raises(ValueError, match=f"step {step} out of range: the history has 3 steps"):
        step_panels(history, tokenizer, tokenizer.codebook_size, step)


def test_history_png_is_the_figure_of_the_default_steps(tokenizer, history):
    """What `minimuse generate --history` writes: a PNG of history_figure's default rows, one per chosen step."""
    import io

    from PIL import Image
    png = history_png(history, tokenizer, tokenizer.codebook_size, index=1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    fig = history_figure(history, tokenizer, tokenizer.codebook_size, index=1)
    w, h = (fig.get_size_inches() * 100).round().astype(int)  # saved at 100 dpi
    assert Image.open(io.BytesIO(png)).size == (w, h)
    assert history_png(history, tokenizer, tokenizer.codebook_size, index=1) == png  # deterministic


@pytest.mark.parametrize("B,ncol,captions", [(5, 2, False), (5, 8, True), (1, 3, True)])
def test_image_grid_size_and_tiles(B, ncol, captions):
    H, W, scale = 6, 5, 3
    images = np.random.default_rng(B).integers(0, 256, (B, H, W, 3), dtype=np.uint8)
    sheet = np.asarray(image_grid(images, [f"p{i}" for i in range(B)] if captions else None, ncol=ncol, scale=scale))
    cols = min(ncol, B)
    rows = -(-B // cols)
    cap = 12 if captions else 0
    assert sheet.shape == (rows * (H * scale + cap + 4) + 4, cols * (W * scale + 4) + 4, 3)
    for i in range(B):
        r, c = divmod(i, cols)
        x, y = 4 + c * (W * scale + 4), 4 + r * (H * scale + cap + 4)
        assert np.array_equal(sheet[y:y + H * scale, x:x + W * scale], enlarge(images[i], scale))


def test_history_figure_has_a_row_per_step(tokenizer, history):
    import matplotlib.pyplot as plt
    K = tokenizer.codebook_size
    fig = history_figure(history, tokenizer, K, steps=[0, 2])
    assert len(fig.axes) == 2 * 5 + 4  # the panels, and a colorbar under each heat column
    assert [ax.get_title() for ax in fig.axes[:5]] == ["image", "mask", "committed", "confidence", "entropy"]
    assert fig.axes[5].get_ylabel() == "step 3"
    # fixed scales, the same in every row: entropy on [0, ln K], confidence on [0, 1], whatever the step holds
    for row in (fig.axes[:5], fig.axes[5:10]):
        assert row[4].images[0].get_clim() == (0.0, pytest.approx(math.log(K)))
        assert row[3].images[0].get_clim() == (0.0, 1.0)
    plt.close(fig)


def test_default_steps_pick_about_six_including_both_ends():
    assert default_steps(24) == [0, 5, 9, 14, 18, 23] and default_steps(4) == [0, 1, 2, 3] and default_steps(7)[-1] == 6


def test_history_steps_show_a_cascades_super_res_ends_and_label_them(tokenizer, history):
    import matplotlib.pyplot as plt
    assert history_steps([{}] * 24) == default_steps(24)  # one stage: about six, both ends
    cascade = [{"stage": "base"}] * 24 + [{"stage": "superres"}] * 8
    assert history_steps(cascade) == default_steps(24, 4) + [24, 31] == [0, 8, 15, 23, 24, 31]
    staged = [dict(h, stage="base") for h in history[:2]] + [dict(history[2], stage="superres")]
    fig = history_figure(staged, {"base": tokenizer, "superres": tokenizer}, {"base": 32, "superres": 32})
    assert [fig.axes[5 * r].get_ylabel() for r in range(3)] == ["step 1", "step 2", "super-res step 1"]
    plt.close(fig)


def test_roadmap_fills_the_current_lesson_shades_the_earlier_ones_and_names_bad_input():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from minimuse.viz import LESSONS, roadmap
    fig = roadmap("06_sampling")
    faces = [to_hex(p.get_facecolor()) for p in fig.axes[0].patches]
    assert len(faces) == len(LESSONS)
    assert len(set(faces[:6])) == 1 and len(set(faces[7:])) == 1  # before: one shade; after: another
    assert len({faces[0], faces[6], faces[9]}) == 3  # and the current one differs from both
    assert fig.axes[0].texts[-1].get_text() == "you are here"
    assert [to_hex(p.get_facecolor()) for p in roadmap(6).axes[0].patches] == faces  # a number works as the stem
    plt.close("all")
    for bad in ("11_nothing", 11, -1):
        with pytest.raises(ValueError, match="unknown lesson.*00_overview"):
            roadmap(bad)
