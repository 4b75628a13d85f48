"""Output paths that must never be written over, whatever --overwrite says (issue 30, "Reliability v2").

- `pretokenize --overwrite` empties --out to start over: an --out that is, holds or lies inside --data (or a
  tokenizer checkpoint it reads) is refused before anything is read, written or deleted, symbolic links resolved;
  and it deletes only a folder of shards it wrote, never a file or a folder without a manifest;
- an output file is replaced only if it is a regular file: a FIFO, a device or a symbolic link is refused by name;
- MINIMUSE_DEBUG shows the traceback only for 1, true or yes, not for any value set (0 included).
Every refusal is checked as the CLI reports it: exit code 2, one `minimuse: error:` line, no traceback, and every
file of the inputs the same before and after (names and bytes).
"""
import os
import shutil
import stat
from pathlib import Path

import pytest

from clitools import assert_one_line, run_cli
from minimuse.inputs import check_outputs, refuse_overlap
from minimuse.cli import main
from minimuse.config import ConfigError
from minimuse.presets import get_config
from minimuse.hfdata import write_imagefolder
from minimuse.shards import pretokenize

S = get_config("ci").data.image_size


def listing(root: Path) -> dict:
    """Every path under root (folders too) with its bytes (None for a folder): what must survive unchanged."""
    return {p.relative_to(root): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture
def data(tmp_path):
    """tmp/parent/d: a tiny image folder (4 PNGs and metadata.jsonl), with a sibling file in its parent."""
    d = tmp_path / "parent" / "d"
    write_imagefolder(d, "shapes", n=4, size=S, seed=1)
    (tmp_path / "parent" / "notes.txt").write_text("the user's own file\n")
    return d


def pretok(data, tok, out, *extra):
    return ["pretokenize", "--preset", "ci", "--data", data, "--tokenizer", tok, "--out", out, "--overwrite", *extra]


@pytest.mark.parametrize("where, fragment", [
    ("same", "is the same folder as the input --data"),
    ("parent", "contains the input --data"),
    ("inside", "lies inside the input --data"),
    ("link-to-data", "is the same folder as the input --data"),
    ("link-to-parent", "contains the input --data"),
])
def test_pretokenize_overwrite_never_touches_the_data(where, fragment, data, ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("minimuse.tokenizer.Tokenizer.from_pretrained", lambda *a, **k: pytest.fail("loaded first"))
    out = {"same": data, "parent": data.parent, "inside": data / "shards", "link-to-data": tmp_path / "ln",
           "link-to-parent": tmp_path / "ln"}[where]
    if where.startswith("link"):
        out.symlink_to(data if where == "link-to-data" else data.parent, target_is_directory=True)
    assert len(listing(data)) == 5  # 4 images and metadata.jsonl
    before = listing(tmp_path)
    code, _, err = run_cli(capsys, *pretok(data, ckpt / "tokenizer", out))
    assert_one_line(code, err, fragment)
    assert str(out) in err and "--overwrite" in err
    assert listing(tmp_path) == before  # the data, its parent's other file, and no shards folder inside the data


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_pretokenize_out_overlapping_a_tokenizer_is_refused(where, data, ckpt, tmp_path, capsys):
    tok = tmp_path / "ckpt" / "tokenizer"  # a copy: should the check fail, the module's checkpoint is not the one lost
    shutil.copytree(ckpt / "tokenizer", tok)
    ckpt = tok.parent
    out = {"same": tok, "parent": ckpt, "inside": tok / "shards"}[where]
    before = listing(ckpt)
    code, _, err = run_cli(capsys, *pretok(data, tok, out))
    assert_one_line(code, err, "the input --tokenizer")
    assert listing(ckpt) == before
    code, _, err = run_cli(capsys, *pretok(data, tmp_path / "absent", tok / "shards", "--superres-tokenizer", tok))
    assert_one_line(code, err, "lies inside the input --superres-tokenizer")
    assert listing(ckpt) == before


def test_python_pretokenize_refuses_the_data_folder_before_reading(data, tmp_path):
    before = listing(tmp_path)
    for out in (data, data.parent, data / "sh"):  # refused before the tokenizer or encoder is used: None will do
        with pytest.raises(ValueError, match="the input data"):
            pretokenize(data, None, None, out, size=S, overwrite=True)
    assert listing(tmp_path) == before


def test_pretokenize_overwrite_never_deletes_a_file(data, ckpt, tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("precious\n")
    code, _, err = run_cli(capsys, *pretok(data, ckpt / "tokenizer", f))
    assert_one_line(code, err, f"{f} exists and is not a folder")
    assert f.read_text() == "precious\n"


def test_pretokenize_overwrite_never_deletes_a_folder_it_did_not_write(data, ckpt, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "thesis.tex").write_text("years of work\n")
    before = listing(mine)
    code, _, err = run_cli(capsys, *pretok(data, ckpt / "tokenizer", mine))
    assert_one_line(code, err, "holds no shards (manifest.json missing)")
    assert listing(mine) == before
    (mine / "manifest.json").write_text('{"format": "someone-else/3"}')  # not a minimuse-shards manifest
    code, _, err = run_cli(capsys, *pretok(data, ckpt / "tokenizer", mine))
    assert_one_line(code, err, "is not a minimuse-shards/1 manifest")
    assert (mine / "sub" / "thesis.tex").is_file()


def test_pretokenize_overwrite_still_replaces_its_own_shards(data, ckpt, tmp_path, capsys):
    sh = tmp_path / "sh"
    assert run_cli(capsys, *pretok(data, ckpt / "tokenizer", sh)[:-1])[0] == 0
    (sh / "manifest.json").write_text((sh / "manifest.json").read_text().replace('"split": "train"', '"split": "old"'))
    code, out, err = run_cli(capsys, *pretok(data, ckpt / "tokenizer", sh))
    assert code == 0, err
    assert "pre-tokenized 4 images" in out
    assert '"split": "train"' in (sh / "manifest.json").read_text()


# ------------------------------------------------------------------------------------------------ output files

def test_generate_overwrite_never_replaces_a_fifo(ckpt, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for extra in (["--overwrite"], []):
        code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", ckpt, "--out", fifo, *extra)
        assert_one_line(code, err, f"output {fifo} is a FIFO (named pipe), not a regular file")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.png"]  # no temp file left beside it


def test_generate_overwrite_never_replaces_a_symlink(ckpt, tmp_path, capsys):
    target = tmp_path / "target.png"
    target.write_bytes(b"kept")
    for link, to in ((tmp_path / "link.png", target), (tmp_path / "dangling.png", tmp_path / "nowhere.png")):
        link.symlink_to(to)
        code, _, err = run_cli(capsys, "generate", "a red circle", "--checkpoint", ckpt, "--out", link, "--overwrite")
        assert_one_line(code, err, f"output {link} is a symbolic link")
        assert link.is_symlink() and os.readlink(link) == str(to)
    assert target.read_bytes() == b"kept" and not (tmp_path / "nowhere.png").exists()


def test_check_outputs_accepts_only_regular_files(tmp_path):
    fifo, reg = tmp_path / "f", tmp_path / "r"
    os.mkfifo(fifo)
    reg.write_bytes(b"x")
    assert check_outputs([reg], overwrite=True) == [reg]
    with pytest.raises(FileExistsError, match="is a FIFO"):
        check_outputs([reg, fifo], overwrite=True)
    dev = Path("/dev/null")  # only looked at: check_outputs writes nothing
    if dev.exists() and stat.S_ISCHR(dev.stat().st_mode):
        with pytest.raises(FileExistsError, match="/dev/null is a character device"):
            check_outputs([dev], overwrite=True)


def test_refuse_overlap_takes_paths_or_labels(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert refuse_overlap(tmp_path / "c", [tmp_path / "a"]) == tmp_path / "c"
    assert refuse_overlap(tmp_path / "a-b", {"--data": tmp_path / "a", "--x": None})  # a shared prefix is not a parent
    assert refuse_overlap(tmp_path / "a", {"--tokenizer": "owner/repo-on-the-hub"})  # nothing on disk to lose
    with pytest.raises(ValueError, match=f"--out {tmp_path} contains the input {tmp_path / 'a'}:"):
        refuse_overlap(tmp_path, [tmp_path / "a"])
    with pytest.raises(ValueError, match="lies inside the input --data"):
        refuse_overlap(tmp_path / "a" / "b" / ".." / "b" / "c", {"--data": tmp_path / "a"})


# ----------------------------------------------------------------------------------------------- MINIMUSE_DEBUG

@pytest.mark.parametrize("value", ["0", "false", "No", "", "off"])
def test_debug_off_values_keep_the_one_line(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIMUSE_DEBUG", value)
    code, _, err = run_cli(capsys, "train", "--preset", "lapto", "--out", tmp_path / "run")
    assert_one_line(code, err, "unknown preset 'lapto'")


@pytest.mark.parametrize("value", ["1", "true", "YES", " yes "])
def test_debug_on_values_raise(value, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMUSE_DEBUG", value)
    with pytest.raises(ConfigError, match="unknown preset"):
        main(["train", "--preset", "lapto", "--out", str(tmp_path / "run")])
