"""Reading what the user hands a command: text files, JSON lines, images and seeds, each bounded and named.

Every check here raises a ValueError (a TypeError for a wrong Python type) whose message names the file, line or
argument at fault and says what to do; cli.main prints it as one `minimuse: error: ...` line. Nothing here writes:
`check_outputs` and `refuse_overlap` check the paths a command will write before it writes any.
A command reads and checks all of its inputs with these before it writes its first output (issue 30), so a bad line
near the end of a file, or an image that would not decode, costs no sampling time and leaves no partial outputs.
"""
from __future__ import annotations

import io
import json
import numbers
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import torch

MAX_SEED = 2 ** 63               # seeds are non-negative 63-bit integers, as torch and numpy both take them
MAX_TEXT_BYTES = 10 * 2 ** 20    # a prompts or jobs file: 10 MB is ~200,000 prompts; more is the wrong file
# captions.jsonl of `minimuse dataset --n 1000000` (its limit) is ~60 MB: room for that, not for /dev/zero's stream
MAX_CAPTIONS_BYTES = 256 * 2 ** 20
MAX_METADATA_BYTES = 2 ** 30     # an image folder's metadata.jsonl: ~10M images' lines
JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
              type(None): "null"}


def _kind_of(p: Path) -> str:
    """What a non-regular, non-directory path is, in words, for an error message."""
    mode = p.stat().st_mode
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_outputs(paths, overwrite: bool = False) -> list[Path]:
    """Refuse, before any work is done, an output path that would replace a file (unless `overwrite`) or cannot be
    written: a directory in its place, a file where a parent directory belongs, a read-only directory.
    Whatever `overwrite` says, only a regular file is ever replaced: a symbolic link, a device (/dev/null), a FIFO or
    a socket in an output's place is refused by name (the atomic rename would swap it for a plain file).
    One error naming the first bad path, so an hour of sampling never ends in a clobbered or unwritable file."""
    paths, seen = [Path(p) for p in paths], set()
    for p in paths:
        if p.is_symlink():
            raise FileExistsError(f"output {p} is a symbolic link; give the path of a regular file to write")
        if p.is_dir():
            raise IsADirectoryError(f"output {p} is a directory; give the path of a file to write")
        if p.exists() and not p.is_file():
            raise FileExistsError(f"output {p} is {_kind_of(p)}, not a regular file; minimuse never replaces one, "
                                  "even with --overwrite: give the path of a regular file to write")
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} already exists; pass --overwrite to replace it (overwrite=True in Python)")
        d = p.parent
        while not d.exists() and d != d.parent:  # the nearest existing ancestor is the one mkdir must write into
            d = d.parent
        if d in seen:
            continue
        seen.add(d)
        if not d.is_dir():
            raise NotADirectoryError(f"cannot write {p}: {d} is a file, not a directory")
        if not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write {p}: directory {d} is read-only")
    return paths


def refuse_overlap(out, inputs, name: str = "--out") -> Path:
    """Refuse an output folder that is, contains or lies inside one of the `inputs` (a {label: path} dict, or paths),
    symbolic links resolved: writing there, and above all deleting it to start over (--overwrite), would destroy the
    inputs. Inputs that are None or absent from disk (a Hub id, say) have nothing to lose and are skipped.
    Call it before anything is read, written or deleted. Returns `out` as a Path."""
    out = Path(out)
    target = out.resolve()
    pairs = inputs.items() if isinstance(inputs, dict) else ((str(p), p) for p in inputs)
    for label, src in pairs:
        if src is None or not os.path.exists(src):
            continue
        real = Path(src).resolve()
        if target == real:
            how = "is the same folder as"
        elif target in real.parents:
            how = "contains"
        elif real in target.parents:
            how = "lies inside"
        else:
            continue
        shown = label if str(label) == str(src) else f"{label} {src}"
        raise ValueError(f"{name} {out} {how} the input {shown}: writing there (or deleting it with --overwrite) "
                         f"would destroy the input; choose another {name}, apart from every input")
    return out


def read_text_input(path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text (a BOM dropped) of the regular file `path`, named `what` ("prompts file") in every refusal:
    missing, a directory, a FIFO or device (a FIFO blocks for ever, /dev/zero never ends), over `limit` bytes, not
    UTF-8, or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give the path of a text file")
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {path} is {_kind_of(path)}, not a regular file; give the path of a text file")
    try:
        # O_NONBLOCK: were the file swapped for a FIFO after the check above, the open must not wait for a writer
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{what} {path} is not a regular file; give the path of a text file")
            data = f.read(limit + 1) if st.st_size <= limit else b""
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if st.st_size > limit or len(data) > limit:  # the read stops one byte past the limit, should the file have grown
        raise ValueError(f"{what} {path} is {max(st.st_size, len(data)):,} bytes, over the limit of {limit:,} bytes "
                         f"({limit // 2 ** 20} MB); split it into smaller files")
    try:
        return data.decode("utf-8-sig")  # -sig: a BOM from a Windows editor is not part of the first line
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         "save it as UTF-8") from None


def read_prompts(path) -> list[str]:
    """One prompt per non-blank line of a UTF-8 text file of at most 10 MB (a FIFO or a device is refused by name:
    one would block for ever, /dev/zero never ends)."""
    prompts = [line.strip() for line in read_text_input(path, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompts")
    return prompts


def read_jsonl(path, what: str, limit: int = MAX_TEXT_BYTES) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of the JSON-lines file `path`. A line that is not JSON, or is
    JSON but not an object (null, a number, a list, ...), is refused naming the file and the line."""
    rows = []
    for n, line in enumerate(read_text_input(path, what, limit).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} {path}, line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{what} {path}, line {n}: holds {JSON_KINDS.get(type(row), 'a value')}, not an object "
                             "{...}; write one JSON object per line")
        rows.append((n, row))
    return rows


# ------------------------------------------------------------------------------------------------------------ seeds
def check_prompt_text(prompts, negative_prompt=None) -> list[str]:
    """`prompts` (a string or a list of strings) as a list of valid text, else a TypeError or ValueError naming the
    prompt: no prompt at all, a non-string, or a lone surrogate (the text tokenizer needs valid UTF-8)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be a string or a list of strings, got a {type(prompts).__name__} holding "
                        f"{type(prompts[bad[0]]).__name__} at index {bad[0]}")
    if not prompts:
        raise ValueError("no prompts given")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise TypeError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
    for what, p in [("prompt", p) for p in prompts] + ([("negative prompt", negative_prompt)] if negative_prompt else []):
        try:
            p.encode()  # a lone surrogate would give the tokenizer a baffling TypeError
        except UnicodeEncodeError:
            raise ValueError(f"{what} {p[:40]!r} is not valid text: it holds a lone surrogate character") from None
    return list(prompts)


def check_seed(seed, name: str = "seed") -> int:
    """An integer seed in [0, 2**63): a TypeError for another type, a ValueError outside the range."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"{name} must be an integer, got {type(seed).__name__}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"{name} must lie in [0, 2**63), got {seed}")
    return seed


def check_batch_seeds(seed, n: int, batch_size: int, what: str = "prompts", name: str = "--seed") -> None:
    """The batch starting at item i draws with seed + i: refuse a seed that makes the last batch's pass 2**63 - 1,
    before the first batch is drawn (else the last batch fails after the first ones were written)."""
    check_seed(seed, name.lstrip("-"))
    last = (n - 1) // batch_size * batch_size
    if seed + last >= MAX_SEED:
        raise ValueError(f"{name} {seed} is too large for {n} {what} in batches of {batch_size}: the last batch draws "
                         f"with seed + {last}, past 2**63 - 1; use {name} {MAX_SEED - 1 - last} or less")


# ----------------------------------------------------------------------------------------------------------- images
def default_device() -> str:
    """"cuda" when a CUDA device is visible, else "cpu": what every command and notebook picks unless told."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device) -> torch.device:
    """`device` as a torch.device, refusing a malformed name or a CUDA device that is not there (ValueError)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device} is not available: torch sees {torch.cuda.device_count()} CUDA device(s); use cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device} is not supported; use cpu, cuda or cuda:N")
    return device


def _bomb_limit() -> int:
    from PIL import Image
    return Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's warning limit (None when a caller turned it off)


def open_image(source, what: str = "image", where=None):
    """`source` (a path, bytes, or a PIL image) as an 8-bit RGB PIL image, or a ValueError naming it (`where`, by
    default the path): decoded in full and verified, EXIF orientation applied, the first frame of an animation,
    16-bit grey scaled (not clipped) to 8 bits, alpha composited over black (the shapes world's background).
    A file declaring more pixels than Pillow's decompression-bomb limit is refused before it is decoded."""
    from PIL import Image
    if isinstance(source, Image.Image):
        return _to_rgb(source, what, "<PIL image>" if where is None else where)
    if isinstance(source, (bytes, bytearray)):
        where = "<bytes>" if where is None else where
        reopen = lambda: io.BytesIO(source)  # noqa: E731
    else:
        path = Path(source)
        where = path if where is None else where
        if not path.is_file():
            raise ValueError(f"{what} {path} does not exist" if not path.exists() else
                             f"{what} {path} is a directory; give an image file" if path.is_dir() else
                             f"{what} {path} is {_kind_of(path)}, not a regular file; give an image file")
        reopen = lambda: path  # noqa: E731
    fail = f"cannot read {what} {where}"
    try:
        with warnings.catch_warnings():  # Pillow only warns between 1x and 2x its limit: refuse there too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(reopen()) as im:
                _check_pixels(im.width * im.height, fail)
                im.verify()  # checksums (PNG): a corrupt file is refused here, not half-decoded
            im = Image.open(reopen())  # verify() leaves the image unusable: decode a fresh one
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise ValueError(_bomb(int(m.group(1)) if m else _bomb_limit() + 1, fail)) from None
    except Exception as e:  # noqa: BLE001 -- any decoder failure (OSError, SyntaxError, struct.error, ...) is the file's
        if isinstance(e, ValueError) and str(e).startswith(fail):
            raise
        raise ValueError(_unreadable(e, fail)) from None
    return _to_rgb(im, what, where)


def read_image(path, what: str = "image") -> np.ndarray:
    """An image file as uint8 (H, W, 3) through open_image, or a one-line error naming the file."""
    return np.asarray(open_image(path, what))


def _short(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


def _unreadable(e: Exception, fail: str) -> str:
    return f"{fail}: it is not a readable image ({_short(e)}); check the file, or save it again as PNG"


def _bomb(n: int, fail: str) -> str:
    return (f"{fail}: it declares {n:,} pixels, over the {_bomb_limit():,}-pixel limit that guards against "
            "decompression bombs (a small file that decodes to gigabytes); give a smaller image")


def _check_pixels(n: int, fail: str) -> None:
    if n > _bomb_limit():
        raise ValueError(_bomb(n, fail))


def _to_rgb(im, what: str, where):
    """8-bit RGB of any image Pillow decodes, or a ValueError naming a pixel mode with no meaningful conversion."""
    from PIL import Image, ImageOps
    fail = f"cannot read {what} {where}"
    try:
        im = ImageOps.exif_transpose(im)  # a phone photo stores its rotation in EXIF, not in its pixels
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            # 16-bit grey ("I" is how Pillow opens some): keep the top 8 bits; convert("RGB") would clip all above 255
            im = Image.fromarray((np.clip(np.asarray(im, np.int64), 0, 65535) >> 8).astype(np.uint8), "L")
        if im.mode == "F":
            raise ValueError(f"{fail}: it holds floating-point pixels (mode F), whose range is unknown; "
                             "save it as an 8-bit RGB PNG")
        if im.mode in ("P", "PA") and (im.mode == "PA" or "transparency" in im.info):
            im = im.convert("RGBA")
        if im.mode in ("LA", "La", "RGBA", "RGBa"):
            rgba = np.asarray(im.convert("RGBA"), np.uint16)  # (H, W, 4)
            return Image.fromarray(((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8), "RGB")
        return im.convert("RGB")  # CMYK, YCbCr, grey, bilevel, palette: Pillow's conversions
    except ValueError as e:
        if str(e).startswith(fail):
            raise
        raise ValueError(f"{fail}: its pixel mode {im.mode} has no conversion to RGB ({_short(e)}); "
                         "save it as an 8-bit RGB PNG") from None
    except Exception as e:  # noqa: BLE001 -- a malformed EXIF block or palette is the file's fault, not a bug here
        raise ValueError(_unreadable(e, fail)) from None
