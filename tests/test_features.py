"""The FID instrument (features.py, metrics.fid, eval.diversity): the feature network loads strictly, FID is ~0 for
identical sets and symmetric, diversity is 0 for identical samples, and the shipped network reads held-out scenes."""
from pathlib import Path

import numpy as np
import pytest
import torch

from minimuse.checkpoint import CheckpointError
from minimuse.cli import main
from minimuse.data import Spec, make_sample, to_tensor
from minimuse.eval import diversity
from minimuse.metrics import fid
from minimuse.features import ShapesFeatures, loss_and_accuracy, targets

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "features"


def renders(seed, n=96):
    samples = [make_sample(seed, i, 32) for i in range(n)]
    return torch.stack([to_tensor(s["image"]) for s in samples]), [s["spec"] for s in samples]


def test_targets_read_the_spec():
    count, colors, shapes = targets([Spec(((3, "red", "square"), (1, "blue", "circle")))])
    assert count.tolist() == [3]  # 4 objects -> class 3
    assert colors.tolist() == [[1, 0, 1, 0, 0, 0]] and shapes.tolist() == [[1, 1, 0]]


def test_fid_is_zero_for_identical_sets_and_symmetric():
    net = ShapesFeatures.from_pretrained(SHIPPED)
    a, _ = renders(0)
    b, _ = renders(1)
    ab, ba = fid(a, b, net), fid(b, a, net)
    assert ab > 1 and abs(fid(a, a, net)) < 1e-3 * ab
    assert abs(ab - ba) < 1e-3 * ab
    assert fid(a, (a + 0.3 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1), net) > ab


def test_feature_network_loads_strictly(tmp_path):
    torch.manual_seed(0)
    net = ShapesFeatures()
    net.save_pretrained(tmp_path / "f", extra={"held_out": {"accuracy": 0.5}})
    again = ShapesFeatures.from_pretrained(tmp_path / "f")
    x, _ = renders(0, 4)
    assert torch.equal(net.eval()(x), again(x)) and again.held_out == {"accuracy": 0.5}
    from safetensors.torch import load_file, save_file
    w = load_file(tmp_path / "f" / "model.safetensors")
    w.pop("proj.bias")
    save_file(w, tmp_path / "f" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing \['proj.bias'\]"):
        ShapesFeatures.from_pretrained(tmp_path / "f")


def test_diversity_is_zero_for_identical_samples():
    torch.manual_seed(0)
    net = ShapesFeatures().eval()
    same = np.stack([make_sample(0, 0, 32)["image"]] * 4)
    other = np.stack([make_sample(0, i, 32)["image"] for i in range(4)])
    d0, d1 = diversity(same, net), diversity(other, net)
    assert d0["feature_distance"] == 0 and d0["centroid_spread_px"] == 0 and d0["n"] == 4
    assert d1["feature_distance"] > 0 and d1["centroid_spread_px"] > 1


def test_shipped_feature_network_reads_held_out_scenes():
    net = ShapesFeatures.from_pretrained(SHIPPED)
    assert net.held_out["accuracy"] >= 0.97 and net.held_out["n"] == 1000
    x, specs = renders(12_345, 128)  # a stream no training read
    with torch.no_grad():
        _, acc = loss_and_accuracy(net, x, specs)
    assert acc["accuracy"] >= 0.95


def test_eval_fid_flag_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--fid", "--task", "inpaint"]) == 2
    assert "--fid measures generation" in capsys.readouterr().err
    assert main(["eval", "--fid", "--fid-features", str(tmp_path / "none")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
