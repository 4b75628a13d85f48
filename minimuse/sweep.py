"""Sweeps over sampling settings: faithfulness with its Wilson interval, FID and diversity at every point, and the
Pareto plots that test Muse's claims on steps, schedules and guidance (§2.7-2.8, §4.4).

`minimuse sweep --param guidance --values 0,1,2 [--param steps --values 8,24] --n 64 --seeds 4 --out DIR` runs the
cartesian product of the values; each point draws n held-out prompts per caption kind for each of `seeds` prompt
seeds, judges every image, and measures FID against true renders of the same prompts and the diversity of a few
prompts over 8 seeds, in the feature space of features.py. DIR/sweep.jsonl is rewritten atomically after every
point, so a killed sweep resumes with the same command plus --resume. Taught in notebooks/09_experiments.ipynb.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_bytes, atomic_write_text
from .config import SampleConfig
from .data import eval_prompts, render, to_tensor
from .eval import diversity
from .measures import faithfulness_at
from .inputs import MAX_CAPTIONS_BYTES, read_jsonl
from .metrics import fid, wilson
from .runs import RunExistsError

# flag-style name -> SampleConfig field; the values of each are read as that field's type
PARAMS = {"steps": "num_steps", "guidance": "guidance_scale", "guidance-schedule": "guidance_schedule",
          "schedule": "schedule", "sampler": "sampler", "choice-temperature": "choice_temperature",
          "temperature": "temperature", "top-k": "top_k", "remask-prob": "remask_prob"}
JSONL, PLOT = "sweep.jsonl", "sweep.png"


def parse_grid(params: list[str], values: list[str]) -> list[dict]:
    """--param/--values pairs -> every combination as {SampleConfig field: value}, each checked by SampleConfig."""
    if not params or len(params) != len(values):
        raise ValueError(f"give one --values list per --param (got {len(params or [])} --param and {len(values or [])} --values)")
    twice = next((p for i, p in enumerate(params) if p in params[:i]), None)
    if twice is not None:  # argparse keeps both; the grid would silently use one
        raise ValueError(f"--param {twice} is given twice; give each setting once, with all its values in one "
                         f"--values list (e.g. --param {twice} --values 1,2,3)")
    axes = []
    for name, vals in zip(params, values):
        if name not in PARAMS:
            raise ValueError(f"unknown --param {name!r}; choose from: {', '.join(PARAMS)}")
        field = PARAMS[name]
        kind = type(getattr(SampleConfig(), field))
        items = [v.strip() for v in vals.split(",") if v.strip()]
        if not items:
            raise ValueError(f"--values for {name} is empty; give comma-separated values like 0,1,2")
        try:
            parsed = [kind(v) if kind is not str else v for v in items]
        except ValueError:
            raise ValueError(f"--values for {name}: cannot read {vals!r} as {kind.__name__}s") from None
        for v in parsed:  # one clear line per bad value, before any model is loaded
            try:
                SampleConfig(**{field: v})
            except ValueError as e:
                raise ValueError(f"--param {name} value {v!r}: {str(e).split(': ', 1)[-1]}") from None
        axes.append([(field, v) for v in parsed])
    return [dict(combo) for combo in itertools.product(*axes)]


def sweep_point(pipe, features, n: int, seeds: int, n_diversity: int = 4, **sampling) -> dict:
    """Faithfulness (judged, with its Wilson interval), FID and diversity of one setting. Prompt seed s draws
    eval_prompts(n, eval_seed + 1000 s); the true renders for FID use their own generator streams."""
    cfg, t0 = pipe.config, time.time()
    oks, by_kind, fakes, reals = 0, {}, [], []
    for s in range(seeds):
        seed = cfg.data.eval_seed + 1000 * s
        drawn = []
        r = faithfulness_at(pipe, n, seed, cfg.data.kinds, 128, (None,), keep=drawn, **sampling)[0]
        for kind, acc in r["by_kind"].items():  # rates rounded to 4 decimals: exact counts while n < 5,000
            by_kind[kind] = by_kind.get(kind, 0) + round(acc * n)
            oks += round(acc * n)
        fakes.append(np.concatenate(drawn))
        S = cfg.data.image_size
        reals.append(np.stack([render(spec, S, np.random.default_rng((seed, i, 7)))  # the same prompts, truly drawn
                               for i, (_, spec, _) in enumerate(eval_prompts(n, seed, kinds=cfg.data.kinds))]))
    total = n * len(by_kind) * seeds
    to_x = lambda a: torch.stack([to_tensor(im) for im in a])  # (N, 3, S, S)
    k, kinds = -(-n_diversity // len(cfg.data.kinds)), len(cfg.data.kinds)
    grouped = eval_prompts(k, cfg.data.eval_seed, kinds=cfg.data.kinds)  # k per kind, kind after kind
    picks = [grouped[j * k + i] for i in range(k) for j in range(kinds)][:n_diversity]  # round-robin over the kinds
    div = [diversity(np.concatenate([pipe([c], seed=sd, superres=False, **sampling) for sd in range(8)]), features)
           for c, _, _ in picks]
    lo, hi = wilson(oks / total, total)
    return {"faithfulness": round(oks / total, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": total,
            "by_kind": {k: round(v / (n * seeds), 4) for k, v in by_kind.items()}, "n_per_kind": n * seeds,
            "fid": round(fid(to_x(np.concatenate(reals)), to_x(np.concatenate(fakes)), features), 3),
            "diversity": round(float(np.mean([d["feature_distance"] for d in div])), 4),
            "diversity_se": round(float(np.std([d["feature_distance"] for d in div], ddof=1) / np.sqrt(len(div))), 4)
            if len(div) > 1 else None,  # standard error over the prompts: the spread between prompts is the noise
            "diversity_per_prompt": [d["feature_distance"] for d in div],
            "centroid_spread_px": round(float(np.mean([d["centroid_spread_px"] for d in div])), 3),
            "diversity_prompts": len(div), "seconds": round(time.time() - t0, 1)}


def run_sweep(pipe, features, grid: list[dict], n: int, seeds: int, out_dir, resume: bool = False,
              overwrite: bool = False, log=print, n_diversity: int = 4) -> list[dict]:
    """Every point of `grid` through sweep_point; DIR/sweep.jsonl rewritten atomically after each, then the plot."""
    out = Path(out_dir)
    path = out / JSONL
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    if resume and overwrite:
        raise ValueError("give --resume (continue the sweep) or --overwrite (start over), not both")
    if path.exists() and not (resume or overwrite):
        raise RunExistsError(f"{out} already holds a sweep ({JSONL}); pass --resume to continue it or --overwrite to start over")
    if resume and not path.exists():
        raise ValueError(f"cannot resume: no {JSONL} in {out}")
    rows = _read_rows(path) if resume else []
    for r in rows:
        if (r["n"], r["seeds"], r["diversity_prompts"]) != (n * len(pipe.config.data.kinds) * seeds, seeds, n_diversity):
            raise ValueError(f"cannot resume {out}: it was swept with other --n/--seeds/--diversity-prompts; use a new --out")
    done = [r["params"] for r in rows]
    for i, params in enumerate(grid):
        if params in done:
            continue
        r = sweep_point(pipe, features, n, seeds, n_diversity, **params)
        rows.append({"params": params, "seeds": seeds, **r})
        atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in rows))
        log(f"[{i + 1}/{len(grid)}] {params}: faithfulness {r['faithfulness']:.3f} {r['ci95']} (n={r['n']}), "
            f"FID {r['fid']:.1f}, diversity {r['diversity']:.3f}, {r['seconds']:.0f} s")
    plot_sweep(rows, out / PLOT)
    return rows


def _read_rows(path: Path) -> list[dict]:
    """The rows of a sweep.jsonl to resume, each checked to be a row this module wrote (a hand edit is named)."""
    rows = read_jsonl(path, "sweep file", MAX_CAPTIONS_BYTES)
    for n, r in rows:
        missing = sorted({"params", "n", "seeds", "diversity_prompts"} - set(r))
        if missing or not isinstance(r["params"], dict):
            why = f"missing {', '.join(missing)}" if missing else '"params" is not an object'
            raise ValueError(f"sweep file {path}, line {n}: not a sweep row ({why}); start over with --overwrite, "
                             "or use a new --out")
    return [r for _, r in rows]


def plot_sweep(rows: list[dict], path) -> None:
    """Faithfulness against FID and against diversity, one point per setting with its 95% Wilson interval, labelled
    by the first parameter's value; one colour per combination of the others (a line when the first is numeric),
    and n written on the plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import io
    names = list(rows[0]["params"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = {}
    for r in rows:
        groups.setdefault(tuple((k, r["params"][k]) for k in names[1:]), []).append(r)
    for ax, x in zip(axes, ("fid", "diversity")):
        for key, rs in groups.items():
            label = ", ".join(f"{k}={v}" for k, v in key) or None
            xs, ys = [r[x] for r in rs], [r["faithfulness"] for r in rs]
            err = np.array([[r["faithfulness"] - r["ci95"][0], r["ci95"][1] - r["faithfulness"]] for r in rs]).T
            xerr = ([1.96 * (r.get("diversity_se") or 0) for r in rs] if x == "diversity" else None)  # 0: not stored
            ordered = not isinstance(rs[0]["params"][names[0]], str)  # a line only through ordered values
            ax.errorbar(xs, ys, yerr=err, xerr=xerr, marker="o", capsize=3, label=label, linestyle="-" if ordered else "none")
            for r in rs:
                ax.annotate(str(r["params"][names[0]]), (r[x], r["faithfulness"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("FID (shapes features; lower is better)" if x == "fid" else
                      f"diversity (feature distance over 8 seeds, {rows[0]['diversity_prompts']} prompts"
                      + (", ±1.96 SE)" if rows[0].get("diversity_se") is not None else ")"))
        ax.set_ylabel("faithfulness (judged)")
        if any(k for k in groups):
            ax.legend(fontsize=7)
    fig.suptitle(f"points labelled by {names[0]}; n = {rows[0]['n']} judged prompts per point, 95% Wilson intervals")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
