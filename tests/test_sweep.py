"""minimuse sweep: the grid, its error paths, an end-to-end sweep on tiny models, resume and refusal to overwrite."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from minimuse.metrics import wilson
from minimuse.features import ShapesFeatures
from minimuse.pipeline import load_pipeline
from minimuse.runs import RunExistsError
from minimuse.sweep import parse_grid, run_sweep
from tests.tiny import make_tiny_pipeline


def test_grid_is_the_cartesian_product_in_config_types():
    grid = parse_grid(["guidance", "steps", "sampler"], ["0,1.5", "4,8", "confidence"])
    assert grid == [{"guidance_scale": g, "num_steps": s, "sampler": "confidence"} for g in (0.0, 1.5) for s in (4, 8)]
    assert all(isinstance(p["num_steps"], int) for p in grid)


@pytest.mark.parametrize("params, values, message", [
    (["guidance"], [], "one --values list per --param"),
    (["speed"], ["1"], "unknown --param 'speed'"),
    (["steps"], ["4,x"], "cannot read '4,x' as ints"),
    (["steps"], ["0"], "value 0: must be at least 1"),
    (["sampler"], ["confident"], "unknown sampler 'confident'"),
    (["guidance"], [" , "], "is empty"),
])
def test_grid_errors_name_the_problem(params, values, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(params, values)


def test_cli_error_is_one_line_before_any_model_loads(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minimuse", "sweep", "--param", "steps", "--values", "4,-1",
                        "--out", str(tmp_path / "s"), "--checkpoint", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "--param steps value -1" in r.stderr
    assert not (tmp_path / "s").exists()


def test_sweep_writes_jsonl_and_plot_and_resumes(tmp_path, monkeypatch):
    pipe = load_pipeline(make_tiny_pipeline(tmp_path / "ckpt"), device="cpu")
    torch.manual_seed(0)
    S = pipe.config.data.image_size
    features = ShapesFeatures(width=8, num_features=16, image_size=S).eval()
    grid = parse_grid(["guidance", "steps"], ["0,2", "2"])
    out = tmp_path / "sweep"
    rows = run_sweep(pipe, features, grid[:1], n=2, seeds=2, out_dir=out, log=lambda *_: None)
    kinds = len(pipe.config.data.kinds)
    (r,) = rows
    assert r["n"] == 2 * kinds * 2 and r["params"] == grid[0]
    assert abs(r["faithfulness"] * r["n"] - round(r["faithfulness"] * r["n"])) < 1e-6  # a count of judged images
    assert tuple(r["ci95"]) == tuple(round(x, 4) for x in wilson(r["faithfulness"], r["n"]))  # its interval at that n
    per = r["diversity_per_prompt"]  # the diversity's interval comes from the spread between its prompts
    assert len(per) == r["diversity_prompts"] == 4 and abs(np.mean(per) - r["diversity"]) < 1e-3
    assert abs(r["diversity_se"] - np.std(per, ddof=1) / np.sqrt(len(per))) < 1e-3
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(RunExistsError, match="--resume"):
        run_sweep(pipe, features, grid, n=2, seeds=2, out_dir=out)
    for n, div in ((3, 4), (2, 5)):  # another n, or another number of diversity prompts, is another sweep
        with pytest.raises(ValueError, match="other --n/--seeds/--diversity-prompts"):
            run_sweep(pipe, features, grid, n=n, seeds=2, out_dir=out, resume=True, n_diversity=div)
    assert abs(sum(r["by_kind"].values()) / kinds - r["faithfulness"]) < 1e-3  # overall = the kinds' mean (equal n)
    import minimuse.sweep as sweep_mod
    calls, point = [], sweep_mod.sweep_point
    monkeypatch.setattr(sweep_mod, "sweep_point", lambda *a, **k: calls.append(k) or point(*a, **k))
    rows = run_sweep(pipe, features, grid, n=2, seeds=2, out_dir=out, resume=True, log=lambda *_: None)
    saved = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [x["params"] for x in saved] == grid and saved[0] == r  # the first point kept,
    assert calls == [grid[1]]                                        # and only the missing one drawn
