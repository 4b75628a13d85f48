"""Tokenizer: shapes, the quantizer maths, the straight-through gradient, FSQ ids, checkpoints, shipped weights."""
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from minimuse.checkpoint import CheckpointError
from minimuse.config import Config, TokenizerConfig
from minimuse.presets import get_config
from minimuse.quantizer import (FSQuantizer, VectorQuantizer, codebook_usage, fsq_codes, fsq_digits, fsq_ids, fsq_round,
                                nearest_code, perplexity, straight_through)
from minimuse.tokenizer import Tokenizer

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "laptop"
TINY = TokenizerConfig(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, codebook_size=16, code_dim=4)
TINY_FSQ = dataclasses.replace(TINY, quantizer="fsq", fsq_levels=(4, 2, 2), codebook_size=16)


def images(B=2, S=16, seed=0):
    return torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(seed))


def trained_a_little(cfg=TINY, steps=3):
    """A few training passes so the EMA buffers hold real statistics, not their initial values."""
    torch.manual_seed(0)
    tok = Tokenizer(cfg)
    opt = torch.optim.Adam(tok.parameters(), 1e-3)
    for i in range(steps):
        _, aux = tok(images(4, seed=i))
        opt.zero_grad()
        aux["loss"].backward()
        opt.step()
    return tok.eval()


@pytest.mark.parametrize("cfg", [TINY, TINY_FSQ], ids=["vq", "fsq"])
def test_encode_decode_shapes_and_range(cfg):
    tok = Tokenizer(cfg).eval()
    ids = tok.encode(images(2, 16))
    assert ids.shape == (2, 4, 4) and ids.dtype == torch.long  # f = 4
    assert 0 <= ids.min() and ids.max() < cfg.codebook_size
    out = tok.decode(ids)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert tok.encode(images(1, 24)).shape == (1, 6, 6)  # fully convolutional: another resolution just works


def test_bad_inputs_raise_clear_errors():
    tok = Tokenizer(TINY).eval()
    with pytest.raises(ValueError, match="divisible"):
        tok.encode(images(1, 18))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        tok.decode(torch.full((1, 4, 4), 16))


def test_nearest_code_and_stats_exact():
    codebook = torch.eye(3)  # (K, C)
    z = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.0, 1.0], [0.0, 0.8, 0.6]])
    assert nearest_code(z, codebook).tolist() == [0, 2, 1]
    ids = torch.tensor([0, 0, 1, 1])
    assert codebook_usage(ids, 4) == 0.5
    assert perplexity(ids, 4) == pytest.approx(2.0, abs=1e-12)
    assert perplexity(torch.arange(8), 8) == pytest.approx(8.0, abs=1e-12)


def test_straight_through_passes_gradient_unchanged():
    z = torch.randn(5, 3, requires_grad=True)
    zq = torch.randn(5, 3)
    out = straight_through(z, zq)
    assert torch.equal(out, z + (zq - z))  # forward value: the code (up to the same float ops)
    g = torch.randn(5, 3)
    out.backward(g)
    assert torch.equal(z.grad, g)  # backward: the identity


@pytest.mark.parametrize("cfg", [TINY, TINY_FSQ], ids=["vq", "fsq"])
def test_reconstruction_gradient_reaches_encoder(cfg):
    torch.manual_seed(0)
    tok = Tokenizer(cfg)
    recon, aux = tok(images(2))
    aux["recon_loss"].backward()  # the reconstruction loss alone: only the straight-through path links it to the encoder
    for p in tok.encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_vq_lookup_is_consistent_with_quantize():
    torch.manual_seed(0)
    vq = VectorQuantizer(K=16, dim=4, beta=0.25, ema_decay=0.99, dead_threshold=1.0)
    ids = torch.randint(0, 16, (2, 3, 3))
    assert torch.equal(vq.quantize(vq.lookup(ids))[1], ids)  # a code's nearest code is itself


def test_dead_codes_restart_at_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(K=8, dim=4, beta=0.25, ema_decay=0.99, dead_threshold=1.0).train()
    z = torch.randn(2, 4, 4, 4)  # (B, C, h, w)
    vq(z)
    flat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)  # (N, C)
    # cluster_size starts at 0, so every code was dead and now sits exactly on one of the batch's latents.
    for row in vq.embed:
        assert any(torch.equal(row, f) for f in flat)
    assert (vq.cluster_size >= 1.0).all()


def test_fsq_codes_map_one_to_one_to_ids():
    levels = torch.tensor([4, 4, 2])
    K = math.prod(levels.tolist())
    ids = torch.arange(K)
    digits = fsq_digits(ids, levels)  # (K, d)
    assert len({tuple(d) for d in digits.tolist()}) == K  # distinct codes
    assert ((digits >= 0) & (digits < levels)).all()
    assert torch.equal(fsq_ids(digits, levels), ids)  # and back
    # Pre-tanh latents at each bin's centre round to exactly those digits, through the quantizer.
    z = torch.atanh((digits + 0.5) / levels * 2 - 1)
    got_digits, codes = fsq_round(z, levels)
    assert torch.equal(got_digits, digits)
    assert torch.equal(codes, fsq_codes(digits, levels))
    q = FSQuantizer((4, 4, 2))
    assert torch.equal(q.quantize(z.T.reshape(1, 3, K, 1))[1].flatten(), ids)  # (B, d, h, w) layout
    assert torch.equal(q.lookup(ids.view(1, K, 1))[0, :, :, 0].T, fsq_codes(digits, levels))  # (d, K) -> (K, d)


def test_ema_buffers_are_saved_and_reload_bit_identical(tmp_path):
    tok = trained_a_little()
    state = tok.state_dict()
    assert {"quantizer.embed", "quantizer.embed_sum", "quantizer.cluster_size"} <= set(state)
    tok.save_pretrained(tmp_path)
    back = Tokenizer.from_pretrained(tmp_path)
    assert set(back.state_dict()) == set(state)
    for k, v in back.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = images(2, seed=7)
    ids = tok.encode(x)
    assert torch.equal(back.encode(x), ids)
    assert torch.equal(back.decode(ids), tok.decode(ids))


def test_fsq_save_load_round_trip(tmp_path):
    tok = trained_a_little(TINY_FSQ)
    tok.save_pretrained(tmp_path)
    back = Tokenizer.from_pretrained(tmp_path, TINY_FSQ)
    x = images(2, seed=3)
    assert torch.equal(back.decode(back.encode(x)), tok.decode(tok.encode(x)))


def test_mismatched_config_names_the_field(tmp_path):
    cfg = Config(name="t", data=dataclasses.replace(get_config("ci").data, image_size=16), tokenizer=TINY)
    tok = Tokenizer(TINY)
    tok.save_pretrained(tmp_path, cfg)
    Tokenizer.from_pretrained(tmp_path, dataclasses.replace(cfg, tokenizer=dataclasses.replace(TINY, lr=0.5)))  # not architecture
    with pytest.raises(CheckpointError, match=r"tokenizer\.channels"):
        Tokenizer.from_pretrained(tmp_path, dataclasses.replace(cfg, tokenizer=dataclasses.replace(TINY, channels=16)))
    with pytest.raises(CheckpointError, match=r"tokenizer\.codebook_size"):
        Tokenizer.from_pretrained(tmp_path, dataclasses.replace(TINY, codebook_size=32))
    with pytest.raises(CheckpointError, match=r"data\.image_size"):
        Tokenizer.from_pretrained(tmp_path, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=32)))


def test_corrupt_or_missing_weights_raise_checkpoint_error(tmp_path):
    Tokenizer(TINY).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        Tokenizer.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer", "superres_tokenizer"])
def test_shipped_tokenizers_load_strict_and_reconstruct(name):
    from minimuse.measures import eval_tokenizer
    ckpt = SHIPPED / name
    if not (ckpt / "model.safetensors").is_file():
        pytest.fail(f"shipped checkpoint {ckpt} is missing")
    tok = Tokenizer.from_pretrained(ckpt, get_config("laptop"))  # strict load, and the laptop preset must match it
    assert tok.codebook_size == 256
    m = eval_tokenizer(ckpt, n=64)
    assert m["psnr"] >= 32.0, m


def test_shipped_tokenizer_reencodes_its_own_decodings():
    """encode(decode(ids)) == ids on most positions: a trained tokenizer's decodings are fixed points. A random or
    broken decoder (or a decode that used another codebook than encode) fails this."""
    from minimuse.data import ShapesDataset
    tok = Tokenizer.from_pretrained(SHIPPED / "tokenizer")
    data = ShapesDataset(size=32, seed=tok.full_config.data.eval_seed, length=32)
    ids = tok.encode(torch.stack([data[i]["image"] for i in range(32)]))
    again = tok.encode(tok.decode(ids))
    assert (again == ids).float().mean() >= 0.75  # measured 0.83: the rest are near-duplicate codes, as the next line checks
    mse = (tok.decode(again) - tok.decode(ids)).pow(2).mean()
    assert 10 * torch.log10(1 / mse) >= 38.0  # measured 45 dB
