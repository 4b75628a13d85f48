"""The transformer's training data: the token pool, the text table and the batch of a step.

On 2 CPU cores the tokenizer costs more than a transformer step, and MiniLM more than both, so the transformer trains
on a pool of images tokenized once (`build_token_pool`) and a table of distinct captions encoded once (`text_table`).
`train_step_inputs` draws the batch of step s from them as a pure function of (seed, s): rows (uniform, or by caption
kind with train.kind_weights), text dropout for guidance (Muse §2.7) and a fresh mask (§2.6). train.py runs the loop.
Taught in notebooks/05_training.ipynb.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_tree, save_tree, tokenizer_identity
from .config import Config
from .data import make_sample, to_tensor
from .runs import POOL_NAME
from .scheduler import add_noise, make_labels, random_mask
from .superres import decimate


def build_token_pool(cfg: Config, tokenizer, n: int, cache_dir=None, batch_size: int = 256, lowres_tokenizer=None) -> dict:
    """Tokenize `n` training images once: on 2 cores the tokenizer costs more than a transformer step, so the
    transformer trains on a fixed pool of (ids, caption) pairs. Cached as pool.safetensors (ids and caption indices
    as tensors, vocabulary and key as JSON), keyed by config and tokenizer; a pool of another key is rebuilt.

    With `lowres_tokenizer` it is the super-res stage's pool: each scene rendered at superres.image_size gives `ids`
    through `tokenizer`, and its box-filter decimation to the base size (stored as uint8, as a PNG would hold it)
    gives `lowres_ids` through `lowres_tokenizer`: one scene at both sizes (Muse §2.4)."""
    size = cfg.data.image_size if lowres_tokenizer is None else cfg.superres.image_size
    key = {"n": n, "size": size, "seed": cfg.data.train_seed, "kinds": list(cfg.data.kinds),
           "paraphrase_prob": cfg.data.paraphrase_prob, "tokenizer": tokenizer_identity(tokenizer),
           **({} if lowres_tokenizer is None else {"lowres_tokenizer": tokenizer_identity(lowres_tokenizer)})}
    path = Path(cache_dir) / POOL_NAME if cache_dir else None
    if path is not None and path.is_file():
        try:
            pool = load_tree(path)
        except CheckpointError:
            pool = {}  # a corrupt cache is only a cache: rebuild it
        if pool.get("key") == key:
            return pool
    f = tokenizer.downsample
    ids = torch.empty(n, size // f, size // f, dtype=torch.int16)
    if lowres_tokenizer is not None:
        h, w = cfg.grid
        lowres_ids = torch.empty(n, h, w, dtype=torch.int16)
        lowres_tokenizer.eval()
    captions, kinds = [], []
    tokenizer.eval()
    device = next(tokenizer.parameters()).device  # the training device: on a GPU the pool builds in seconds
    for start in range(0, n, batch_size):
        samples = [make_sample(cfg.data.train_seed, i, size, cfg.data.kinds, cfg.data.paraphrase_prob)
                   for i in range(start, min(n, start + batch_size))]
        with torch.inference_mode():
            batch = torch.stack([to_tensor(s["image"]) for s in samples]).to(device)  # (b, 3, S, S)
            ids[start:start + len(samples)] = tokenizer.encode(batch).short().cpu()
            if lowres_tokenizer is not None:
                small = decimate(batch, size // cfg.data.image_size).mul(255).round().div(255)  # (b, 3, S/2, S/2)
                lowres_ids[start:start + len(samples)] = lowres_tokenizer.encode(small).short().cpu()
        captions += [s["caption"] for s in samples]
        kinds += [s["kind"] for s in samples]
    vocab = [""] + sorted(set(captions))  # index 0 is the unconditional prompt
    index = {c: i for i, c in enumerate(vocab)}
    pool = {"key": key, "ids": ids, "caption_idx": torch.tensor([index[c] for c in captions]), "vocab": vocab, "kinds": kinds}
    if lowres_tokenizer is not None:
        pool["lowres_ids"] = lowres_ids
    if path is not None:
        save_tree(path, pool)
    return pool


def text_table(text_encoder, vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every distinct caption encoded once by the frozen LM: (U, T, E) states and (U, T) padding mask."""
    return text_encoder(vocab)


def train_step_inputs(pool: dict, table, cfg: Config, step: int, batch_size: int, mask_id: int, rank: int = 0, world: int = 1):
    """The batch of one step, a pure function of (seed, step): sampled pool rows, text dropped to "" with prob
    cond_drop_prob (Muse §2.7, for guidance), and a fresh random mask over the pool's grid. Returns inputs, labels,
    text, text_mask, and for a super-res pool a fifth, the rows' lowres_ids (B, h', w'), never dropped or masked."""
    g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    if cfg.train.kind_weights:  # rows drawn so that each caption kind makes up its weight's share of the batch
        rows = torch.multinomial(_row_weights(pool, cfg), batch_size * world, replacement=True, generator=g)
    else:
        rows = torch.randint(0, len(pool["ids"]), (batch_size * world,), generator=g)
    drop = torch.rand(batch_size * world, generator=g) < cfg.train.cond_drop_prob
    grid = tuple(pool["ids"].shape[1:])
    mask = random_mask(batch_size * world, grid, g, cfg.train.min_mask_rate, cfg.train.rect_mask_prob)  # (B, L)
    sl = slice(rank * batch_size, (rank + 1) * batch_size)  # each process takes its own slice of the global batch
    rows, drop, mask = rows[sl], drop[sl], mask[sl]
    ids = pool["ids"][rows].long().flatten(1)  # (B, h, w) -> (B, L)
    cap = torch.where(drop, 0, pool["caption_idx"][rows])
    text, text_mask = table[0][cap], table[1][cap]  # (B, T, E), (B, T)
    T = int(text_mask.sum(1).max())  # trim shared padding: attention cost follows the longest caption in the batch
    out = (add_noise(ids, mask, mask_id), make_labels(ids, mask), text[:, :T], text_mask[:, :T])
    if "lowres_ids" not in pool:
        return out
    low = pool["lowres_ids"][rows].long()  # (B, h', w')
    p = cfg.superres.lowres_noise if cfg.superres is not None else 0.0
    if p > 0:  # conditioning augmentation: the base model's tokens at sampling are not the true ones. Drawn for the
        # whole global batch after everything else, so p = 0 runs keep their exact batches
        K = cfg.tokenizer.codebook_size
        flip = torch.rand((batch_size * world, *low.shape[1:]), generator=g)[sl] < p
        noise = torch.randint(0, K, (batch_size * world, *low.shape[1:]), generator=g)[sl]
        low = torch.where(flip, noise, low)
    return out + (low,)


def _row_weights(pool: dict, cfg: Config) -> torch.Tensor:
    """(N,) sampling weight of each pool row: its kind's weight shared among the rows of that kind. Cached in the pool."""
    key = ("row_weights", tuple(cfg.data.kinds), tuple(cfg.train.kind_weights))
    if pool.get("_row_weights_key") != key:
        index = {k: i for i, k in enumerate(cfg.data.kinds)}
        kind = torch.tensor([index[k] for k in pool["kinds"]])  # (N,)
        count = torch.bincount(kind, minlength=len(index)).clamp_min(1).double()
        pool["_row_weights"] = (torch.tensor(cfg.train.kind_weights, dtype=torch.float64) / count)[kind]
        pool["_row_weights_key"] = key
    return pool["_row_weights"]
