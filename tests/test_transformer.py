"""MaskedTransformer: shapes, masking semantics, the ctx / head_index / return_attn paths, checkpoints, sizes."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from minimuse.checkpoint import CheckpointError
from minimuse.config import TransformerConfig
from minimuse.presets import get_config
from minimuse.transformer import MaskedTransformer

K, GRID, E = 16, (4, 4), 12
L = GRID[0] * GRID[1]


def tiny(qk_norm=True, **kw):
    torch.manual_seed(0)
    cfg = TransformerConfig(width=16, depth=2, heads=2, qk_norm=qk_norm, **kw)
    return MaskedTransformer(cfg, K, GRID, E).eval()


def inputs(B=3, T=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, K + 1, (B, L), generator=g)  # includes mask_id = K
    text = torch.randn(B, T, E, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 2:] = False  # row 0 has 2 real text tokens, row 1 has 4
    mask[1, 4:] = False
    return ids, text, mask


def tiny_config(**transformer):
    cfg = get_config("ci")
    tcfg = dataclasses.replace(TransformerConfig(width=16, depth=2, heads=2, qk_norm=True), **transformer)
    return dataclasses.replace(cfg, transformer=tcfg, text=dataclasses.replace(cfg.text, text_dim=E), superres=None)


def test_shapes_and_mask_id():
    m = tiny()
    ids, text, mask = inputs()
    assert m.mask_id == K and m.tok_emb.num_embeddings == K + 1
    assert m(ids, text, mask).shape == (3, L, K)
    grid_ids = ids.view(3, *GRID)  # (B, h, w) is flattened row-major
    assert torch.equal(m(grid_ids, text, mask), m(ids, text, mask))
    with pytest.raises(ValueError, match="4x4 grid"):
        m(ids[:, :10], text, mask)


def test_padded_text_positions_do_not_matter():
    m = tiny()
    ids, text, mask = inputs()
    noisy = torch.where(mask[..., None], text, 100 * torch.randn_like(text))  # change only where mask is False
    assert not torch.equal(noisy, text)
    assert torch.equal(m(ids, noisy, mask), m(ids, text, mask))
    # and the real positions do matter
    changed = text.clone()
    changed[0, 0] += 1.0
    assert not torch.allclose(m(ids, changed, mask)[0], m(ids, text, mask)[0])


def test_bidirectional_later_token_changes_earlier_logits():
    m = tiny()
    ids, text, mask = inputs()
    ids2 = ids.clone()
    ids2[:, -1] = (ids[:, -1] + 1) % K  # change only the last image token
    a, b = m(ids, text, mask), m(ids2, text, mask)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4  # the first position sees it: no causal mask


def test_ctx_path_equals_text_path_and_broadcasts_batch_one():
    m = tiny()
    ids, text, mask = inputs()
    ctx = m.encode_text(text, mask)
    assert len(ctx.kv) == 2 and ctx.kv[0][0].shape == (3, 2, 5, 8)  # (B, H, T, Dh)
    torch.testing.assert_close(m(ids, ctx=ctx), m(ids, text, mask), rtol=0, atol=0)
    one = m.encode_text(text[:1], mask[:1])  # the unconditional prompt, shared across the batch
    torch.testing.assert_close(m(ids, ctx=one), m(ids, text[:1].expand(3, -1, -1), mask[:1].expand(3, -1)))
    with pytest.raises(ValueError, match="not both"):
        m(ids, text, mask, ctx=ctx)
    with pytest.raises(ValueError, match="no real token"):
        m.encode_text(text, torch.zeros_like(mask))


def test_head_index_equals_full_head_gathered():
    m = tiny()
    ids, text, mask = inputs()
    idx = torch.tensor([[0, 5, 15], [3, 3, 1], [14, 2, 7]])
    full = m(ids, text, mask)
    part = m(ids, text, mask, head_index=idx)
    assert part.shape == (3, 3, K)
    torch.testing.assert_close(part, torch.gather(full, 1, idx[..., None].expand(-1, -1, K)))


def test_return_attn_is_a_distribution_over_real_text():
    m = tiny()
    ids, text, mask = inputs()
    logits, attn = m(ids, text, mask, return_attn=True)
    torch.testing.assert_close(logits, m(ids, text, mask), rtol=1e-5, atol=1e-5)  # explicit path == SDPA path
    assert len(attn) == 2
    for a in attn:
        assert a.shape == (3, 2, L, 5)  # (B, H, L, T)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 2, L))
        assert torch.all(a.masked_select(~mask[:, None, None, :].expand_as(a)) == 0)
        assert torch.all(a[1, :, :, :4] > 0)


def test_save_load_round_trip_bit_identical(tmp_path):
    cfg = tiny_config()
    m = MaskedTransformer.from_config(cfg)
    m.save_pretrained(tmp_path, cfg)
    lr_changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1.0))  # not architecture: loads
    m2 = MaskedTransformer.from_pretrained(tmp_path, config=lr_changed)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not m2.training
    ids = torch.randint(0, 33, (2, 16))
    text, mask = torch.randn(2, 3, E), torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(m.eval()(ids, text, mask), m2(ids, text, mask))


@pytest.mark.parametrize("field,override", [
    ("transformer.heads", {"transformer": "heads"}),
    ("tokenizer.codebook_size", {"tokenizer": "codebook_size"}),
    ("text.text_dim", {"text": "text_dim"}),
    ("grid", {"data": "image_size"}),
])
def test_mismatched_config_names_the_field(tmp_path, field, override):
    cfg = tiny_config()
    MaskedTransformer.from_config(cfg).save_pretrained(tmp_path, cfg)
    (section, name), = override.items()
    value = {"heads": 4, "codebook_size": 64, "text_dim": 24, "image_size": 32}[name]
    other = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        MaskedTransformer.from_pretrained(tmp_path, config=other)


def test_save_with_wrong_config_refuses(tmp_path):
    cfg = tiny_config()
    m = MaskedTransformer.from_config(cfg)
    with pytest.raises(ValueError, match="transformer.width"):
        m.save_pretrained(tmp_path, tiny_config(width=32))


def test_muse_3b_parameter_count_on_meta():
    with torch.device("meta"):
        m = MaskedTransformer.from_config(get_config("muse-3b"))
    assert abs(m.num_params() - 3e9) / 3e9 < 0.10
    # 48 blocks of 16 D^2 (self-attn 4, cross-attn 4, MLP 8 D^2) dominate; check the closed form too
    D = 2048
    assert abs(m.num_params() - 48 * 16 * D * D) / m.num_params() < 0.02


def test_overfits_one_batch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small run faster on one thread, and 2 shared cores thrash otherwise
    try:
        _overfit_one_batch()
    finally:
        torch.set_num_threads(threads)


def _overfit_one_batch():
    torch.manual_seed(0)
    m = MaskedTransformer(TransformerConfig(width=32, depth=2, heads=4), K, GRID, E).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, K, (8, L), generator=g)
    masked = torch.rand(8, L, generator=g) < 0.5
    text, tmask = torch.randn(8, 4, E, generator=g), torch.ones(8, 4, dtype=torch.bool)
    x = torch.where(masked, m.mask_id, ids)
    labels = torch.where(masked, ids, -100)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(200):
        loss = F.cross_entropy(m(x, text, tmask).reshape(-1, K), labels.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = m.eval()(x, text, tmask).argmax(-1)
    assert (pred[masked] == ids[masked]).float().mean() > 0.98


def test_linear_inference_path_equals_f_linear_and_keeps_the_state_dict_keys():
    import torch.nn.functional as F
    from minimuse.transformer import Linear
    m = tiny()
    keys = set(m.state_dict())
    assert {"blocks.0.mlp.fc.weight", "blocks.0.mlp.out.weight"} <= keys and not any("gelu" in k for k in keys)
    lin = Linear(8, 12, act="gelu")
    x = torch.randn(3, 5, 8)
    plain = F.gelu(F.linear(x, lin.weight, lin.bias))
    with torch.inference_mode():
        fast = lin(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lin(x), plain, rtol=0, atol=0)  # under autograd: F.linear itself
    assert lin(x).requires_grad


def test_context_tuple_splits_the_batch_and_checks_it():
    m = tiny()
    ids, text, mask = inputs()
    a, b = m.encode_text(text[:1], mask[:1]), m.encode_text(text[1:2], mask[1:2])
    ids2 = ids[:2].repeat(2, 1)  # (4, L): two images for each context
    with torch.inference_mode():
        split = m(ids2, ctx=(a, b))
        whole = m(ids2, text[:2].repeat_interleave(2, 0), mask[:2].repeat_interleave(2, 0))
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="equal slices"):
        m(ids[:3], ctx=(a, b))
    with pytest.raises(ValueError, match="one context"):
        m(ids2, ctx=(a, b), return_attn=True)


def test_training_attention_is_the_explicit_formula_with_the_fused_kernels_values_and_gradients(monkeypatch):
    from minimuse.transformer import attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False  # padded keys in the second row
    y, _ = attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(y, ref)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), dy)
    refs = torch.autograd.grad(ref, (q, k, v), dy)
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b)
    assert grads[1][1, :, 4:].abs().max() == 0  # a padded key gets no gradient
    with torch.no_grad():  # inference keeps the fused kernel, bit for bit
        assert torch.equal(attention(q, k, v, mask)[0], F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    # a CPU training forward never calls the fused kernel (its backward is the slow one)
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("fused")))
    model = tiny().train()
    ids, text, text_mask = inputs()
    model(ids, text, text_mask).sum().backward()
    with torch.no_grad(), pytest.raises(AssertionError, match="fused"):
        model(ids, text, text_mask)
