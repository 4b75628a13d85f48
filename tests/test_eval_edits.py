"""The editing measurements (minimuse/eval_edits.py): the scenes they build, and what they report on a tiny model."""
import json

import numpy as np
import pytest

from minimuse.cli import main
from minimuse.data import Spec, make_sample
from minimuse.eval_edits import edit_spec, eval_edit, eval_inpaint, eval_outpaint, object_box_mask
from minimuse.pipeline import load_pipeline


def test_recolor_changes_one_attribute_to_one_nobody_has():
    spec = Spec(((1, "red", "circle"), (1, "blue", "square")), "left of")
    new, target = edit_spec(spec, 0, "color")
    assert new.objects[1] == spec.objects[1] and new.relation == "left of"
    assert new.objects[0][2] == "circle" and new.objects[0][1] not in ("red", "blue") and target == new.objects[0][1:]
    new, target = edit_spec(spec, 0, "shape")
    assert new.objects[0][1] == "red" and new.objects[0][2] == "triangle" == target[1]


@pytest.mark.parametrize("index", range(20))
def test_object_box_mask_covers_every_pixel_of_the_object(index):
    s = make_sample(10_000, index, 32, ("single",))
    mask = object_box_mask(32, s["boxes"][0])
    lit = s["image"].max(-1) > 0
    assert lit.any() and not (lit & ~mask).any()
    assert mask.sum() < 32 * 32  # and it is a box, not the canvas


def test_inpaint_measurement_keeps_every_outside_token(ckpt):
    pipe = load_pipeline(ckpt, device="cpu")
    r = eval_inpaint(pipe, n=6, batch_size=4)
    assert r["unmasked_tokens_kept"] == 1.0  # the sampler's guarantee, measured on its ids
    assert r["success"]["n"] == 6 and 0 <= r["success"]["rate"] <= 1 and np.isfinite(r["psnr_outside_db"])
    lo, hi = r["success"]["wilson_95"]
    assert lo <= r["success"]["rate"] <= hi


def test_edit_and_outpaint_measurements_report_every_iteration(ckpt):
    pipe = load_pipeline(ckpt, device="cpu")
    r = eval_edit(pipe, n=4, iters=(1, 2), batch_size=4)
    assert sorted(r["by_iteration"]) == ["1", "2"] and r["best_iteration"] in (1, 2)
    for it in r["by_iteration"].values():
        successes = round(it["success"]["rate"] * it["success"]["n"])
        assert it["success"]["n"] == 4 and it["kept_in_place_of_successes"]["n"] == successes
    o = eval_outpaint(pipe, n=3)
    assert o["success"]["n"] == 3 and o["extend"] == "right:8"


def test_eval_task_cli(ckpt, capsys):
    assert main(["eval", "--checkpoint", str(ckpt), "--task", "inpaint", "--n", "2"]) == 0
    r = json.loads(capsys.readouterr().out)["inpaint"]
    assert r["n"] == 2 and r["unmasked_tokens_kept"] == 1.0


@pytest.mark.parametrize("argv,fragment", [
    (["--task", "edit", "--steps", "3"], "--task edit takes --guidance and --top-k only; drop --steps"),
    (["--task", "inpaint", "--guidance", "2"], "measures the checkpoint's own settings"),
    (["--top-k", "-1"], "--top-k must be 0 (off) or more"),
    (["--task", "edit", "--top-k", "0"], "--top-k must be at least 1"),
])
def test_eval_edit_settings_flags_are_checked(ckpt, capsys, argv, fragment):
    assert main(["eval", "--checkpoint", str(ckpt), "--n", "1", *argv]) != 0
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_eval_edit_measures_the_settings_it_is_given(ckpt, capsys):
    assert main(["eval", "--checkpoint", str(ckpt), "--task", "edit", "--n", "2", "--guidance", "0.5", "--top-k", "2"]) == 0
    r = json.loads(capsys.readouterr().out)["edit"]
    assert r["settings"]["guidance_scale"] == 0.5 and r["settings"]["top_k"] == 2 and r["n"] == 2
