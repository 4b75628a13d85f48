"""TextEncoder: MiniLM offline, padding mask, cache (memory and disk), truncation, "" and T5/CLIP via one class."""
import warnings

import pytest
import torch

from minimuse.config import ConfigError, TextConfig
from minimuse.text_encoder import TextEncoder, cat_text

PROMPTS = ["", "a red circle", "two blue squares to the left of a red circle"]
LENGTHS = [2, 5, 12]  # [CLS] ... [SEP] under MiniLM's WordPiece vocabulary


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(TextConfig())  # local_files_only: this must work with HF_HUB_OFFLINE=1 and no network


def count_calls(enc):
    calls = []
    enc.model.register_forward_hook(lambda *a: calls.append(1))
    return calls


def reference(enc, text, max_length=None):
    """The LM run directly on one unpadded prompt: what the encoder must return for it."""
    batch = enc.tokenizer([text], return_tensors="pt", truncation=max_length is not None, max_length=max_length)
    with torch.no_grad():
        return enc.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0]


def test_minilm_offline_shapes_mask_and_values(minilm):
    emb, mask = minilm(PROMPTS)
    assert emb.shape == (3, 12, 384) and emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == LENGTHS
    assert torch.equal(mask, torch.arange(12)[None] < torch.tensor(LENGTHS)[:, None])  # right padding
    assert torch.all(emb[~mask] == 0)
    for i, text in enumerate(PROMPTS):  # padding in a batch leaves the real positions unchanged
        torch.testing.assert_close(emb[i, :LENGTHS[i]], reference(minilm, text), atol=1e-5, rtol=1e-4)
    assert not minilm.model.training and not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.model.training  # frozen stays frozen
    torch.nn.Linear(384, 4)(emb).sum().backward()  # a normal tensor, usable by the trained projection


def test_empty_prompt_is_a_real_encoding(minilm):
    emb, mask = minilm([""])
    ids = minilm.tokenizer([""])["input_ids"][0]
    assert ids == [minilm.tokenizer.cls_token_id, minilm.tokenizer.sep_token_id]
    assert mask.tolist() == [[True, True]] and emb.abs().sum() > 0


def test_cache_hit_skips_the_model_and_returns_identical_tensors(minilm):
    first, mask1 = minilm(["a green triangle", "a green triangle above a cyan square"])
    calls = count_calls(minilm)
    before = minilm.cache_info()
    again, mask2 = minilm(["a green triangle above a cyan square", "a green triangle"])
    assert calls == [] and minilm.cache_info().hits == before.hits + 2
    assert torch.equal(again[1, :mask1[0].sum()], first[0, :mask1[0].sum()])
    assert torch.equal(again[0], first[1]) and torch.equal(mask2[0], mask1[1])
    assert torch.all(again[1, mask1[0].sum():] == 0)  # re-padded to this batch's longest
    minilm(["a never seen purple square", "a green triangle"])
    assert len(calls) == 1  # only the miss reaches the LM


def test_disk_cache_round_trip(minilm, tmp_path):
    cfg = TextConfig(cache_dir=str(tmp_path))
    first = TextEncoder(cfg, model=minilm.model, tokenizer=minilm.tokenizer)
    emb, mask = first(PROMPTS)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3 and not list(tmp_path.glob("*.tmp"))
    second = TextEncoder(cfg, model=minilm.model, tokenizer=minilm.tokenizer)  # empty memory: must read the files
    calls = count_calls(second)
    emb2, mask2 = second(PROMPTS)
    assert calls == [] and second.cache_info().disk_hits == 3
    assert torch.equal(emb, emb2) and torch.equal(mask, mask2)


def test_truncation_warns_once_and_keeps_the_end_token(minilm):
    enc = TextEncoder(TextConfig(max_length=4), model=minilm.model, tokenizer=minilm.tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb, mask = enc(["two blue squares to the left of a red circle"])
        enc(["three yellow triangles below a purple circle", "a red circle"])
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "max_length=4" in msgs[0]
    assert emb.shape == (1, 4, 384)
    torch.testing.assert_close(emb[0], reference(minilm, PROMPTS[2], max_length=4), atol=1e-5, rtol=1e-4)
    assert enc(["a red circle"], padding="max_length")[1].tolist() == [[True, True, True, True]]


def test_wrong_text_dim_raises(minilm):
    with pytest.raises(ConfigError, match="hidden size 384.*text.text_dim=384"):
        TextEncoder.from_model(minilm.model, minilm.tokenizer, "minilm", TextConfig(text_dim=512))


def tiny_t5(vocab):
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   pad_token_id=0, decoder_start_token_id=0))


def tiny_clip(vocab):
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=64,
                                        pad_token_id=0, bos_token_id=101, eos_token_id=102))


@pytest.mark.parametrize("build,cls_name", [(tiny_t5, "T5EncoderModel"), (tiny_clip, "CLIPTextModel")])
def test_tiny_t5_and_clip_through_the_same_class(minilm, tmp_path, build, cls_name):
    tok = minilm.tokenizer  # MiniLM's WordPiece tokenizer stands in: no download
    model = build(tok.vocab_size).eval()
    enc = TextEncoder.from_model(model, tok, cls_name)
    emb, mask = enc(PROMPTS)
    assert emb.shape == (3, 12, 16) and mask.sum(1).tolist() == LENGTHS
    for i, text in enumerate(PROMPTS):
        torch.testing.assert_close(emb[i, :LENGTHS[i]], reference(enc, text), atol=1e-5, rtol=1e-4)
    # saved to a folder, the class is picked from config.model_type, offline
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = TextEncoder(TextConfig(encoder=str(tmp_path), text_dim=16))
    assert type(loaded.model).__name__ == cls_name
    assert torch.equal(loaded(PROMPTS)[0], emb)


def test_missing_encoder_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="not available offline"):
        TextEncoder(TextConfig(encoder=str(tmp_path / "nowhere"), text_dim=16))


def test_cat_text_pads_to_the_longest():
    a = (torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    b = (2 * torch.ones(1, 5, 4), torch.tensor([[True, True, False, False, False]]))
    emb, mask = cat_text(a, b)
    assert emb.shape == (3, 5, 4) and mask.sum(1).tolist() == [3, 3, 2]
    assert torch.equal(emb[:2, 3:], torch.zeros(2, 2, 4)) and torch.equal(emb[2], b[0][0])


def test_cached_prompts_never_load_the_weights(tmp_path, monkeypatch):
    """With every prompt in the user's disk cache (MINIMUSE_TEXT_CACHE), a new encoder serves them without reading the
    LM's weights (a machine that replays cached prompts need not hold them), on the device it was moved to, and
    bit-identical to what the LM gave; the first uncached prompt then loads the weights."""
    import minimuse.text_encoder as te
    monkeypatch.setenv(te.CACHE_ENV, str(tmp_path))
    first = TextEncoder(TextConfig())
    want = first(PROMPTS)
    loads = []
    real = te.load_hf_model
    monkeypatch.setattr(te, "load_hf_model", lambda name: loads.append(name) or real(name))
    second = TextEncoder(TextConfig()).to("cpu")
    got = second(PROMPTS)
    assert loads == [] and second._lm is None and second.cache_info().disk_hits == len(PROMPTS)
    assert all(torch.equal(a, b) for a, b in zip(want, got)) and got[0].device == second.device
    assert second.content_token_count(["a red circle"]) == [3]  # the tokenizer is there without the weights
    second(["a purple circle below a red square"])
    assert loads == ["minilm"] and second.cache_info().misses == 1
