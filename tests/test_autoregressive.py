"""The autoregressive baseline: causality, the KV cache against full re-runs, loading, and its training targets."""
import dataclasses

import pytest
import torch

from minimuse.autoregressive import ARTransformer, KVCache, generate
from minimuse.checkpoint import CheckpointError
from minimuse.config import SampleConfig
from minimuse.editing import edit as edit_images
from minimuse.presets import get_config
from minimuse.pipeline import load_pipeline
from minimuse.transformer import MaskedTransformer
from tests.tiny import make_tiny_pipeline

CFG = get_config("ci", **{"transformer.kind": "autoregressive"})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ARTransformer.from_config(CFG).eval()


def _text(B, T=6, pad_from=4):
    g = torch.Generator().manual_seed(1)
    text = torch.randn(B, T, CFG.text.text_dim, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1:, pad_from:] = False  # padded rows: the cache path must apply the text mask as the full pass does
    return text, mask


def test_logits_at_i_depend_only_on_earlier_tokens(model):
    text, mask = _text(2)
    L, K = model.grid[0] * model.grid[1], model.codebook_size
    ids = torch.randint(0, K, (2, L), generator=torch.Generator().manual_seed(2))
    j = L // 2
    changed = ids.clone()
    changed[:, j] = (ids[:, j] + 1) % K
    with torch.no_grad():
        a, b = model(ids, text, mask), model(changed, text, mask)
    assert torch.equal(a[:, :j + 1], b[:, :j + 1])  # position j's own logits do not see token j (shifted input)
    assert (a[:, j + 1] - b[:, j + 1]).abs().max() > 1e-4  # the next position does


def test_decode_step_with_cache_equals_teacher_forcing(model):
    text, mask = _text(3)
    L = model.grid[0] * model.grid[1]
    ids = torch.randint(0, model.codebook_size, (3, L), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids, text, mask)  # (B, L, K)
        layers = model.text_layers(model.encode_text(text, mask), 3)
        caches, prev, steps = [KVCache(L) for _ in model.blocks], torch.full((3,), model.bos_id), []
        for i in range(L):
            steps.append(model.decode_step(prev, i, layers, caches))
            prev = ids[:, i]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("guidance, ramp", [(0.0, "constant"), (2.0, "constant"), (2.0, "linear")])
def test_cached_and_uncached_decoding_draw_identical_tokens(model, guidance, ramp):
    text, mask = _text(3)
    uncond = torch.randn(1, 2, CFG.text.text_dim, generator=torch.Generator().manual_seed(4))
    s = SampleConfig(guidance_scale=guidance, guidance_schedule=ramp, top_k=5)
    draws = [generate(model, (text, mask), s, uncond=(uncond, None), use_cache=c,
                      generator=torch.Generator().manual_seed(5)) for c in (True, False)]
    assert torch.equal(draws[0], draws[1])
    assert draws[0].shape == (3, *model.grid) and int(draws[0].max()) < model.codebook_size


def test_guidance_changes_the_draw(model):
    text, mask = _text(2)
    uncond = torch.randn(1, 2, CFG.text.text_dim, generator=torch.Generator().manual_seed(4))
    a, b = (generate(model, (text, mask), SampleConfig(guidance_scale=w), uncond=(uncond, None),
                     generator=torch.Generator().manual_seed(5)) for w in (0.0, 3.0))
    assert not torch.equal(a, b)


def test_kv_cache_refuses_to_overflow():
    cache = KVCache(2)
    k = torch.zeros(1, 1, 2, 4)
    cache.append(k, k)
    with pytest.raises(ValueError, match="holds 2 positions"):
        cache.append(k[:, :, :1], k[:, :, :1])


def test_pipeline_loads_the_autoregressive_class_and_draws_with_its_loop(tmp_path):
    root = make_tiny_pipeline(tmp_path / "masked")
    torch.manual_seed(0)
    ar = ARTransformer.from_config(CFG)
    ar.save_pretrained(root / "transformer", CFG)  # same shapes and keys as the masked model: only the kind differs
    pipe = load_pipeline(root, device="cpu")
    assert isinstance(pipe.transformer, ARTransformer)
    torch.testing.assert_close(pipe.transformer.state_dict()["head.weight"], ar.state_dict()["head.weight"])
    with pytest.raises(CheckpointError, match="'autoregressive' transformer"):
        MaskedTransformer.from_pretrained(root / "transformer")
    assert pipe.autoregressive
    s = pipe.settings(num_steps=4)
    via_pipe = pipe(["a red circle", "two blue squares"], seed=6, num_steps=4, output_type="ids")
    text = pipe.text_encoder(["a red circle", "two blue squares"])
    direct = generate(pipe.transformer, text, s, uncond=pipe.text_encoder([""]), generator=torch.Generator().manual_seed(6))
    assert torch.equal(via_pipe, direct)  # the pipeline picked the raster loop, with the same settings and draws
    with pytest.raises(ValueError, match="raster order"):
        pipe(["a red circle"], num_steps=4, return_history=True)
    with pytest.raises(ValueError, match="raster order"):
        edit_images(pipe, pipe(["a red circle"], num_steps=4), ["a blue circle"], num_iters=1)


def test_masked_class_refuses_an_autoregressive_config():
    with pytest.raises(ValueError, match="builds transformer.kind 'masked'"):
        MaskedTransformer.from_config(CFG)
    with pytest.raises(ValueError, match="transformer.kind"):
        get_config("ci", **{"transformer.kind": "diffusion"})


def test_laptop_ar_preset_matches_laptop_budget():
    # its equal-budget partner is the AdamW recipe it was trained beside (docs/AUTOREGRESSIVE.md), now laptop-adamw
    ar, base = get_config("laptop-ar"), get_config("laptop-adamw")
    assert ar.transformer == dataclasses.replace(base.transformer, kind="autoregressive")
    assert ar.train == base.train and ar.tokenizer == base.tokenizer and ar.data == base.data and ar.text == base.text


def test_compare_ar_rows_carry_the_asked_keys_and_the_physics():
    from minimuse.bench import compare_ar
    cfg = get_config("ci", **{"sample.num_steps": 4})
    rows = compare_ar(cfg, tokens=(16, 64), batch_sizes=(1, 2), repeats=3)
    assert [(r["tokens"], r["batch"]) for r in rows] == [(16, 1), (16, 2), (64, 1), (64, 2)]
    for r in rows:
        assert {"tokens", "batch", "parallel_steps", "parallel_ms", "autoregressive_ms", "parallel_passes",
                "autoregressive_passes"} <= set(r)
        assert (r["parallel_passes"], r["autoregressive_passes"]) == (4, r["tokens"])
        # T full passes over L tokens against L one-token passes: the parallel sampler does more work per image
        assert r["parallel_gflop"] > 2 * r["autoregressive_gflop"] > 0
    with pytest.raises(ValueError, match="not a square"):
        compare_ar(cfg, tokens=(20,), batch_sizes=(1,), repeats=1)


def test_bench_compare_ar_cli_refuses_a_non_square_token_count(capsys):
    from minimuse.cli import main
    assert main(["bench", "--compare-ar", "--preset", "ci", "--tokens", "16", "50"]) != 0
    err = capsys.readouterr().err
    assert "--tokens 50 is not a square" in err and len(err.strip().splitlines()) == 1


def test_bench_device_flag_belongs_to_compare_ar_and_is_recorded(capsys):
    import json
    from minimuse.cli import main
    assert main(["bench", "--preset", "ci", "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "--device applies to --compare-ar only" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "--compare-ar", "--preset", "ci", "--tokens", "16", "--batch-sizes", "1", "--repeats", "1",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"]["device"] == "cpu" and [r["tokens"] for r in out["compare_ar"]] == [16]


def test_half_precision_storage_loads_back_as_the_rounded_fp32_weights(tmp_path, model):
    """How the shipped laptop-ar and critic fit data/'s budget: floats stored in fp16, loaded into fp32."""
    model.save_pretrained(tmp_path / "fp32", CFG)
    model.save_pretrained(tmp_path / "fp16", CFG, dtype=torch.float16)
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("fp16") < 0.55 * size("fp32")
    back = ARTransformer.from_pretrained(tmp_path / "fp16").state_dict()
    for k, v in model.state_dict().items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v.half().to(v.dtype))
