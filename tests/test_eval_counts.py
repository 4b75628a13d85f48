"""Claim (d)'s measurement (minimuse/eval_counts.py): its cells, its held-out prompts, and what it counts."""
import json
import types

import numpy as np
import pytest

from minimuse.cli import main
from minimuse.data import Spec, parse_caption, render, specs_of_kind
from minimuse.eval_counts import CELLS, cell_name, cell_prompts, eval_counts, seen_in_training


def test_held_out_cells_are_exactly_those_no_training_kind_makes():
    held_out = {cell_name(p, r) for p, r in CELLS if not seen_in_training(p, r)}
    assert held_out == {"2+2", "1+1+1", "2+1+1", "1+1+1+1"}
    mixed = {tuple(o[0] for o in s.objects) for s in specs_of_kind("mixed")}
    assert mixed == {(2, 1), (3, 1)}  # what makes 3+1 seen and 2+2 new


@pytest.mark.parametrize("parts, relation", CELLS, ids=[cell_name(*c) for c in CELLS])
def test_cell_prompts_have_the_cells_shape_and_read_back(parts, relation):
    specs = cell_prompts(parts, relation, 40, 10_000)
    assert specs == cell_prompts(parts, relation, 40, 10_000)  # deterministic
    assert len(set(specs)) > 1
    for spec in specs:
        assert tuple(o[0] for o in spec.objects) == parts and (spec.relation is not None) == relation
        assert len({o[1:] for o in spec.objects}) == len(parts)  # distinct (colour, shape) per group
        from minimuse.data import canonical_caption
        assert parse_caption(canonical_caption(spec)) == spec


class _Painter:
    """A stand-in pipeline that draws what each prompt says (or, with drop=True, leaves its last object out)."""
    def __init__(self, drop=False):
        self.drop = drop
        self.config = types.SimpleNamespace(data=types.SimpleNamespace(image_size=32, eval_seed=10_000))

    def __call__(self, prompts, seed=0, superres=False, **_):
        out = []
        for i, p in enumerate(prompts):
            spec = parse_caption(p)
            if self.drop:
                objs = list(spec.objects)
                n, c, s = objs[-1]
                objs[-1:] = [(n - 1, c, s)] if n > 1 else []
                spec = Spec(tuple(objs)) if objs else spec
            out.append(render(spec, 32, np.random.default_rng((seed, i))))
        return np.stack(out)


def test_true_drawings_score_full_marks_and_a_missing_object_scores_none():
    good = eval_counts(_Painter(), n=24)
    for row in good["cells"]:
        assert row["faithfulness"] >= 0.95 and row["right_count"] >= 0.95, row
        assert row["judge_on_true_renders"] >= 0.95
        assert row["ci95"][0] <= row["faithfulness"] <= row["ci95"][1] and row["n"] == 24
    bad = eval_counts(_Painter(drop=True), n=24)
    for row in bad["cells"]:
        if row["cell"] != "1":  # a single object has nothing left to drop
            assert row["faithfulness"] == 0 and row["right_count"] == 0, row


def test_counts_task_cli(ckpt, capsys):
    main(["eval", "--checkpoint", str(ckpt), "--task", "counts", "--n", "3", "--tokenizer-n", "0", "--steps", "2"])
    r = json.loads(capsys.readouterr().out)["counts"]
    assert [c["cell"] for c in r["cells"]] == [cell_name(*c) for c in CELLS]
    assert r["settings"]["num_steps"] == 2 and all(c["n"] == 3 for c in r["cells"])
    for c in r["cells"]:
        assert c["right_count"] >= 0 and c["faithfulness"] <= c["right_count"] + 1e-9  # a faithful image is counted right
