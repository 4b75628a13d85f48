"""The learner's package (notebooks/mymuse/, written by lessons 01 to 09) still equals minimuse: the renderer (01), the
codebook update and nearest-code lookup (02), the text encoding (03), the loss and counts (04), the same logits and initial weights (05), the same losses as train_transformer and
train_superres step for step (05, 07), the decoder-finetuning loss (07), the same tokens as the sampler (06),
the token mask, inpainting, mask-free editing and outpainting (08), and the Wilson interval (09). The lessons assert the same under nbval; this is the fast tier's
guard when minimuse changes."""
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import numpy as np

from minimuse.config import SampleConfig
from minimuse.data import make_sample, to_tensor
from minimuse.editing import cell_mask
from minimuse.pool import build_token_pool, text_table
from minimuse.presets import get_config
from minimuse.pipeline import load_pipeline
from minimuse.sampler import mask_free_edit, sample
from minimuse.scheduler import mask_counts, masked_ce
from minimuse.text_encoder import TextEncoder
from minimuse.tokenizer import Tokenizer
from minimuse.train import train_transformer
from minimuse.quantizer import VectorQuantizer
from minimuse.superres import SuperResTransformer
from minimuse.train import train_superres
from minimuse.transformer import MaskedTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
from mymuse import masking, quantizer  # noqa: E402
from mymuse.superres import decoder_loss  # noqa: E402
from mymuse.edit import my_edit, my_outpaint_right, my_token_mask  # noqa: E402
from mymuse.sample import my_sample  # noqa: E402
from mymuse.shapes import draw_by_hand  # noqa: E402
from mymuse.stats import wilson  # noqa: E402
from mymuse.text import encode  # noqa: E402
from mymuse.train import my_train  # noqa: E402
from mymuse.transformer import MyTransformer  # noqa: E402

CFG = get_config("ci", **{"train.steps": 12, "train.batch_size": 8, "data.pool_size": 64, "train.log_every": 4,
                          "train.warmup_steps": 3, "transformer.depth": 2})


def _twins(seed: int = 0):
    torch.manual_seed(seed)
    mine = MyTransformer.from_config(CFG)
    torch.manual_seed(seed)
    return mine, MaskedTransformer.from_config(CFG)


def test_the_same_seed_gives_the_same_weights_and_the_same_logits():
    mine, theirs = _twins()
    a, b = mine.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, 33, (3, 16), generator=torch.Generator().manual_seed(1))  # 32 codes + [MASK]
    text, text_mask = torch.randn(3, 5, CFG.text.text_dim), torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 2 + [0] * 3])
    for train in (True, False):  # the training path and the inference path (fused kernels) of the package
        theirs.train(train)
        with torch.set_grad_enabled(train):
            assert torch.allclose(mine(ids, text, text_mask), theirs(ids, text, text_mask), atol=1e-5)
    theirs.head.bias.data += 1.0  # a different model gives different logits: the check can fail
    assert not torch.allclose(mine(ids, text, text_mask), theirs(ids, text, text_mask), atol=1e-5)


def test_encode_gives_the_text_encoders_states_and_mask():
    enc = TextEncoder(CFG.text)
    prompts = ["", "a red circle", "two blue squares", "a red circle to the left of a blue square"]
    emb, mask = encode(prompts, enc.tokenizer, enc.model, CFG.text.max_length)  # (B, T, E), (B, T)
    pkg_emb, pkg_mask = enc(prompts)
    assert torch.equal(mask, pkg_mask) and torch.equal(emb, pkg_emb)
    assert mask[0].sum() == 2 and emb[0, 2:].abs().sum() == 0  # "" is [CLS] [SEP]; its padding rows are zeros


def test_the_lessons_loss_and_counts_are_the_packages():
    logits, labels = torch.randn(2, 16, 32), torch.randint(0, 32, (2, 16))
    labels[:, ::3] = -100
    assert torch.equal(masking.masked_ce(logits, labels, 0.1), masked_ce(logits, labels, 0.1))
    assert all(masking.mask_counts(n, t) == mask_counts(n, t, "cosine") for n in (5, 16, 64) for t in (1, 4, 24))


def test_my_train_follows_train_transformer_step_for_step(tmp_path):
    torch.manual_seed(0)
    Tokenizer(CFG.tokenizer).save_pretrained(tmp_path / "tok", CFG)
    log = train_transformer(CFG, tmp_path / "run", tokenizer_dir=tmp_path / "tok")
    pool = build_token_pool(CFG, Tokenizer.from_pretrained(tmp_path / "tok"), CFG.data.pool_size)
    table = text_table(TextEncoder(CFG.text), pool["vocab"])
    torch.manual_seed(CFG.train.seed)
    losses, _ = my_train(MyTransformer.from_config(CFG), CFG, pool, table, CFG.train.steps)
    every = CFG.train.log_every
    mine = [sum(losses[r["step"] - every:r["step"]]) / every for r in log]
    assert mine == pytest.approx([r["loss"] for r in log], abs=1e-5)
    assert losses[-1] < losses[0]  # it trained


@pytest.mark.parametrize("tau", [0.0, 2.0])
def test_my_sample_gives_the_samplers_tokens(tau):
    _, theirs = _twins(3)
    mine = MyTransformer.from_config(CFG)
    mine.load_state_dict(theirs.state_dict())
    text, text_mask = torch.randn(4, 5, CFG.text.text_dim), torch.ones(4, 5, dtype=torch.bool)
    settings = SampleConfig(num_steps=6, guidance_scale=0.0, choice_temperature=tau)
    ids, masks = my_sample(mine, text, text_mask, 6, tau, torch.Generator().manual_seed(0))
    want, history = sample(theirs.eval(), (text, text_mask), settings, generator=torch.Generator().manual_seed(0),
                           return_history=True)
    assert torch.equal(ids, want)
    assert all(torch.equal(m, h["mask"]) for m, h in zip(masks, history))


def _loaded_twin(model):
    mine = MyTransformer.from_config(CFG)
    mine.load_state_dict(model.state_dict())
    return mine.eval()


def test_inpainting_and_mask_free_editing_match_the_package():
    _, theirs = _twins(4)
    theirs.eval()
    mine = _loaded_twin(theirs)
    text, text_mask = torch.randn(2, 5, CFG.text.text_dim), torch.ones(2, 5, dtype=torch.bool)
    ids = torch.randint(0, 32, (2, 4, 4), generator=torch.Generator().manual_seed(5))
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0, :2], region[1, :, 1:] = True, True  # regions of 8 and 12 tokens: the counts differ per row
    settings = SampleConfig(num_steps=4, guidance_scale=0.0, choice_temperature=1.0)
    got, _ = my_sample(mine, text, text_mask, 4, 1.0, torch.Generator().manual_seed(0), ids=ids, mask=region)
    want = sample(theirs, (text, text_mask), settings, generator=torch.Generator().manual_seed(0), init_ids=ids,
                  init_mask=region)
    assert torch.equal(got, want) and torch.equal(got[~region], ids[~region])
    got = my_edit(mine, ids, text, text_mask, 5, 0.25, torch.Generator().manual_seed(1))
    want = mask_free_edit(theirs, ids, (text, text_mask), SampleConfig(guidance_scale=0.0, top_k=0), num_iters=5,
                          resample_frac=0.25, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want) and not torch.equal(got, ids)


def test_my_token_mask_is_cell_mask():
    masks = np.random.default_rng(0).random((3, 16, 16)) < 0.03                # a few scattered pixels
    masks[2] = False
    masks[2, 5, 9] = True                                                      # one pixel: exactly its own token
    for f in (2, 4):
        got = my_token_mask(masks, f)
        assert got.shape == (3, 16 // f, 16 // f) and np.array_equal(got, cell_mask(masks, (16 // f, 16 // f)))
    assert my_token_mask(masks, 4)[2].sum() == 1 and my_token_mask(masks, 4)[2, 1, 2]


def test_my_outpaint_right_is_pipe_outpaint(ckpt):
    pipe = load_pipeline(ckpt, superres=False)
    mine = _loaded_twin(pipe.transformer)
    image = pipe.decode(torch.randint(0, 32, (1, 4, 4), generator=torch.Generator().manual_seed(6)))  # (1, 16, 16, 3)
    text, text_mask = pipe.text_encoder(["a red circle to the left of a blue square"])
    got = my_outpaint_right(mine, pipe.encode_images(image), 4, text, text_mask, 4, 1.0, torch.Generator().manual_seed(0))
    want = pipe.outpaint(image, ["a red circle to the left of a blue square"], extend="right:16", num_steps=4,
                         guidance_scale=0.0, choice_temperature=1.0, seed=0, output_type="ids")
    assert got.shape == (1, 4, 8) and torch.equal(got, want)


def test_the_codebook_update_and_its_restarts_are_the_packages():
    vq = VectorQuantizer(K=8, dim=4, beta=0.25, ema_decay=0.9, dead_threshold=1.0).train()
    mine = [vq.embed.clone(), vq.embed_sum.clone(), vq.cluster_size.clone()]
    g, restarted = torch.Generator().manual_seed(0), 0
    for step in range(6):
        x = torch.randn(4, 4, 2, 2, generator=g) + torch.tensor([3.0, 0, 0, 0])[:, None, None]  # one side of the sphere
        flat, ids = vq.quantize(x)
        assert torch.equal(quantizer.nearest_code(flat, vq.codebook()), ids.view(-1))
        before = mine[0].clone()
        torch.manual_seed(step)
        vq(x)
        torch.manual_seed(step)
        quantizer.ema_update(*mine, flat, ids.view(-1), 0.9, 1.0)
        restarted += int((mine[0] != before).any(1).sum())
        assert all(torch.equal(a, b) for a, b in zip(mine, (vq.embed, vq.embed_sum, vq.cluster_size)))
    assert restarted > 0


def test_the_decoder_loss_is_the_reconstruction_loss_and_trains_the_decoder_only():
    torch.manual_seed(0)
    tok = Tokenizer(CFG.tokenizer).eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    _, aux = tok(images)
    loss = decoder_loss(tok, images)
    loss.backward()
    assert torch.allclose(loss, aux["recon_loss"], rtol=1e-5)
    assert all(p.grad is None for p in tok.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.decoder.parameters())


def test_my_train_follows_train_superres_step_for_step(tmp_path):
    cfg = get_config("ci", **{"superres.train.steps": 8, "superres.train.log_every": 4, "data.pool_size": 64,
                              "superres.train.batch_size": 8, "superres.train.warmup_steps": 2})
    torch.manual_seed(0)
    Tokenizer(cfg.tokenizer).save_pretrained(tmp_path / "lo", cfg)
    Tokenizer(cfg.superres.tokenizer).save_pretrained(tmp_path / "hi", cfg, stage="superres")
    log = train_superres(cfg, tmp_path / "sr", tokenizer_dir=tmp_path / "lo", superres_tokenizer_dir=tmp_path / "hi")
    lo, hi = Tokenizer.from_pretrained(tmp_path / "lo", cfg), Tokenizer.from_pretrained(tmp_path / "hi", cfg)
    pool = build_token_pool(cfg, hi, cfg.data.pool_size, lowres_tokenizer=lo)
    table = text_table(TextEncoder(cfg.text), pool["vocab"])
    sr_cfg = dataclasses.replace(cfg, train=cfg.superres.train)
    torch.manual_seed(sr_cfg.train.seed)
    losses, _ = my_train(SuperResTransformer.from_config(sr_cfg), sr_cfg, pool, table, sr_cfg.train.steps)
    every = sr_cfg.train.log_every
    assert [sum(losses[r["step"] - every:r["step"]]) / every for r in log] == pytest.approx([r["loss"] for r in log], abs=1e-5)


def test_wilson_is_the_packages():
    from minimuse.metrics import wilson as package_wilson
    for p, n in ((0.0, 1), (1.0, 7), (0.5, 10), (0.9313, 320), (0.03, 1280), (0.999, 64)):
        assert wilson(p, n) == pytest.approx(package_wilson(p, n), abs=1e-12)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_draw_by_hand_draws_the_datasets_pixels(size):
    for i in range(40):  # every kind, one to four objects, rims included
        s = make_sample(0, i, size)
        items = [(c, shape) for n, c, shape in s["spec"].objects for _ in range(n)]
        assert np.array_equal(draw_by_hand(items, s["boxes"], size), s["image"]), (size, i, s["caption"])


def test_nearest_code_over_the_encoder_is_the_tokenizers_encode(ckpt):
    tok = Tokenizer.from_pretrained(ckpt / "tokenizer")
    S = tok.full_config.data.image_size
    images = torch.stack([to_tensor(make_sample(10_000, i, S)["image"]) for i in range(4)])  # (4, 3, S, S)
    with torch.no_grad():
        z = tok.encoder(images * 2 - 1)                                                        # (4, C, h, w)
    flat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)
    ids = quantizer.nearest_code(flat, tok.quantizer.codebook()).view(4, *z.shape[2:])
    assert torch.equal(ids, tok.encode(images))
