"""The pipeline's diffusers-style surface: `MusePipeline.from_pretrained` / `save_pretrained` round-trip a cascade
(with a critic) bit for bit, and every call that draws takes `output_type` ("np", "pil", "ids") with one meaning:
"ids" are the tokens the images decode from, "pil" the same pixels as "np". Tiny random-initialised `ci` models."""
import numpy as np
import pytest
import torch
from PIL import Image
from tiny import make_tiny_pipeline

from minimuse.critic import TokenCritic
from minimuse.pipeline import MusePipeline, load_pipeline
from minimuse.presets import get_config
from minimuse.superres import SuperResTransformer
from minimuse.tokenizer import Tokenizer

CI = get_config("ci")
PROMPTS = ["two red circles", "a yellow triangle"]
PARTS = ("tokenizer", "transformer", "superres", "superres_tokenizer", "critic")


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    """A ci cascade checkpoint with a critic: every part a pipeline folder can hold."""
    root = make_tiny_pipeline(tmp_path_factory.mktemp("cascade"))
    torch.manual_seed(1)
    Tokenizer(CI.superres.tokenizer).save_pretrained(root / "superres_tokenizer", CI, stage="superres")
    SuperResTransformer.from_config(CI).save_pretrained(root / "superres", CI)
    critic_cfg = get_config("ci", **{"transformer.kind": "critic"})
    TokenCritic.from_config(critic_cfg).save_pretrained(root / "critic", critic_cfg)
    return root


@pytest.fixture(scope="module")
def pipe(cascade):
    return MusePipeline.from_pretrained(cascade)


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_from_pretrained_is_load_pipeline(pipe, cascade):
    other = load_pipeline(cascade)
    for name in PARTS:
        a, b = getattr(pipe, name).state_dict(), getattr(other, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_save_pretrained_round_trips_every_part_and_the_images(pipe, tmp_path):
    out = pipe.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == sorted(PARTS)
    again = MusePipeline.from_pretrained(out)
    for name in PARTS:
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert again.config == pipe.config
    assert np.array_equal(pipe(PROMPTS, seed=3), again(PROMPTS, seed=3))


def test_save_pretrained_refuses_existing_files_before_writing_any(pipe, tmp_path):
    out = tmp_path / "saved"
    pipe.save_pretrained(out)
    (out / "critic" / "model.safetensors").unlink()  # only one part missing: still nothing may be written
    before = files(out)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        pipe.save_pretrained(out)
    assert files(out) == before
    pipe.save_pretrained(out, overwrite=True)
    assert (out / "critic" / "model.safetensors").is_file()


def test_output_type_of_a_generation(pipe):
    images = pipe(PROMPTS, seed=1)                                     # uint8 (B, 32, 32, 3): through the cascade
    ids = pipe(PROMPTS, seed=1, output_type="ids")                     # the super-res stage's tokens
    pil = pipe(PROMPTS, seed=1, output_type="pil")
    assert images.dtype == np.uint8 and ids.dtype == torch.long and ids.shape == (2, *pipe.superres.grid)
    assert np.array_equal(pipe.decode(ids, "superres"), images)
    assert all(isinstance(im, Image.Image) for im in pil) and np.array_equal(np.stack([np.asarray(im) for im in pil]), images)
    base = pipe(PROMPTS, seed=1, output_type="ids", superres=False)
    assert base.shape == (2, *pipe.transformer.grid)
    assert np.array_equal(pipe.decode(base), pipe(PROMPTS, seed=1, superres=False))


@pytest.mark.parametrize("method", ["upscale", "inpaint", "outpaint", "edit"])
def test_output_type_of_every_call_that_draws(pipe, method):
    S = CI.data.image_size
    images = np.random.default_rng(0).integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    masks = np.zeros((2, S, S), bool)
    masks[:, :, S // 2:] = True
    call = {"upscale": lambda **k: pipe.upscale(images, PROMPTS, seed=2, **k),
            "inpaint": lambda **k: pipe.inpaint(images, masks, PROMPTS, seed=2, **k),
            "outpaint": lambda **k: pipe.outpaint(images, PROMPTS, extend=f"right:{S // 2}", seed=2, **k),
            "edit": lambda **k: pipe.edit(images, PROMPTS, num_iters=2, seed=2, **k)}[method]
    stage = "superres" if method == "upscale" else "base"
    out, ids, pil = call(), call(output_type="ids"), call(output_type="pil")
    assert ids.dtype == torch.long and np.array_equal(pipe.decode(ids, stage), out)
    assert np.array_equal(np.stack([np.asarray(im) for im in pil]), out)
    with pytest.raises(ValueError, match="unknown output_type 'latent'; choose one of: np, pil, ids"):
        call(output_type="latent")
