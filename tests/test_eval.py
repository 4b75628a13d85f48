"""Evaluation and benchmark harnesses: they must report what the images show, and count FLOPs exactly."""
import dataclasses

import numpy as np
import pytest
import torch

from minimuse.bench import run_bench
from minimuse import peak, transformer as transformer_mod
from minimuse.peak import count_flops, honest_peak, model_gemms
from minimuse.config import CAPTION_KINDS
from minimuse.presets import get_config
from minimuse.data import parse_caption, render
from minimuse.measures import eval_faithfulness


class StubPipe:
    """Stands in for MusePipeline: draws each prompt perfectly (or not at all), so the harness's arithmetic is checkable."""

    def __init__(self, perfect=True, fail_kind=None):
        self.config, self.perfect, self.fail_kind, self.calls = get_config("laptop"), perfect, fail_kind, []

    def settings(self, **overrides):
        return dataclasses.replace(self.config.sample, **overrides)

    def __call__(self, prompts, seed=0, **sampling):
        self.calls.append((len(prompts), seed, sampling))
        out = []
        for i, p in enumerate(prompts):
            spec = parse_caption(p)
            bad = not self.perfect or (self.fail_kind == "relation" and spec.relation is not None)
            out.append(np.zeros((32, 32, 3), np.uint8) if bad else render(spec, 32, np.random.default_rng(seed + i)))
        return np.stack(out)


def test_perfect_images_score_one_and_blank_images_zero():
    good = eval_faithfulness(StubPipe(perfect=True), n_per_kind=8)
    assert good["overall"] == 1.0 and set(good["by_kind"]) == set(CAPTION_KINDS)
    assert all(v == 1.0 for v in good["by_kind"].values())
    assert set(good["by_count"]) == {"1", "2", "3", "4"} and all(v == 1.0 for v in good["by_count"].values())
    bad = eval_faithfulness(StubPipe(perfect=False), n_per_kind=8)
    assert bad["overall"] == 0.0 and len(bad["examples_failed"]) == 10


def test_per_kind_accounting():
    r = eval_faithfulness(StubPipe(fail_kind="relation"), n_per_kind=10)
    assert r["by_kind"]["relation"] == 0.0
    assert all(r["by_kind"][k] == 1.0 for k in CAPTION_KINDS if k != "relation")
    assert r["overall"] == pytest.approx(4 / 5)


def test_sampling_overrides_reach_the_pipeline_and_the_report():
    pipe = StubPipe()
    r = eval_faithfulness(pipe, n_per_kind=2, guidance_scale=0.0, num_steps=3, batch_size=4)
    assert all(call[2] == {"superres": False, "guidance_scale": 0.0, "num_steps": 3} for call in pipe.calls)
    assert [c[0] for c in pipe.calls] == [4, 4, 2]                        # batches of 4 over 10 prompts
    assert r["settings"]["guidance_scale"] == 0.0 and r["settings"]["num_steps"] == 3


def test_faithfulness_judges_a_cascades_base_stage_unless_told(tmp_path, monkeypatch):
    """`minimuse eval` on a checkpoint with a super-res stage judges the base stage's images, as the documented
    faithfulness of the shipped model is (README, docs/SAMPLING.md); the cascade's is judged only when asked for
    (superres=True, as eval_superres does)."""
    from minimuse import eval as eval_mod
    pipe = StubPipe()
    monkeypatch.setattr(eval_mod, "load_pipeline", lambda root, device=None: pipe)
    (tmp_path / "transformer").mkdir()
    r = eval_mod.evaluate(tmp_path, n=2, tokenizer_n=0, num_steps=3)
    assert r["faithfulness"]["overall"] == 1.0 and pipe.calls
    assert all(call[2] == {"superres": False, "num_steps": 3} for call in pipe.calls)
    assert "superres" not in r["faithfulness"]["settings"] and r["faithfulness"]["settings"]["num_steps"] == 3
    told = StubPipe()
    eval_faithfulness(told, n_per_kind=1, superres=True)
    assert told.calls and all(call[2] == {"superres": True} for call in told.calls)


def test_flop_counter_is_exact_for_a_matmul():
    a, b = torch.randn(16, 32), torch.randn(32, 8)
    assert count_flops(lambda: a @ b) == 2 * 16 * 32 * 8


def test_flop_counter_counts_the_onednn_linear():
    from minimuse import transformer
    if transformer._ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN")
    lin = transformer.Linear(32, 8)
    x = torch.randn(16, 32)
    with torch.inference_mode():
        assert count_flops(lambda: lin(x)) == 2 * 16 * 32 * 8    # the fused inference path
    assert count_flops(lambda: lin(x)) == 2 * 16 * 32 * 8        # F.linear under autograd


def test_the_bf16_peak_skips_onednn_where_the_cpu_has_no_bf16_kernels(monkeypatch):
    # a CPU with AVX2 only cannot create oneDNN's bf16 primitive (RuntimeError); torch.mm still emulates bf16 there
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    onednn = ["onednn"] if transformer_mod._ONEDNN_LINEAR is not None else []
    assert peak.backends("cpu", torch.bfloat16) == ["torch.mm"]
    assert peak.backends("cpu", torch.float32) == ["torch.mm"] + onednn  # fp32 keeps the transformer's fast path
    r = peak.matmul_peak(torch.bfloat16, sizes=(64,), repeats=1)
    assert [c["backend"] for c in r["candidates"]] == ["torch.mm"] and r["gflops"] > 0


def test_bench_reports_every_setting():
    cfg = get_config("ci")
    r = run_bench(cfg, batch_sizes=[2], steps=[2, 3], repeats=1, peak_repeats=1, peak_sizes=(64, 128))
    for name in ("fp32", "bf16"):                 # both peaks, each with both of its parts
        p = r["machine"]["peak"][name]
        assert p["gflops"] == max(p["square"]["gflops"], p["model_shapes"]["gflops"]) > 0
        assert p["square"]["gflops"] == max(c["gflops"] for c in p["square"]["candidates"])
    assert r["peak_gflops"] == r["machine"]["peak"]["fp32"]["gflops"]      # the figure every fraction uses
    runs = r["runs"]
    assert [(x["steps"], x["guidance"] > 0) for x in runs] == [(2, False), (2, True), (3, False), (3, True)]
    for x in runs:
        assert x["ms_per_image"] > 0 and x["gflop_per_image"] > 0
        # relative: under load a tiny peak can sit below the achieved rate, and both are rounded
        assert x["fraction_of_peak"] == pytest.approx(x["achieved_gflops"] / r["peak_gflops"], rel=5e-3, abs=2e-3)
    by = {(x["steps"], x["guidance"] > 0): x["gflop_per_image"] for x in runs}
    assert by[(3, False)] > by[(2, False)]        # one more forward pass
    assert by[(2, True)] > by[(2, False)]         # the unconditional pass costs FLOPs
    (c,) = r["cascade"]  # ci has a super-res stage: base and super-res timed apart, the share is of their sum
    assert c["batch"] == 2 and c["superres_steps"] == cfg.superres.sample.num_steps and c["base_steps"] == cfg.sample.num_steps
    assert c["cascade_ms_per_image"] == pytest.approx(c["base_ms_per_image"] + c["superres_ms_per_image"], abs=0.011)
    assert c["superres_share"] == pytest.approx(c["superres_ms_per_image"] / c["cascade_ms_per_image"], abs=2e-3)


def test_honest_peak_is_the_best_of_its_parts_and_the_model_shapes_are_the_forward_gemms():
    from minimuse.transformer import MaskedTransformer
    cfg = get_config("ci")
    m = MaskedTransformer.from_config(cfg)
    rows = 2 * cfg.num_tokens
    p = honest_peak(m, rows, repeats=1, sizes=(64,))
    assert p["gflops"] == max(p["square"]["gflops"], p["model_shapes"]["gflops"])
    assert {(s["m"], s["k"], s["n"]) for s in p["model_shapes"]["shapes"]} == set(model_gemms(m, rows))
    # the shapes are the forward's own products: with attention's FLOPs they add up to the counter's total
    B, T, L, D = 2, 3, cfg.num_tokens, cfg.transformer.width
    ids, text = torch.full((B, L), m.mask_id), torch.randn(B, T, m.text_dim)
    with torch.inference_mode():
        ctx = m.encode_text(text, torch.ones(B, T, dtype=torch.bool))
        total = count_flops(lambda: m(ids, ctx=ctx))
    attention = cfg.transformer.depth * (4 * B * L * L * D + 4 * B * L * T * D)  # QK^T and AV, self and cross
    assert total == sum(2 * a * b * c for a, b, c in model_gemms(m, B * L)) + attention


def test_wilson_interval_covers_at_its_nominal_rate():
    """Exact binomial coverage of the 95% Wilson interval stays near 95% where Wald's collapses (n=20, p near 0/1)."""
    from math import comb

    from minimuse.metrics import wilson

    n = 20
    for p_true in (0.02, 0.1, 0.5, 0.9, 0.98):
        cover = 0.0
        for k in range(n + 1):
            lo, hi = wilson(k / n, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            if lo <= p_true <= hi:
                cover += comb(n, k) * p_true ** k * (1 - p_true) ** (n - k)
        assert cover > 0.90, (p_true, cover)
    assert wilson(1.0, 20)[0] < 1.0 and wilson(0.0, 20)[1] > 0.0   # never a point at the edges
    assert wilson(0.5, 400)[1] - wilson(0.5, 400)[0] < wilson(0.5, 100)[1] - wilson(0.5, 100)[0]
