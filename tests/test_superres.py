"""The super-res stage (Muse §2.4): the low-res encoder and the [text ; low-res] context, its training data and loop,
the cascade in the pipeline, and `minimuse upscale`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from minimuse.checkpoint import load_tree, save_tree
from minimuse.cli import main
from minimuse.config import Config, ConfigError, SampleConfig
from minimuse.presets import get_config
from minimuse.pipeline import DEFAULT_CHECKPOINT, load_pipeline
from minimuse.pool import build_token_pool, train_step_inputs
from minimuse.runs import SUPERRES_STATE
from minimuse.sampler import sample
from minimuse.scheduler import masked_ce
from minimuse.superres import SuperResTransformer, decimate
from minimuse.tokenizer import Tokenizer
from minimuse.train import train_superres
from tiny import make_tiny_pipeline

CI = get_config("ci")
OVERRIDES = {"superres.train.steps": 6, "superres.train.batch_size": 8, "data.pool_size": 32,
             "superres.train.ckpt_every": 3, "superres.train.log_every": 1}


def _model(seed=0):
    torch.manual_seed(seed)
    return SuperResTransformer.from_config(CI).eval()


def _inputs(m, B=3, T=5):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, m.codebook_size, (B, *m.grid), generator=g)
    lo = torch.randint(0, m.lowres_codebook_size, (B, *m.lowres_grid), generator=g)
    text = torch.randn(B, T, m.text_dim, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    return ids, lo, text, mask


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    """A ci pipeline checkpoint with a random-initialised super-res stage beside it."""
    root = make_tiny_pipeline(tmp_path_factory.mktemp("cascade"))
    torch.manual_seed(1)
    Tokenizer(CI.superres.tokenizer).save_pretrained(root / "superres_tokenizer", CI, stage="superres")
    SuperResTransformer.from_config(CI).save_pretrained(root / "superres", CI)
    return root


# ------------------------------------------------------------------------------------------------------- the model
def test_lowres_encoder_and_concatenated_context_shapes():
    m = _model()
    ids, lo, text, mask = _inputs(m)
    (h, w), (hl, wl), D, H = m.grid, m.lowres_grid, m.cfg.width, m.cfg.heads
    assert m.encode_lowres(lo).shape == (3, hl * wl, D)
    ctx = m.encode_text(text, mask, lo)
    k, v = ctx.kv[0]
    assert k.shape == v.shape == (3, H, 5 + hl * wl, D // H)  # text and low-res side by side on the sequence axis
    assert len(ctx.kv) == len(m.blocks) and ctx.attn_mask is None  # all real: no mask at all
    assert m(ids, text, mask, lowres_ids=lo).shape == (3, h * w, m.codebook_size)


def test_encoder_blocks_have_no_cross_attention_and_the_main_blocks_are_transformer_blocks():
    m = _model()
    from minimuse.transformer import Block
    assert all(isinstance(b, Block) and b.cross is None for b in m.lowres_blocks)
    assert all(isinstance(b, Block) and b.cross is not None for b in m.blocks)


def test_padded_text_gets_no_attention_and_lowres_positions_do():
    m = _model()
    ids, lo, text, mask = _inputs(m)
    mask[0, 3:] = False  # the first prompt has 3 real tokens and 2 of padding
    _, attns = m(ids, text, mask, lowres_ids=lo, return_attn=True)
    for a in attns:  # (B, H, L, T + Llo)
        assert torch.all(a[0, :, :, 3:5] == 0)
        assert torch.all(a[0, :, :, 5:].sum(-1) > 0) and torch.all(a[1:, :, :, 3:5] > 0)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    # what sits in a padded slot cannot change the output; what sits in the low-res grid does
    text2 = text.clone()
    text2[0, 3:] = 100.0
    torch.testing.assert_close(m(ids, text2, mask, lowres_ids=lo)[0], m(ids, text, mask, lowres_ids=lo)[0])
    lo2 = lo.clone()
    lo2[0, 0, 0] = (lo[0, 0, 0] + 1) % m.lowres_codebook_size
    assert not torch.allclose(m(ids, text, mask, lowres_ids=lo2)[0], m(ids, text, mask, lowres_ids=lo)[0])


def test_lowres_positions_matter():
    """The encoder's own 2-D positions: the same tokens in another order are another image."""
    m = _model()
    ids, lo, text, mask = _inputs(m)
    flipped = lo.flip(-1)
    assert not torch.allclose(m.encode_lowres(flipped), m.encode_lowres(lo).view(3, *m.lowres_grid, -1).flip(2).reshape(3, -1, m.cfg.width))


def test_missing_or_malformed_lowres_is_a_clear_error():
    m = _model()
    ids, lo, text, mask = _inputs(m)
    with pytest.raises(ValueError, match="pass lowres_ids"):
        m(ids, text, mask)
    with pytest.raises(ValueError, match="lowres_ids must be a"):
        m(ids, text, mask, lowres_ids=lo[:, :2])
    with pytest.raises(ValueError, match=r"no \[MASK\] left"):
        m(ids, text, mask, lowres_ids=lo.clamp(min=m.lowres_codebook_size))


def test_decimate_is_the_box_filter():
    x = torch.rand(2, 3, 8, 8)
    manual = x.view(2, 3, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(decimate(x), manual)


def test_sampler_drives_the_superres_model_with_guidance_and_history():
    m = _model()
    _, lo, text, mask = _inputs(m)
    uncond = torch.randn(1, 2, m.text_dim)
    guided = SampleConfig(num_steps=4, guidance_scale=2.0)
    run = lambda low, seed=0: sample(m, (text, mask), guided, uncond=(uncond, None), lowres_ids=low,  # noqa: E731
                                     generator=torch.Generator().manual_seed(seed), return_history=True)
    ids, hist = run(lo)
    assert ids.shape == (3, *m.grid) and len(hist) == 4 and not bool(hist[-1]["mask"].any())
    assert torch.equal(run(lo)[0], ids)                          # same seed, same tokens
    argmax = SampleConfig(num_steps=4, temperature=0.0, choice_temperature=0.0, guidance_scale=0.0)
    greedy = lambda low: sample(m, (text, mask), argmax, lowres_ids=low)  # noqa: E731
    assert not torch.equal(greedy(lo.flip(-1)), greedy(lo))      # the low-res grid steers the draw


# -------------------------------------------------------------------------------------------------- data and loss
@pytest.fixture(scope="module")
def tokenizers():
    torch.manual_seed(0)
    return Tokenizer(CI.tokenizer).eval(), Tokenizer(CI.superres.tokenizer).eval()


def test_pairs_are_one_scene_at_both_sizes(tokenizers):
    from minimuse.data import make_sample, to_tensor
    lo_tok, hi_tok = tokenizers
    pool = build_token_pool(CI, hi_tok, 8, lowres_tokenizer=lo_tok)
    S, s = CI.superres.image_size, CI.data.image_size
    assert pool["ids"].shape == (8, S // 4, S // 4) and pool["lowres_ids"].shape == (8, *CI.grid)
    hi = torch.stack([to_tensor(make_sample(CI.data.train_seed, i, S, CI.data.kinds)["image"]) for i in range(8)])
    small = decimate(hi, S // s).mul(255).round().div(255)
    assert torch.equal(pool["lowres_ids"].long(), lo_tok.encode(small))
    assert torch.equal(pool["ids"].long(), hi_tok.encode(hi))


def test_superres_batches_mask_only_high_res_tokens_and_loss_reads_only_them(tokenizers):
    lo_tok, hi_tok = tokenizers
    pool = build_token_pool(CI, hi_tok, 16, lowres_tokenizer=lo_tok)
    table = (torch.randn(len(pool["vocab"]), 4, 384), torch.ones(len(pool["vocab"]), 4, dtype=torch.bool))
    m = _model()
    inputs, labels, text, tmask, lowres = train_step_inputs(pool, table, CI, 3, 8, m.mask_id)
    assert inputs.shape == (8, m.grid[0] * m.grid[1]) and lowres.shape == (8, *m.lowres_grid)
    assert torch.equal(inputs == m.mask_id, labels != -100)      # labels exactly at the masked high-res tokens
    assert int(lowres.max()) < m.lowres_codebook_size            # the low-res grid is never masked
    logits = m(inputs, text, tmask, lowres_ids=lowres)
    changed = logits.clone()
    changed[labels == -100] = torch.randn_like(changed[labels == -100]) * 50
    torch.testing.assert_close(masked_ce(changed, labels), masked_ce(logits, labels))


def test_lowres_noise_replaces_that_share_of_low_res_tokens_and_nothing_else(tokenizers):
    lo_tok, hi_tok = tokenizers
    pool = build_token_pool(CI, hi_tok, 16, lowres_tokenizer=lo_tok)
    table = (torch.randn(len(pool["vocab"]), 4, 384), torch.ones(len(pool["vocab"]), 4, dtype=torch.bool))
    mask_id = CI.superres.tokenizer.codebook_size
    clean = train_step_inputs(pool, table, CI, 3, 64, mask_id)
    noisy_cfg = get_config("ci", **{"superres.lowres_noise": 0.25})
    noisy = train_step_inputs(pool, table, noisy_cfg, 3, 64, mask_id)
    for a, b in zip(clean[:4], noisy[:4]):  # the high-res inputs, labels and text are the same batch
        assert torch.equal(a, b)
    flipped = (clean[4] != noisy[4]).float().mean().item()
    # a replaced token keeps its code with chance 1/K, so about 0.25 * (1 - 1/K) of them differ (4,096 tokens here)
    assert 0.19 < flipped < 0.31 and int(noisy[4].max()) < CI.tokenizer.codebook_size
    assert torch.equal(noisy[4], train_step_inputs(pool, table, noisy_cfg, 3, 64, mask_id)[4])  # a function of the step
    two = [train_step_inputs(pool, table, noisy_cfg, 3, 32, mask_id, rank=r, world=2)[4] for r in (0, 1)]
    assert torch.equal(torch.cat(two), noisy[4])  # two processes split the one global batch


# ---------------------------------------------------------------------------------------------------- the loop
def test_resume_equals_uninterrupted_run(tmp_path, tokenizers):
    lo_tok, hi_tok = tokenizers
    lo_tok.save_pretrained(tmp_path / "lo", CI)
    hi_tok.save_pretrained(tmp_path / "hi", CI, stage="superres")
    cfg = get_config("ci", **OVERRIDES)
    dirs = dict(tokenizer_dir=tmp_path / "lo", superres_tokenizer_dir=tmp_path / "hi")
    train_superres(cfg, tmp_path / "straight", **dirs)
    half = tmp_path / "half"
    train_superres(get_config("ci", **{**OVERRIDES, "superres.train.steps": 3}), half, **dirs)
    state = load_tree(half / SUPERRES_STATE)
    state["config"] = cfg.to_dict()  # as a kill at step 3 of the 6-step run would leave it
    save_tree(half / SUPERRES_STATE, state)
    train_superres(cfg, half, resume=True, **dirs)
    a = load_file(tmp_path / "straight" / "superres" / "model.safetensors")
    b = load_file(half / "superres" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("lowres_blocks.") for k in a)
    logs = [json.loads(line) for line in (half / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 7))
    # the run directory is an upscaler checkpoint: it loads and upscales
    pipe = load_pipeline(half, device="cpu")
    assert pipe.transformer is None and pipe.superres is not None
    with pytest.raises(ValueError, match="only the super-res stage"):
        pipe("a red circle")


def test_preset_without_superres_is_refused(tmp_path):
    cfg = get_config("gpu")
    with pytest.raises(ValueError, match="no super-res stage"):
        train_superres(cfg, tmp_path)


def test_superres_config_is_checked(capsys):
    with pytest.raises(ConfigError, match=r"'superres\.sample\.temperature'"):
        get_config("ci", **{"superres.sample.temperature": -1.0})
    with pytest.raises(ConfigError, match=r"'superres\.sample\.num_steps'"):
        get_config("ci", **{"superres.num_steps": 0})  # the old spelling: the same check, after a one-line notice
    assert "superres.num_steps is deprecated; use superres.sample.num_steps" in capsys.readouterr().err
    assert get_config("ci", **{"superres.temperature": "0.5"}).superres.sample.temperature == 0.5
    with pytest.raises(ConfigError, match="superres.lowres_noise"):
        get_config("ci", **{"superres.lowres_noise": 1.5})


def test_a_config_written_before_the_stage_held_its_own_sampling_settings_loads():
    d = CI.to_dict()
    d["superres"].pop("sample")
    d["superres"].update(num_steps=6, guidance_scale=0.5, temperature=0.25)  # the old config.json's three fields
    assert Config.from_dict(d).superres.sample == SampleConfig(num_steps=6, guidance_scale=0.5, temperature=0.25)
    assert Config.from_dict(CI.to_dict()) == CI


# ------------------------------------------------------------------------------------------------- the pipeline
def test_cascade_returns_high_res_and_superres_false_the_base(cascade):
    pipe = load_pipeline(cascade, device="cpu")
    S, S2 = CI.data.image_size, CI.superres.image_size
    big, hist = pipe(["a red circle", "two blue squares"], seed=3, return_history=True)
    small = pipe(["a red circle", "two blue squares"], seed=3, superres=False)
    assert big.shape == (2, S2, S2, 3) and small.shape == (2, S, S, 3)
    stages = [h["stage"] for h in hist]  # the docstring's promise: every step of a cascade names its stage
    assert stages == ["base"] * CI.sample.num_steps + ["superres"] * CI.superres.sample.num_steps
    # the cascade's base stage is the base output: its last base grid decodes to `small`
    np.testing.assert_array_equal(pipe.decode(hist[CI.sample.num_steps - 1]["ids"]), small)
    np.testing.assert_array_equal(pipe(["a red circle", "two blue squares"], seed=3), big)  # same seed, same image
    # upscaling the base output by hand with the same generator stream gives the cascade's image
    g = torch.Generator().manual_seed(3)
    ids, _ = pipe.sample_ids(["a red circle", "two blue squares"], pipe.settings(), generator=g)
    hi, _ = pipe.upscale_ids(ids, ["a red circle", "two blue squares"], generator=g)
    np.testing.assert_array_equal(pipe.decode(hi, "superres"), big)


def test_upscale_checks_its_images(cascade):
    pipe = load_pipeline(cascade, device="cpu")
    S = CI.data.image_size
    out = pipe.upscale(np.zeros((2, S, S, 3), np.uint8), ["a red circle", "a green triangle"])
    assert out.shape == (2, 2 * S, 2 * S, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="uint8 images of shape"):
        pipe.upscale(np.zeros((1, 2 * S, 2 * S, 3), np.uint8), ["a red circle"])
    with pytest.raises(ValueError, match="one prompt per image"):
        pipe.upscale(np.zeros((2, S, S, 3), np.uint8), ["a red circle"])


def test_base_only_checkpoint_refuses_superres_true(ckpt):
    pipe = load_pipeline(ckpt, device="cpu")
    assert pipe.superres is None
    assert pipe("a red circle").shape[1] == CI.data.image_size
    with pytest.raises(ValueError, match="no super-res stage"):
        pipe("a red circle", superres=True)


def test_superres_without_its_tokenizer_is_refused(cascade, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(cascade, broken)
    shutil.rmtree(broken / "superres_tokenizer")
    from minimuse.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="no superres_tokenizer"):
        load_pipeline(broken, device="cpu")


def test_shipped_cascade_loads_strictly():
    if not (DEFAULT_CHECKPOINT / "superres").is_dir():
        pytest.fail("the laptop checkpoint ships a super-res stage (data/checkpoints/laptop/superres)")
    m = SuperResTransformer.from_pretrained(DEFAULT_CHECKPOINT / "superres")  # strict: every key, every shape
    pipe = load_pipeline(device="cpu")
    assert pipe.superres is not None and pipe.superres.lowres_grid == pipe.transformer.grid
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in pipe.superres.parameters())
    # the finetuned decoder (Muse §2.5) decodes the cascade; its encoder and codebook are the tokenizer's, bit for bit
    original = Tokenizer.from_pretrained(DEFAULT_CHECKPOINT / "superres_tokenizer")
    finetuned = Tokenizer.from_pretrained(DEFAULT_CHECKPOINT / "superres_decoder")
    a, b = original.state_dict(), finetuned.state_dict()
    frozen = [k for k in a if not k.startswith("decoder.")]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    assert sum(p.numel() for p in finetuned.decoder.parameters()) > sum(p.numel() for p in original.decoder.parameters())
    assert all(torch.equal(v, finetuned.state_dict()[k]) for k, v in pipe.superres_tokenizer.state_dict().items())


# ------------------------------------------------------------------------------------------------ the commands
def _png(path, size):
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)


def test_generate_writes_high_res_and_no_superres_the_base(cascade, tmp_path):
    assert main(["generate", "a red circle", "--checkpoint", str(cascade), "--out", str(tmp_path / "a.png")]) == 0
    assert main(["generate", "a red circle", "--checkpoint", str(cascade), "--out", str(tmp_path / "b.png"),
                 "--no-superres"]) == 0
    assert Image.open(tmp_path / "a.png").size == (CI.superres.image_size,) * 2
    assert Image.open(tmp_path / "b.png").size == (CI.data.image_size,) * 2


def test_upscale_cli_one_image_and_a_directory(cascade, tmp_path):
    S = CI.data.image_size
    _png(tmp_path / "in.png", S)
    assert main(["upscale", str(tmp_path / "in.png"), "--prompt", "a red circle", "--checkpoint", str(cascade),
                 "--out", str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (2 * S, 2 * S)
    assert main(["dataset", "--n", "3", "--size", str(S), "--out-dir", str(tmp_path / "ds")]) == 0
    assert main(["upscale", "--in-dir", str(tmp_path / "ds"), "--out-dir", str(tmp_path / "up"),
                 "--checkpoint", str(cascade)]) == 0
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == ["000.png", "001.png", "002.png"]
    assert all(Image.open(p).size == (2 * S, 2 * S) for p in (tmp_path / "up").iterdir())


def test_upscale_cli_error_paths(cascade, tmp_path, capsys):
    S = CI.data.image_size
    _png(tmp_path / "big.png", 2 * S)
    assert main(["upscale", str(tmp_path / "big.png"), "--prompt", "a red circle", "--checkpoint", str(cascade),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert f"upscale takes the base size, {S}x{S} px" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
    d = tmp_path / "d"
    d.mkdir()
    _png(d / "a.png", S)
    _png(d / "b.png", S)
    assert main(["upscale", "--in-dir", str(d), "--out-dir", str(tmp_path / "o"), "--checkpoint", str(cascade)]) == 2
    assert "captions.jsonl is missing" in capsys.readouterr().err
    (d / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "a red circle"}) + "\n")
    assert main(["upscale", "--in-dir", str(d), "--out-dir", str(tmp_path / "o"), "--checkpoint", str(cascade)]) == 2
    assert "have no caption in captions.jsonl, e.g. b.png" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before every input was checked


# --------------------------------------------------------------------------------------- decoder finetuning (§2.5)
def test_finetune_decoder_keeps_the_tokens_and_the_pipeline_decodes_with_it(cascade, tmp_path, capsys):
    import shutil
    out = tmp_path / "dec"
    assert main(["finetune-decoder", "--preset", "ci", "--checkpoint", str(cascade), "--out", str(out), "--eval-n", "8",
                 "--set", "superres.decoder.steps=3", "--set", "superres.decoder.channels=24",
                 "--set", "superres.decoder.res_blocks=2"]) == 0
    assert "PSNR" in capsys.readouterr().out
    src, new = Tokenizer.from_pretrained(cascade / "superres_tokenizer"), Tokenizer.from_pretrained(out)
    for part in ("encoder", "quantizer"):  # frozen: bit for bit, codebook EMA buffers included
        a, b = getattr(src, part).state_dict(), getattr(new, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    n_src = sum(p.numel() for p in src.decoder.parameters())
    n_new = sum(p.numel() for p in new.decoder.parameters())
    assert n_new > n_src and new.config.decoder_channels == 24 and new.config.decoder_res_blocks == 2
    x = torch.rand(2, 3, CI.superres.image_size, CI.superres.image_size)
    assert torch.equal(src.encode(x), new.encode(x))  # same tokens, so the transformers need no retraining
    r = json.loads((out / "eval.json").read_text())
    assert r["gain_db"] == pytest.approx(r["after"]["psnr"] - r["before"]["psnr"], abs=0.01)
    shutil.copytree(cascade, tmp_path / "c")
    shutil.copytree(out, tmp_path / "c" / "superres_decoder", ignore=shutil.ignore_patterns("*state*", "log.jsonl"))
    pipe = load_pipeline(tmp_path / "c", device="cpu")
    assert sum(p.numel() for p in pipe.superres_tokenizer.decoder.parameters()) == n_new


def test_eval_superres_task(cascade, capsys):
    assert main(["eval", "--checkpoint", str(cascade), "--task", "superres", "--n", "1"]) == 0
    r = json.loads(capsys.readouterr().out)["superres"]
    assert r["leak_test"]["drop_db"] == pytest.approx(r["upscale"]["superres_psnr"] - r["leak_test"]["shuffled_psnr"], abs=0.011)
    assert r["upscale"]["gain_over_bicubic_db"] == pytest.approx(
        r["upscale"]["superres_psnr"] - r["upscale"]["bicubic_psnr"], abs=0.011)
    f = r["faithfulness"]
    for k, v in r["cascade_minus_base_points"].items():
        assert v == pytest.approx(100 * (f["cascade"]["by_kind"][k] - f["base"]["by_kind"][k]), abs=0.06)
    assert main(["eval", "--checkpoint", str(cascade), "--task", "superres", "--steps", "3"]) == 2
    assert "drop the sampling flags" in capsys.readouterr().err


# ------------------------------------------------------------------------------- editing at the high-res size (§3.3)
def test_high_res_inpaint_takes_the_multi_scale_route_and_keeps_every_outside_token(cascade, monkeypatch):
    from minimuse.editing import cell_mask
    pipe = load_pipeline(cascade, device="cpu")
    S2 = CI.superres.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, S2, S2, 3), dtype=np.uint8)
    masks = np.zeros((2, S2, S2), bool)
    masks[0, 4:12, 8:20] = True
    masks[1, 20:30, 2:9] = True
    decoded = {}
    real_decode = pipe.decode
    def spy(ids, stage="base"):  # the ids each stage decodes, kept for the check below
        decoded[stage] = ids
        return real_decode(ids, stage)
    monkeypatch.setattr(pipe, "decode", spy)
    out, history = pipe.inpaint(images, masks, "a red circle", return_history=True)
    assert out.shape == images.shape
    region = torch.from_numpy(cell_mask(masks, pipe.superres.grid))
    known = pipe.encode_images(images, "superres")
    assert torch.equal(decoded["superres"][~region], known[~region])   # bit for bit outside the region
    assert {h.get("stage", "base") for h in history} == {"base", "superres"}
    np.testing.assert_array_equal(pipe.inpaint(images, masks, "a red circle"), out)  # same seed, same edit


def test_high_res_mask_free_edit_and_outpaint(cascade):
    pipe = load_pipeline(cascade, device="cpu")
    S2 = CI.superres.image_size
    images = np.zeros((1, S2, S2, 3), np.uint8)
    out, kept = pipe.edit(images, "a red circle", num_iters=4, return_history=True, history_at=(2, 4))
    assert out.shape == images.shape and sorted(kept) == [2, 4] and kept[4].shape == images.shape
    with pytest.raises(NotImplementedError, match="outpainting draws at the base model's size"):
        pipe.outpaint(images, "a red circle")


def test_load_pipeline_superres_false_loads_the_base_stage_only(cascade):
    pipe = load_pipeline(cascade, device="cpu", superres=False)
    assert pipe.superres is None and pipe("a red circle").shape[1] == CI.data.image_size
