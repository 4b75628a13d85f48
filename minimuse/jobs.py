"""The batch commands' work: `minimuse generate`, `upscale`, `edit` and `outpaint`, every job read and checked first.

Each reads all of its inputs (images, masks, prompts, seeds) and checks every output path before it draws its first
image, then writes each PNG atomically, so a bad line near the end of a jobs file costs no sampling time and leaves no
partial outputs. The drawing itself is the pipeline's (pipe(...), pipe.upscale, pipe.inpaint, pipe.edit, pipe.outpaint; Muse
§2.4 and §3.3). Used by commands.py; the notebooks call the pipeline's methods directly.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from . import viz
from .checkpoint import atomic_save_image, atomic_write_bytes
from .editing import check_images, check_masks, edit_settings, parse_extend
from .inputs import MAX_CAPTIONS_BYTES, MAX_SEED, check_batch_seeds, check_outputs, read_image, read_jsonl
from .limits import MAX_ENLARGE
from .pipeline import load_pipeline


def generate_cli(prompts: list[str], checkpoint, out=None, out_dir=None, history=None, batch_size: int = 64,
                 enlarge: int = 1, overwrite: bool = False, device=None, superres: bool | None = None,
                 **sampling) -> list[Path]:
    """What `minimuse generate` does: one PNG per prompt, in order, plus an optional per-step figure (--history).

    Everything is checked before the first image is drawn (output paths, checkpoint, prompts, settings), and each
    file is written atomically, so a mistake costs no sampling time and a kill leaves no half-written PNG."""
    if out is not None and out_dir is not None:
        raise ValueError("give --out (one image) or --out-dir (numbered images), not both")
    if out_dir is None and len(prompts) > 1:
        raise ValueError(f"{len(prompts)} prompts need --out-dir: --out names a single image")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    paths = ([Path(out_dir) / f"{i:03d}.png" for i in range(len(prompts))] if out_dir is not None
             else [Path(out if out is not None else "out.png")])
    if history is not None and Path(history).resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"--history {history} is also an image output; give it its own file name")
    check_outputs(paths + ([Path(history)] if history is not None else []), overwrite)
    seed = sampling.pop("seed", 0)
    check_batch_seeds(seed, len(prompts), batch_size)  # batch i draws with seed + its first index: the last one too
    pipe = load_pipeline(checkpoint, device=device)
    cascade = pipe._use_superres(superres)
    S = pipe.config.superres.image_size if cascade else pipe.config.data.image_size
    if not isinstance(enlarge, int) or enlarge < 1:
        raise ValueError(f"--enlarge must be an integer from 1 to {MAX_ENLARGE}, got {enlarge}")
    if enlarge > MAX_ENLARGE:
        raise ValueError(f"--enlarge {enlarge} would write {enlarge * S} px images from this {S} px model; "
                         f"use at most {MAX_ENLARGE} ({MAX_ENLARGE * S} px)")
    prompts, _ = pipe.validate(prompts, seed=seed, **sampling)  # every prompt, before the first batch is drawn
    limit, tok = pipe.config.text.max_length, pipe.text_encoder.tokenizer
    for p in prompts:
        n = len(tok(p)["input_ids"])
        if n > limit:
            warnings.warn(f"prompt is {n} tokens, longer than the encoder's limit of {limit}; it is truncated", stacklevel=2)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        want = history is not None and start == 0
        images, hist = pipe(chunk, seed=seed + start, return_history=want, superres=cascade, **sampling) if want else \
            (pipe(chunk, seed=seed + start, superres=cascade, **sampling), None)
        for img, path in zip(images, paths[start:start + len(chunk)]):
            atomic_save_image(path, viz.enlarge(img, enlarge))
        if want:
            atomic_write_bytes(history, viz.history_png(hist, *pipe.stage_parts(), index=0))
    for p in paths[:3]:
        print(f"wrote {p}")
    if len(paths) > 3:
        print(f"... and {len(paths) - 3} more")
    if history is not None:
        print(f"wrote {history}")
    return paths


def _upscale_jobs(image, prompt, out, in_dir, out_dir) -> tuple[list, list[str], list]:
    """(inputs, prompts, outputs) of `minimuse upscale`: one IMAGE with its prompt, or every PNG of in_dir captioned
    by its captions.jsonl ({"file", "caption"} lines, as `minimuse dataset` writes them)."""
    from pathlib import Path
    if in_dir is None:
        if image is None or prompt is None:
            raise ValueError("give IMAGE and --prompt TEXT, or --in-dir DIR --out-dir OUT")
        if out_dir is not None:
            raise ValueError("--out-dir goes with --in-dir; a single IMAGE writes --out")
        return [Path(image)], [prompt], [Path(out if out is not None else "upscaled.png")]
    if image is not None or prompt is not None or out is not None:
        raise ValueError("--in-dir takes every image and caption from DIR; give no IMAGE, --prompt or --out")
    if out_dir is None:
        raise ValueError("--in-dir needs --out-dir")
    src = Path(in_dir)
    if not src.is_dir():
        raise ValueError(f"--in-dir {src} is not a directory")
    captions_file = src / "captions.jsonl"
    if not captions_file.exists() and not captions_file.is_symlink():
        raise ValueError(f"{captions_file} is missing: upscale --in-dir reads each image's prompt from it "
                         '({"file": NAME, "caption": TEXT} per line, as `minimuse dataset` writes)')
    captions = _read_captions(captions_file)
    images = sorted(p for p in src.iterdir() if p.suffix.lower() == ".png" and p.name != "grid.png")
    if not images:
        raise ValueError(f"--in-dir {src} holds no PNG images")
    missing = [p.name for p in images if p.name not in captions]
    if missing:
        raise ValueError(f"{len(missing)} image(s) in {src} have no caption in captions.jsonl, e.g. {missing[0]}")
    return images, [captions[p.name] for p in images], [Path(out_dir) / p.name for p in images]


def _read_captions(path) -> dict[str, str]:
    """{file name: caption} of a captions.jsonl, every line checked: a caption that is null, a number or a list
    would otherwise become the prompt "None", "5" or "['a']"; a file captioned twice is ambiguous."""
    captions = {}
    for n, row in read_jsonl(path, "captions file", MAX_CAPTIONS_BYTES):
        name, caption = row.get("file"), row.get("caption")
        if not isinstance(name, str) or not isinstance(caption, str) or not caption.strip():
            raise ValueError(f'captions file {path}, line {n}: needs "file" (a file name) and "caption" (non-empty '
                             f"text), got file={name!r}, caption={caption!r}")
        if name in captions:
            raise ValueError(f"captions file {path}, line {n}: {name} is captioned a second time; keep one line per image")
        captions[name] = caption
    return captions


def upscale_cli(checkpoint, image=None, prompt=None, out=None, in_dir=None, out_dir=None, seed: int = 0,
                num_steps: int | None = None, guidance_scale: float | None = None, batch_size: int = 64,
                device=None, overwrite: bool = False) -> list:
    """What `minimuse upscale` does. Every input is read and checked (size, caption, output paths) before the first
    image is upscaled, and each PNG is written atomically. Returns the output paths."""
    inputs, prompts, outs = _upscale_jobs(image, prompt, out, in_dir, out_dir)
    check_outputs(outs, overwrite)
    check_batch_seeds(seed, len(inputs), batch_size, "images")  # batch i draws with seed + its first index
    pipe = load_pipeline(checkpoint, device=device)
    if pipe.superres is None:
        raise ValueError(f"{checkpoint} has no super-res stage (no superres/ folder)")
    (h, w), S = pipe.superres.grid, pipe.config.data.image_size
    if num_steps is not None and num_steps > h * w:
        raise ValueError(f"--steps must be at most the {h * w} tokens of the super-res stage's {h}x{w} grid, got {num_steps}")
    images = []
    for path in inputs:
        im = read_image(path)
        if im.shape[:2] != (S, S):
            raise ValueError(f"image {path} is {im.shape[1]}x{im.shape[0]} px; upscale takes the base size, {S}x{S} px")
        images.append(im)
    pipe.check_prompts(prompts)
    for start in range(0, len(images), batch_size):
        sl = slice(start, start + batch_size)
        up = pipe.upscale(np.stack(images[sl]), prompts[sl], seed=seed + start, num_steps=num_steps,
                          guidance_scale=guidance_scale)
        for img, path in zip(up, outs[sl]):
            atomic_save_image(path, img)
    return outs


def read_mask(path, shape: tuple[int, int]) -> np.ndarray:
    """A mask PNG of the image's size: white (> 127 in grey) means regenerate. Returns bool (H, W)."""
    m = read_image(path, "mask").mean(-1) > 127
    if m.shape != shape:
        raise ValueError(f"mask {path} is {m.shape[0]}x{m.shape[1]} px but its image is {shape[0]}x{shape[1]}: "
                         "a mask must have its image's size")
    return m


def read_jobs(path) -> list[dict]:
    """JOBS.jsonl: one {"image": path, "prompt": text, "mask": path or null, "seed": int} per line (mask and seed
    optional). A malformed line, or a seed outside [0, 2**63), is a one-line error with its number."""
    jobs = []
    for n, job in read_jsonl(path, "jobs file"):
        seed = job.get("seed", 0)
        ok = (set(job) <= {"image", "prompt", "mask", "seed"}
              and isinstance(job.get("image"), str) and isinstance(job.get("prompt"), str)
              and isinstance(job.get("mask"), (str, type(None)))
              and isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < MAX_SEED)
        if not ok:
            raise ValueError(f"jobs file {path}, line {n}: expected {{\"image\": path, \"prompt\": text, \"mask\": path or "
                             f"null, \"seed\": int in [0, 2**63)}}, got {json.dumps(job)[:80]}")
        jobs.append({"image": job["image"], "prompt": job["prompt"], "mask": job.get("mask"), "seed": job.get("seed", 0)})
    if not jobs:
        raise ValueError(f"jobs file {path} holds no jobs")
    return jobs


def outpaint_cli(checkpoint, image_path, prompt: str, extend: str, out, seed: int = 0, device=None,
                 overwrite: bool = False):
    """What `minimuse outpaint` does: the image, the extension and the output path are checked before drawing."""
    out = Path(out)
    check_outputs([out], overwrite)
    image = read_image(image_path)
    pipe = load_pipeline(checkpoint, device=device)
    check_images(pipe, image, f"image {image_path}")
    S = pipe.config.data.image_size
    try:
        parse_extend(extend, S // pipe.transformer.grid[1], S)
    except ValueError as e:
        raise ValueError(f"--{e}") from None  # "--extend 'right:9': ...", as the user typed it
    atomic_save_image(out, pipe.outpaint(image, prompt, extend=extend, seed=seed)[0])
    return out


def edit_cli(checkpoint, jobs: list[dict], outs: list, num_iters: int | None = None, overwrite: bool = False, device=None,
             guidance_scale: float | None = None, top_k: int | None = None):
    """What `minimuse edit` does: each job inpaints (with a mask) or edits mask-free (without), outputs in order.
    Every input and output is checked before the first image is drawn; jobs of one kind and seed run as one batch."""
    check_outputs(outs, overwrite)
    images = [read_image(j["image"]) for j in jobs]
    masks = [None if j["mask"] is None else read_mask(j["mask"], im.shape[:2]) for j, im in zip(jobs, images)]
    pipe = load_pipeline(checkpoint, device=device)
    for im, m, j in zip(images, masks, jobs):  # the checks of the methods, before any sampling
        check_images(pipe, im, f"image {j['image']}")
        if m is not None:
            try:
                check_masks(m, (1, *m.shape))
            except ValueError as e:
                raise ValueError(f"mask {j['mask']}: {str(e).split(': ', 1)[-1]}") from None
        pipe.check_prompts([j["prompt"]])
    groups: dict[tuple, list[int]] = {}
    for i, (m, j) in enumerate(zip(masks, jobs)):
        groups.setdefault((m is None, j["seed"]), []).append(i)
    if any(mask_free for mask_free, _ in groups):
        e = edit_settings(pipe, num_iters, None, guidance_scale, top_k)
    for (mask_free, seed), idx in groups.items():  # every batch's seed and settings, before the first is drawn
        pipe.validate([jobs[i]["prompt"] for i in idx], seed=seed,
                      **(dict(guidance_scale=e.guidance_scale, top_k=e.top_k) if mask_free else {}))
    for (mask_free, seed), idx in groups.items():
        batch, prompts = np.stack([images[i] for i in idx]), [jobs[i]["prompt"] for i in idx]
        result = (pipe.edit(batch, prompts, num_iters=num_iters, guidance_scale=guidance_scale, top_k=top_k, seed=seed)
                  if mask_free
                  else pipe.inpaint(batch, np.stack([masks[i] for i in idx]), prompts, seed=seed))
        for i, image in zip(idx, result):
            atomic_save_image(outs[i], image)
    return outs
