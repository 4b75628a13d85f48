"""Real data through Hugging Face `datasets` (hfdata.py) and pre-tokenized shards (shards.py): round trips, errors
that name the file, shard identity, resume after a kill, and training from shards."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minimuse.cli import main
from minimuse.presets import get_config
from minimuse.data import make_sample
from minimuse.digits import load_digits
from minimuse.hfdata import DataError, ImageTextDataset, check_imagefolder, write_imagefolder
from minimuse.checkpoint import tokenizer_identity
from minimuse.shards import ShardError, load_shards, pretokenize
from minimuse.text_encoder import TextEncoder
from minimuse.tokenizer import Tokenizer
from minimuse.train import micro_batches, train_transformer

CFG = get_config("ci")
S = CFG.data.image_size


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tok")
    Tokenizer(CFG.tokenizer).save_pretrained(d, CFG)
    return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes")
    write_imagefolder(d, "shapes", n=40, size=S, seed=3)
    return d


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(CFG.text)


def test_imagefolder_round_trip_is_lossless(folder):
    ds = ImageTextDataset(folder, size=S)
    assert len(ds) == 40
    for i in (0, 17, 39):
        s = make_sample(3, i, S)
        item = ds[i]
        assert item["caption"] == s["caption"]
        assert torch.equal((item["image"] * 255).round().byte().permute(1, 2, 0), torch.from_numpy(s["image"]))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} <= {"single", "count", "relation", "pair", "mixed"}


def test_shuffled_epochs_cover_every_image_once(folder):
    ds = ImageTextDataset(folder, size=S, shuffle=True, seed=1)
    captions = [ds[i]["caption"] for i in range(80)]  # two epochs
    plain = sorted(ImageTextDataset(folder, size=S)[i]["caption"] for i in range(40))
    assert sorted(captions[:40]) == sorted(captions[40:]) == plain
    assert captions[:40] != captions[40:]  # each epoch its own order


def test_resize_and_center_crop(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = (0, 255, 0)  # the middle third survives the crop
    Image.fromarray(wide).save(tmp_path / "wide.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "wide.png", "text": "green"}\n')
    img = ImageTextDataset(tmp_path, size=16)[0]["image"]
    assert img.shape == (3, 16, 16)
    assert torch.allclose(img[:, :, 4:12], torch.tensor([0., 1., 0.]).view(3, 1, 1).expand(3, 16, 8), atol=0.02)
    assert img[1].min() > 0.9 and img[0].max() < 0.05  # 60x20 -> 48x16: the crop keeps the middle third only


def test_digits_are_real_scans_split_and_captioned(tmp_path):
    images, digits, is_test = load_digits(32)
    assert images.shape == (1797, 32, 32, 3) and is_test.sum() == 300
    assert (images[..., 0] == images[..., 2]).all() and images[:, 0, 0].max() < 40  # grey ink on a black border
    counts = write_imagefolder(tmp_path, "digits", size=32)
    assert counts == {"train": 1497, "test": 300}
    row = json.loads((tmp_path / "test" / "metadata.jsonl").read_text().splitlines()[0])
    i = int(row["file_name"][:4])
    assert is_test[i] and row["digit"] == digits[i] and row["text"] == f"a handwritten {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][digits[i]]}"
    test = ImageTextDataset(tmp_path, size=32, split="test")
    assert len(test) == 300
    assert torch.equal((test[0]["image"] * 255).round().byte().permute(1, 2, 0), torch.from_numpy(images[i]))


@pytest.mark.parametrize("case, match", [
    ("empty", "is empty"),
    ("no_metadata", "metadata.jsonl not found"),
    ("no_caption", "line 2: image b.png has no caption"),
    ("missing_file", "line 2: image .*b.png not found"),
    ("not_json", "metadata.jsonl, line 1: not JSON"),
    ("not_an_object", "metadata.jsonl, line 1: holds a number, not an object"),
])
def test_bad_folders_get_one_line_naming_the_file(tmp_path, case, match):
    if case != "empty":
        for name in ("a.png", "b.png"):
            if not (case == "missing_file" and name == "b.png"):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
        lines = ['{"file_name": "a.png", "text": "x"}',
                 '{"file_name": "b.png"}' if case == "no_caption" else '{"file_name": "b.png", "text": "y"}']
        if case == "not_json":
            lines[0] = "{oops"
        if case == "not_an_object":
            lines[0] = "7"
        if case != "no_metadata":
            (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=match):
        check_imagefolder(tmp_path)


def test_uncaptioned_images_are_left_out_with_a_warning(tmp_path):
    for name in ("a.png", "grid.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n')
    with pytest.warns(UserWarning, match="1 images .* left out, e.g. .*grid.png"):
        ds = ImageTextDataset(tmp_path, size=8)
    assert len(ds) == 1 and ds[0]["caption"] == "x"


def test_corrupt_image_is_named(tmp_path, tok_dir):
    write_imagefolder(tmp_path / "d", "shapes", n=4, size=S)
    (tmp_path / "d" / "002.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*002.png"):
        ImageTextDataset(tmp_path / "d", size=S)[2]
    code = main(["pretokenize", "--preset", "ci", "--data", str(tmp_path / "d"), "--tokenizer", str(tok_dir),
                 "--out", str(tmp_path / "shards")])
    assert code == 2


def test_missing_caption_column_is_named(folder):
    with pytest.raises(DataError, match="no caption: needs a non-empty string field 'caption'"):
        ImageTextDataset(folder, caption_column="caption")


def test_pretokenize_encodes_every_image_once(tmp_path, folder, tok_dir, text_encoder):
    tok = Tokenizer.from_pretrained(tok_dir)
    m = pretokenize(folder, tok, text_encoder, tmp_path / "sh", size=S, shard_size=16, batch_size=8)
    assert m["n"] == 40 and m["shards"] == ["shard-00000", "shard-00001", "shard-00002"] and m["complete"]
    pool, (emb, mask) = load_shards(tmp_path / "sh", tok, text_encoder)
    images = torch.stack([ImageTextDataset(folder, size=S)[i]["image"] for i in range(40)])
    assert torch.equal(pool["ids"].long(), tok.encode(images))
    captions = [make_sample(3, i, S)["caption"] for i in range(40)]
    assert [pool["vocab"][j] for j in pool["caption_idx"]] == captions
    assert pool["vocab"][0] == "" and len(pool["vocab"]) == len(set(captions)) + 1
    ref, ref_mask = text_encoder(pool["vocab"])
    assert torch.equal(emb, ref) and torch.equal(mask, ref_mask)
    assert pool["kinds"] == [make_sample(3, i, S)["kind"] for i in range(40)]


def test_pretokenize_resumes_after_a_kill(tmp_path, folder, tok_dir, text_encoder, monkeypatch):
    import minimuse.shards as shards
    tok = Tokenizer.from_pretrained(tok_dir)
    straight = pretokenize(folder, tok, text_encoder, tmp_path / "a", size=S, shard_size=16)
    real, state = shards._encode_fn, {"calls": 0, "die_at": 2}

    def counting(*a, **k):
        fn = real(*a, **k)

        def wrapped(batch):
            state["calls"] += 1
            if state["calls"] == state["die_at"]:
                raise KeyboardInterrupt  # killed inside the second shard
            return fn(batch)
        return wrapped
    monkeypatch.setattr(shards, "_encode_fn", counting)
    with pytest.raises(KeyboardInterrupt):
        pretokenize(folder, tok, text_encoder, tmp_path / "b", size=S, shard_size=16, batch_size=16)
    assert (tmp_path / "b" / "shard-00000").is_dir() and not (tmp_path / "b" / "shard-00001").exists()
    with pytest.raises(ShardError, match="did not finish"):
        load_shards(tmp_path / "b", tok, text_encoder)
    state.update(calls=0, die_at=-1)
    resumed = pretokenize(folder, tok, text_encoder, tmp_path / "b", size=S, shard_size=16, batch_size=16)
    assert state["calls"] == 2  # one batch for each of shards 1 and 2: shard 0 was not encoded again
    assert resumed["shards"] == straight["shards"] and resumed["n"] == straight["n"]
    a, b = load_shards(tmp_path / "a", tok, text_encoder)[0], load_shards(tmp_path / "b", tok, text_encoder)[0]
    assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["caption_idx"], b["caption_idx"])


def test_shards_refuse_another_tokenizer(tmp_path, folder, tok_dir, text_encoder):
    tok = Tokenizer.from_pretrained(tok_dir)
    pretokenize(folder, tok, text_encoder, tmp_path / "sh", size=S)
    other = Tokenizer.from_pretrained(tok_dir)
    with torch.no_grad():
        next(other.decoder.parameters()).add_(1e-3)  # a decoder change alone changes the identity
    assert tokenizer_identity(other) != tokenizer_identity(tok)
    with pytest.raises(ShardError, match=rf"tokenized by tokenizer {tokenizer_identity(tok)}, but this run's is "
                                         rf"{tokenizer_identity(other)}"):
        load_shards(tmp_path / "sh", other, text_encoder)
    with pytest.raises(ShardError, match="another tokenizer"):
        pretokenize(folder, other, text_encoder, tmp_path / "sh", size=S)  # refuses to mix, unless --overwrite
    assert pretokenize(folder, other, text_encoder, tmp_path / "sh", size=S, overwrite=True)["tokenizer"] == tokenizer_identity(other)


def test_streaming_and_saved_datasets_give_the_same_shards(tmp_path, folder, tok_dir, text_encoder):
    import datasets
    tok = Tokenizer.from_pretrained(tok_dir)
    pretokenize(folder, tok, text_encoder, tmp_path / "a", size=S, shard_size=16)
    pretokenize(folder, tok, text_encoder, tmp_path / "b", size=S, shard_size=16, streaming=True)
    datasets.load_dataset("imagefolder", data_dir=str(folder), split="train").save_to_disk(str(tmp_path / "saved"))
    pretokenize(tmp_path / "saved", tok, text_encoder, tmp_path / "c", size=S, shard_size=16)
    # a stream whose length is a multiple of the shard size ends after its last full shard
    assert pretokenize(folder, tok, text_encoder, tmp_path / "d", size=S, shard_size=20, streaming=True)["n"] == 40
    pools = [load_shards(tmp_path / x, tok, text_encoder)[0] for x in "abcd"]
    assert all(torch.equal(pools[0]["ids"], p["ids"]) and pools[0]["vocab"] == p["vocab"] for p in pools[1:])


def _cfg(**kw):
    return get_config("ci", **{"train.steps": 6, "train.batch_size": 8, "train.ckpt_every": 3, "train.log_every": 1,
                               "train.eval_every": 0, **kw})


def test_training_from_shards_resumes_exactly(tmp_path, folder, tok_dir, text_encoder):
    pretokenize(folder, Tokenizer.from_pretrained(tok_dir), text_encoder, tmp_path / "sh", size=S)
    cfg = _cfg()
    straight = train_transformer(cfg, tmp_path / "a", tokenizer_dir=tok_dir, data=tmp_path / "sh")

    def stop_at_3(step, record, model):
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_transformer(cfg, tmp_path / "b", tokenizer_dir=tok_dir, data=tmp_path / "sh", on_step=stop_at_3)
    with pytest.raises(ValueError, match="other data"):
        train_transformer(cfg, tmp_path / "b", resume=True, tokenizer_dir=tok_dir)  # the shapes pool is other data
    resumed = train_transformer(cfg, tmp_path / "b", resume=True, tokenizer_dir=tok_dir, data=tmp_path / "sh")
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed[-len(straight):]]
    from safetensors.torch import load_file
    wa, wb = (load_file(tmp_path / x / "transformer" / "model.safetensors") for x in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_refuses_shards_of_another_tokenizer(tmp_path, folder, tok_dir, text_encoder):
    torch.manual_seed(1)
    other = tmp_path / "other"
    Tokenizer(CFG.tokenizer).save_pretrained(other, CFG)
    pretokenize(folder, Tokenizer.from_pretrained(other), text_encoder, tmp_path / "sh", size=S)
    with pytest.raises(ShardError, match=f"tokenized by tokenizer .*{tok_dir}"):
        train_transformer(_cfg(), tmp_path / "run", tokenizer_dir=tok_dir, data=tmp_path / "sh")


def test_grad_accumulation_gives_the_batch_gradient(tmp_path, tok_dir):
    # The gradients themselves, read after step 1 (on_step runs before the next zero_grad): Adam's first update is
    # about lr * sign(g), so comparing weights would miss a wrongly scaled accumulation.
    assert micro_batches(8, 4) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    grads = {}
    for a in (1, 4):
        cfg = _cfg(**{"train.steps": 1, "train.grad_accum": a, "train.grad_clip": 0.0, "data.pool_size": 64})
        grab = lambda step, record, model, a=a: grads.__setitem__(a, [p.grad.clone() for p in model.parameters()])
        train_transformer(cfg, tmp_path / str(a), tokenizer_dir=tok_dir, on_step=grab)
    scale = max(g.abs().max().item() for g in grads[1])
    assert scale > 0 and max((g1 - g4).abs().max().item() for g1, g4 in zip(grads[1], grads[4])) < 1e-5 * scale
    with pytest.raises(Exception, match="train.grad_accum"):
        get_config("ci", **{"train.batch_size": 8, "train.grad_accum": 3})


def test_cli_dataset_imagefolder_and_pretokenize(tmp_path, tok_dir, capsys):
    assert main(["dataset", "--format", "imagefolder", "--n", "12", "--size", str(S), "--out-dir", str(tmp_path / "d")]) == 0
    assert main(["dataset", "--format", "imagefolder", "--n", "12", "--size", str(S), "--out-dir", str(tmp_path / "d")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["dataset", "--source", "digits", "--out-dir", str(tmp_path / "x")]) == 2
    assert "--format imagefolder" in capsys.readouterr().err
    assert main(["pretokenize", "--preset", "ci", "--data", str(tmp_path / "d"), "--tokenizer", str(tok_dir),
                 "--out", str(tmp_path / "sh")]) == 0
    assert "pre-tokenized 12 images into 1 shards" in capsys.readouterr().out
    assert main(["pretokenize", "--preset", "ci", "--data", str(tmp_path / "nope"), "--tokenizer", str(tok_dir),
                 "--out", str(tmp_path / "sh2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_superres_shards_pair_each_image_with_its_decimation(tmp_path, tok_dir, text_encoder):
    from minimuse.superres import decimate
    from minimuse.train import train_superres
    torch.manual_seed(2)
    hi_dir = tmp_path / "hi"
    Tokenizer(CFG.superres.tokenizer).save_pretrained(hi_dir, CFG, stage="superres")
    lo, hi = Tokenizer.from_pretrained(tok_dir), Tokenizer.from_pretrained(hi_dir)
    H = CFG.superres.image_size
    write_imagefolder(tmp_path / "d", "shapes", n=24, size=H)
    pretokenize(tmp_path / "d", hi, text_encoder, tmp_path / "sh", size=H, lowres_tokenizer=lo, lowres_size=S)
    pool, _ = load_shards(tmp_path / "sh", hi, text_encoder, lowres_tokenizer=lo)
    x = torch.stack([ImageTextDataset(tmp_path / "d", size=H)[i]["image"] for i in range(24)])
    assert torch.equal(pool["ids"].long(), hi.encode(x))
    assert torch.equal(pool["lowres_ids"].long(), lo.encode(decimate(x, H // S).mul(255).round().div(255)))
    with pytest.raises(ShardError, match="super-res shards; this run is a base-model training"):
        load_shards(tmp_path / "sh", hi, text_encoder)
    cfg = get_config("ci", **{"superres.train.steps": 2, "superres.train.batch_size": 4, "superres.train.eval_every": 0,
                              "superres.train.log_every": 1})
    log = train_superres(cfg, tmp_path / "run", tokenizer_dir=tok_dir, superres_tokenizer_dir=hi_dir, data=tmp_path / "sh")
    assert [r["step"] for r in log] == [1, 2] and (tmp_path / "run" / "superres" / "model.safetensors").is_file()
