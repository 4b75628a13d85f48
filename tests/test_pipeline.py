"""Pipeline and `minimuse generate`: shapes, determinism, the per-step history contract (docs/CONTRACTS.md) and the CLI errors.

A tiny pipeline checkpoint (the `ci` preset: 16 px images, a 4x4 grid, K = 32) is built once per module from
random-initialised models, with no training: the tests check the glue (text -> sampler -> decode, seeds, files,
error messages) exactly, not image quality. Every comparison is bit-exact against the sampler called directly.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minimuse.checkpoint import CheckpointError
from minimuse.cli import main
from minimuse.config import SAMPLER_NAMES, ConfigError
from minimuse.presets import get_config
from minimuse.pipeline import MusePipeline, load_pipeline
from minimuse.sampler import halton_order, sample
from minimuse.scheduler import mask_counts
from minimuse.tokenizer import Tokenizer
from minimuse.transformer import MaskedTransformer
from minimuse.viz import history_png, to_uint8

PROMPTS = ["two red circles", "a blue square to the left of a green triangle", "a yellow triangle"]
HISTORY_KEYS = {"ids", "mask", "committed", "confidence", "entropy", "remasked"}


@pytest.fixture(scope="module")
def pipe(ckpt):
    return load_pipeline(ckpt)


def direct(pipe: MusePipeline, prompts, seed=0, negative_prompt=None, **overrides):
    """What the pipeline should do, written out: encode, sampler.sample with a fresh generator, decode."""
    s = pipe.settings(**overrides)
    text = pipe.text_encoder(prompts)
    uncond = pipe.text_encoder([""] * len(prompts))
    neg = pipe.text_encoder([negative_prompt] * len(prompts)) if negative_prompt else None
    ids = sample(pipe.transformer, text, s, uncond=uncond, negative=neg, generator=torch.Generator(pipe.device).manual_seed(seed))
    return ids, to_uint8(pipe.tokenizer.decode(ids))


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------------------------------- Python API

def test_load_pipeline_round_trips_config_and_weights(pipe, ckpt):
    cfg = get_config("ci")
    assert pipe.config == cfg
    assert pipe.mask_id == cfg.tokenizer.codebook_size
    assert pipe.transformer.grid == cfg.grid
    saved = MaskedTransformer.from_pretrained(ckpt / "transformer").state_dict()
    for k, v in pipe.transformer.state_dict().items():
        assert torch.equal(v.cpu(), saved[k]), k
    assert not pipe.transformer.training and not pipe.tokenizer.training


def test_images_are_uint8_bhw3_of_the_image_size(pipe):
    images = pipe(PROMPTS[:2])
    S = pipe.config.data.image_size
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8
    assert images.shape == (2, S, S, 3)
    assert pipe("a red circle").shape == (1, S, S, 3)  # a bare string is one prompt


def test_same_seed_same_images_other_seed_other_images(pipe):
    a, b, c = pipe(PROMPTS, seed=3), pipe(PROMPTS, seed=3), pipe(PROMPTS, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    g = pipe(PROMPTS, generator=torch.Generator(pipe.device).manual_seed(3))  # an explicit generator replaces the seed
    assert np.array_equal(a, g)


@pytest.mark.parametrize("overrides", [
    {}, {"sampler": "halton"}, {"sampler": "random"}, {"schedule": "linear"}, {"guidance_scale": 0.0},
    {"guidance_scale": 2.0, "guidance_schedule": "linear"}, {"choice_temperature": 0.0},
    {"temperature": 0.5, "top_k": 3}, {"num_steps": 2},
], ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "defaults")
def test_pipeline_equals_the_sampler_called_directly(pipe, overrides):
    images, history = pipe(PROMPTS, seed=7, return_history=True, **overrides)
    ids, expected = direct(pipe, PROMPTS, seed=7, **overrides)
    assert torch.equal(history[-1]["ids"], ids.cpu())  # the pipeline hands the history back on the host
    assert np.array_equal(images, expected)


def test_history_contract(pipe):
    B, (h, w), T = 2, pipe.config.grid, 5
    images, history = pipe(PROMPTS[:B], num_steps=T, return_history=True)
    assert len(history) == T
    dtypes = {"ids": torch.long, "mask": torch.bool, "committed": torch.bool, "remasked": torch.bool}
    for step in history:
        assert set(step) == HISTORY_KEYS
        for key, value in step.items():
            assert value.shape == (B, h, w), key
            assert value.dtype == dtypes.get(key, value.dtype), key
            if key not in dtypes:
                assert value.is_floating_point(), key
        assert torch.equal(step["ids"] == pipe.mask_id, step["mask"])  # still-masked positions hold the mask id
        assert bool(((step["confidence"] >= 0) & (step["confidence"] <= 1)).all())
        assert bool((step["entropy"] >= 0).all())
    assert not history[-1]["mask"].any()
    committed = torch.stack([s["committed"] for s in history]).long()  # (T, B, h, w)
    assert torch.equal(committed.sum(0), torch.ones(B, h, w, dtype=torch.long))  # each position exactly once
    counts = mask_counts(h * w, T, pipe.config.sample.schedule)
    for t, step in enumerate(history):
        assert step["mask"].flatten(1).sum(1).tolist() == [counts[t]] * B
        before = history[t - 1]["mask"] if t else torch.ones(B, h, w, dtype=torch.bool)
        assert torch.equal(step["committed"], before & ~step["mask"])
    assert np.array_equal(to_uint8(pipe.tokenizer.decode(history[-1]["ids"])), images)


def test_halton_sampler_reaches_the_sampler(pipe):
    # Halton commits in a fixed order: step 0 commits exactly the first positions of halton_order.
    (h, w), T = pipe.config.grid, 4
    _, history = pipe(PROMPTS[:1], num_steps=T, sampler="halton", return_history=True)
    first = h * w - mask_counts(h * w, T, "cosine")[0]
    expected = torch.zeros(h * w, dtype=torch.bool)
    expected[list(halton_order(h, w)[:first])] = True
    assert torch.equal(history[0]["committed"][0].flatten(), expected)


def test_every_sampler_name_gives_its_own_images(pipe):
    assert pipe.critic is None  # this tiny checkpoint has no critic/: that sampler is refused by name
    with pytest.raises(ValueError, match="sampler 'critic' needs a trained critic"):
        pipe(PROMPTS, sampler="critic")
    outs = {name: pipe(PROMPTS, sampler=name) for name in SAMPLER_NAMES if name != "critic"}
    assert all(o.shape == outs["confidence"].shape for o in outs.values())
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(outs[a], outs[b]), (a, b)


def test_negative_prompt_replaces_the_unconditional_text(pipe):
    plain = pipe(PROMPTS, guidance_scale=3.0)
    neg = pipe(PROMPTS, guidance_scale=3.0, negative_prompt="a purple square")
    assert not np.array_equal(plain, neg)
    _, expected = direct(pipe, PROMPTS, guidance_scale=3.0, negative_prompt="a purple square")
    assert np.array_equal(neg, expected)


@pytest.mark.parametrize("prompts", ["", "   ", ["a red circle", ""], []])
def test_empty_prompt_is_a_value_error(pipe, prompts):
    with pytest.raises(ValueError, match="prompt"):
        pipe(prompts)


def test_bad_sampling_settings_raise_config_error(pipe):
    with pytest.raises(ConfigError, match="unknown sampler 'greedy'; choose one of: confidence, halton, random"):
        pipe(PROMPTS, sampler="greedy")
    with pytest.raises(ConfigError, match="num_steps"):
        pipe(PROMPTS, num_steps=0)
    with pytest.raises(ConfigError, match="schedule"):
        pipe(PROMPTS, schedule="sigmoid")


def test_load_pipeline_errors(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer/ and transformer/"):
        load_pipeline(tmp_path / "nothing")
    other = get_config("ci", **{"transformer.width": 32})
    with pytest.raises(CheckpointError, match="transformer.width"):
        load_pipeline(ckpt, config=other)


def test_load_pipeline_with_config_uses_its_sampling_defaults(ckpt):
    cfg = get_config("ci", **{"sample.num_steps": 2, "train.lr": 1e-5})  # not an architecture field: loads fine
    p = load_pipeline(ckpt, config=cfg)
    assert p.config.sample.num_steps == 2
    assert len(p(PROMPTS[:1], return_history=True)[1]) == 2


def test_tokenizer_codebook_must_match_the_transformer(ckpt, tmp_path):
    cfg = get_config("ci")
    small = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, codebook_size=16, fsq_levels=(4, 4)))
    Tokenizer(small.tokenizer).save_pretrained(tmp_path / "tokenizer", small)
    (tmp_path / "transformer").symlink_to(ckpt / "transformer", target_is_directory=True)
    with pytest.raises(CheckpointError, match="codebook_size"):
        load_pipeline(tmp_path)


# ----------------------------------------------------------------------------------------------------------- CLI

def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimuse: error: "), err
    for f in fragments:
        assert f in lines[0]


def test_generate_one_prompt_writes_the_pipelines_image(capsys, pipe, ckpt, tmp_path):
    out = tmp_path / "sub" / "x.png"
    code, stdout, err = run_cli(capsys, "generate", "two red circles", "--checkpoint", ckpt, "--out", out)
    assert code == 0, err
    assert out.name in stdout
    assert np.array_equal(read_png(out), pipe("two red circles", seed=0)[0])


def test_generate_options_reach_the_pipeline(capsys, pipe, ckpt, tmp_path):
    out = tmp_path / "o.png"
    code, _, err = run_cli(capsys, "generate", "a yellow triangle", "--checkpoint", ckpt, "--out", out, "--steps", 3,
                           "--guidance", 2.5, "--guidance-schedule", "linear", "--seed", 11, "--sampler", "random",
                           "--schedule", "linear", "--choice-temperature", 2.0, "--negative-prompt", "a red circle",
                           "--enlarge", 2)
    assert code == 0, err
    img = pipe("a yellow triangle", num_steps=3, guidance_scale=2.5, guidance_schedule="linear", seed=11,
               sampler="random", schedule="linear", choice_temperature=2.0, negative_prompt="a red circle")[0]
    assert np.array_equal(read_png(out), img.repeat(2, axis=0).repeat(2, axis=1))


def test_generate_upscale_is_the_old_spelling_of_enlarge(capsys, pipe, ckpt, tmp_path):
    """`upscale` now names the super-res stage only; the flag's old spelling still works, with one warning line."""
    code, _, err = run_cli(capsys, "generate", "a yellow triangle", "--checkpoint", ckpt, "--out", tmp_path / "o.png",
                           "--steps", 2, "--upscale", 3)
    assert code == 0 and err.strip().splitlines() == [
        "minimuse: warning: --upscale N is deprecated; use --enlarge N (`minimuse upscale` is the super-res stage)"], err
    img = pipe("a yellow triangle", num_steps=2)[0]
    assert np.array_equal(read_png(tmp_path / "o.png"), img.repeat(3, axis=0).repeat(3, axis=1))


def test_generate_prompts_file_writes_numbered_files_in_order(capsys, pipe, ckpt, tmp_path):
    prompts = PROMPTS + ["four green circles", "a cyan square"]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(prompts[:2]) + "\n\n" + "\n".join(prompts[2:]) + "\n")  # blank lines are skipped
    out_dir = tmp_path / "imgs"
    code, _, err = run_cli(capsys, "generate", "--prompts-file", f, "--out-dir", out_dir, "--checkpoint", ckpt,
                           "--seed", 5, "--batch-size", 2)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{i:03d}.png" for i in range(len(prompts))]
    # generate_cli draws batch by batch, the batch starting at prompt `start` with seed + start.
    for start in range(0, len(prompts), 2):
        expected = pipe(prompts[start:start + 2], seed=5 + start)
        for i, img in enumerate(expected):
            assert np.array_equal(read_png(out_dir / f"{start + i:03d}.png"), img), start + i


def test_generate_history_writes_the_step_figure(capsys, pipe, ckpt, tmp_path):
    steps = tmp_path / "steps.png"
    code, stdout, err = run_cli(capsys, "generate", "two red circles", "--checkpoint", ckpt, "--out",
                                tmp_path / "x.png", "--history", steps, "--steps", 3)
    assert code == 0, err
    assert "steps.png" in stdout
    _, history = pipe(["two red circles"], num_steps=3, return_history=True)
    assert steps.read_bytes() == history_png(history, pipe.tokenizer, pipe.mask_id)


def test_long_prompt_warns_and_still_writes(capsys, pipe, ckpt, tmp_path):
    prompt = " and ".join(["a red circle"] * 12)
    assert len(pipe.text_encoder.tokenizer(prompt)["input_ids"]) > pipe.config.text.max_length
    out = tmp_path / "long.png"
    with pytest.warns(UserWarning) as caught:  # the text encoder adds its own truncation warning
        code, _, err = run_cli(capsys, "generate", prompt, "--checkpoint", ckpt, "--out", out)
    assert code == 0, err
    limit = pipe.config.text.max_length
    assert any(f"longer than the encoder's limit of {limit}" in str(w.message) for w in caught)
    assert read_png(out).shape == (pipe.config.data.image_size,) * 2 + (3,)


def test_generate_error_paths(capsys, ckpt, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    out = tmp_path / "never.png"
    cases = [
        (["--prompts-file", empty, "--out-dir", tmp_path / "d"], ["holds no prompts"]),
        (["--prompts-file", tmp_path / "missing.txt", "--out-dir", tmp_path / "d"], ["does not exist"]),
        (["a red circle", "--steps", 0], ["--steps must be at least 1"]),
        (["a red circle", "--steps", -3], ["--steps must be at least 1"]),
        ([""], ["empty prompt"]),
        (["   "], ["empty prompt"]),
        ([], ["give a prompt"]),
    ]
    for args, fragments in cases:
        code, _, err = run_cli(capsys, "generate", *args, "--checkpoint", ckpt, "--out", out)
        assert_one_line_error(code, err, *fragments)
    code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", tmp_path / "nope", "--out", out)
    assert_one_line_error(code, err, "no pipeline checkpoint", "tokenizer/ and transformer/")
    assert not out.exists() and not (tmp_path / "d").exists()


def test_unknown_sampler_is_rejected_by_argparse(capsys, ckpt, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["generate", "a red circle", "--checkpoint", str(ckpt), "--sampler", "greedy"])
    assert e.value.code == 2
    assert "invalid choice: 'greedy'" in capsys.readouterr().err


def test_dataset_command(capsys, tmp_path):
    data = pytest.importorskip("minimuse.data")
    if not hasattr(data, "write_dataset"):
        pytest.skip("minimuse.data has no write_dataset yet")
    out = tmp_path / "ds"
    code, stdout, err = run_cli(capsys, "dataset", "--n", 3, "--out-dir", out, "--size", 16, "--seed", 2)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "002.png", "captions.jsonl", "grid.png"]
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        s = data.make_sample(2, i, 16)
        assert row["file"] == f"{i:03d}.png" and row["caption"] == s["caption"] and row["kind"] == s["kind"]
        assert np.array_equal(read_png(out / row["file"]), s["image"])
    code, _, err = run_cli(capsys, "dataset", "--n", 0, "--out-dir", tmp_path / "ds0")
    assert_one_line_error(code, err, "--n must be at least 1")


def test_bf16_precision_runs_the_transformer_in_bf16_and_fp32_stays_fp32(pipe):
    seen = []
    hook = pipe.transformer.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        fp32 = pipe("a red circle", num_steps=2, seed=0)
        assert set(seen) == {torch.float32}
        seen.clear()
        bf16 = pipe("a red circle", num_steps=2, seed=0, precision="bf16")
        assert set(seen) == {torch.bfloat16}
    finally:
        hook.remove()
    assert bf16.dtype == fp32.dtype == np.uint8 and bf16.shape == fp32.shape
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        pipe("a red circle", precision="fp8")


def test_generate_precision_flag_reaches_the_pipeline(capsys, pipe, ckpt, tmp_path):
    out = tmp_path / "b.png"
    code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", ckpt, "--out", out, "--steps", 3,
                           "--precision", "bf16")
    assert code == 0, err
    assert np.array_equal(read_png(out), pipe("a red circle", num_steps=3, seed=0, precision="bf16")[0])


@pytest.mark.cuda
def test_pipeline_device_default_and_move(ckpt):
    """load_pipeline puts all three models on the default device (the CPU here); .to() moves them and keeps images."""
    from minimuse.pipeline import default_device
    p = load_pipeline(ckpt, device="cpu")
    parts = (p.transformer, p.tokenizer)
    assert {next(m.parameters()).device.type for m in parts} == {"cpu"} and p.text_encoder.device.type == "cpu"
    assert load_pipeline(ckpt).device.type == default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    before = p(PROMPTS[:2], seed=3)
    assert p.to("cpu") is p and np.array_equal(p(PROMPTS[:2], seed=3), before)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: checks a GPU model draws the CPU's images")
def test_cuda_pipeline_draws_what_the_cpu_draws(ckpt):
    """Given the CPU's generator, a GPU pipeline makes the CPU's draws, so only arithmetic differs: nearly every pixel
    agrees. (By default a GPU pipeline draws from a CUDA generator, which is faster and gives other images.)"""
    cpu, gpu = load_pipeline(ckpt, device="cpu"), load_pipeline(ckpt, device="cuda")
    a, b = cpu(PROMPTS, seed=1), gpu(PROMPTS, generator=torch.Generator().manual_seed(1))
    assert gpu.device.type == "cuda" and a.shape == b.shape
    assert (a == b).mean() > 0.9
