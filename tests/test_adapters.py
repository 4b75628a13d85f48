"""Ecosystem adapters, each on a tiny model built from a config (no downloads): diffusers' VQModel as a tokenizer,
checkpoints loaded by Hub repo id from the local Hugging Face cache, and the FSDP configuration for accelerate."""
from pathlib import Path

import pytest
import torch

from minimuse.checkpoint import CheckpointError
from minimuse.presets import get_config
from minimuse.data import make_sample, to_tensor
from minimuse.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def tiny_vq():
    from diffusers import VQModel
    torch.manual_seed(0)
    return VQModel(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                   up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4,
                   num_vq_embeddings=64, norm_num_groups=8, vq_embed_dim=4).eval()


def shapes(n=3, size=32):
    return torch.stack([to_tensor(make_sample(0, i, size)["image"]) for i in range(n)])  # (n, 3, S, S)


def test_vqmodel_adapter_encodes_and_decodes_shapes(tmp_path):
    from minimuse.vqmodel import VQTokenizer
    vq = tiny_vq()
    tok = VQTokenizer(vq)
    assert tok.downsample == 4 and tok.codebook_size == 64
    x = shapes()
    ids = tok.encode(x)
    assert ids.shape == (3, 8, 8) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 64
    # the adapter's decode(encode(x)) is diffusers' own quantize-and-decode forward pass
    with torch.no_grad():
        ref = ((vq(x * 2 - 1).sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(tok.decode(ids), ref, atol=1e-5)
    # saved in diffusers' layout, it loads through Tokenizer.from_pretrained and is checked against a config
    tok.save_pretrained(tmp_path / "vq")
    assert (tmp_path / "vq" / "diffusion_pytorch_model.safetensors").is_file()
    assert not [p for p in (tmp_path / "vq").iterdir() if p.name.startswith(".")]
    cfg = get_config("ci", **{"tokenizer.codebook_size": 64, "tokenizer.channel_mult": [1, 2, 2]})
    again = Tokenizer.from_pretrained(tmp_path / "vq", cfg)
    assert torch.equal(again.encode(x), ids)
    with pytest.raises(CheckpointError, match="has 64 codes; set tokenizer.codebook_size=64"):
        Tokenizer.from_pretrained(tmp_path / "vq", get_config("ci", **{"tokenizer.codebook_size": 128}))


def test_vqmodel_tokenizer_feeds_pretokenize(tmp_path):
    from minimuse.hfdata import write_imagefolder
    from minimuse.shards import load_shards, pretokenize
    from minimuse.text_encoder import TextEncoder
    from minimuse.vqmodel import VQTokenizer
    tok = VQTokenizer(tiny_vq())
    write_imagefolder(tmp_path / "d", "shapes", n=6, size=32)
    enc = TextEncoder(get_config("ci").text)
    pretokenize(tmp_path / "d", tok, enc, tmp_path / "sh", size=32)
    pool, _ = load_shards(tmp_path / "sh", tok, enc)
    assert torch.equal(pool["ids"].long(), tok.encode(shapes(6)))


def _fake_hub_cache(cache: Path, repo: str, files: Path) -> None:
    """The huggingface_hub cache layout a download leaves: refs/main -> snapshots/<commit>/<files>."""
    commit = "0" * 40
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())


def test_checkpoints_load_by_hub_repo_id_from_the_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    cfg = get_config("ci")
    torch.manual_seed(0)
    Tokenizer(cfg.tokenizer).save_pretrained(tmp_path / "tok", cfg)
    _fake_hub_cache(tmp_path / "hub", "someone/tiny-tokenizer", tmp_path / "tok")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    a, b = Tokenizer.from_pretrained(tmp_path / "tok"), Tokenizer.from_pretrained("someone/tiny-tokenizer", cfg)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(CheckpointError, match="field tokenizer.codebook_size"):  # the strict config check stays
        Tokenizer.from_pretrained("someone/tiny-tokenizer", get_config("ci", **{"tokenizer.codebook_size": 64}))
    with pytest.raises(CheckpointError, match="no such Hub repo in the Hugging Face cache"):
        Tokenizer.from_pretrained("someone/absent")
    monkeypatch.chdir(tmp_path)  # a missing path under a folder that exists is a local typo, never a repo id
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint at runs/typo: expected config.json"):
        Tokenizer.from_pretrained("runs/typo")


def test_fsdp_config_parses_and_wraps_the_transformer_blocks():
    from accelerate.commands.config.config_args import load_config_from_file
    from minimuse import transformer
    from minimuse.superres import SuperResTransformer
    c = load_config_from_file(str(ROOT / "configs" / "accelerate" / "fsdp.yaml"))
    assert c.distributed_type.value == "FSDP" and c.mixed_precision == "bf16"
    fc = c.fsdp_config
    assert fc["fsdp_version"] == 2 and fc["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    name = fc["fsdp_transformer_layer_cls_to_wrap"]
    cls = getattr(transformer, name)
    for model in (transformer.MaskedTransformer.from_config(get_config("ci")), SuperResTransformer.from_config(get_config("ci"))):
        blocks = [m for m in model.modules() if type(m).__name__ == name]
        assert blocks and all(isinstance(m, cls) for m in blocks)
        # every parameter outside the blocks is small: the blocks hold what FSDP shards
        inside = sum(p.numel() for m in blocks for p in m.parameters())
        assert inside > 0.5 * sum(p.numel() for p in model.parameters())
