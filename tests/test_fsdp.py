"""FSDP2 resume on the CPU: the training state that runs.full_state gathers from a sharded model reloads onto a fresh
sharding (runs.load_full_state) and the run continues exactly as if it had never stopped. Accelerate runs FSDP only on
GPUs, so this drives torch's fully_shard directly, with gloo and one process; benchmarks/gpu_check.sh runs the real
`accelerate launch` path on a GPU, killed and resumed."""
import socket

import pytest
import torch
import torch.distributed as dist

from minimuse.checkpoint import load_tree, save_tree
from minimuse.presets import get_config
from minimuse.runs import full_state, load_full_state
from minimuse.scheduler import masked_ce
from minimuse.transformer import Block, MaskedTransformer

CFG = get_config("ci")


@pytest.fixture(scope="module")
def group():
    fully_shard = pytest.importorskip("torch.distributed.fsdp").fully_shard
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield fully_shard
    dist.destroy_process_group()


def sharded(fully_shard):
    torch.manual_seed(0)
    model = MaskedTransformer.from_config(CFG)
    for m in model.modules():
        if isinstance(m, Block):
            fully_shard(m)  # one unit per Block, as configs/accelerate/fsdp.yaml wraps them
    fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def steps(model, opt, first: int, last: int):
    h, w = CFG.grid
    for step in range(first, last):
        g = torch.Generator().manual_seed(step)  # the batch is a function of the step, as train_step_inputs' is
        ids = torch.randint(0, CFG.tokenizer.codebook_size, (4, h, w), generator=g)
        mask = torch.rand(4, h, w, generator=g) < 0.5
        text = torch.randn(4, 5, CFG.text.text_dim, generator=g)
        logits = model(torch.where(mask, model.mask_id, ids), text, torch.ones(4, 5, dtype=torch.bool))
        masked_ce(logits, torch.where(mask, ids, -100).flatten(1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_fsdp_state_resumes_bit_identically(group, tmp_path):
    straight = sharded(group)
    steps(*straight, 0, 6)
    half = sharded(group)
    steps(*half, 0, 3)
    weights, moments = full_state(*half)
    assert all(type(t) is torch.Tensor for t in weights.values())  # gathered, not DTensor shards
    save_tree(tmp_path / "state.safetensors", {"model": weights, "optimizer": moments})
    resumed = sharded(group)  # a fresh process's model: other weights until the state loads
    state = load_tree(tmp_path / "state.safetensors")
    load_full_state(*resumed, state["model"], state["optimizer"])
    steps(*resumed, 3, 6)
    a, b = full_state(*straight), full_state(*resumed)
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert all(torch.equal(a[1]["state"][k]["exp_avg_sq"], b[1]["state"][k]["exp_avg_sq"]) for k in a[1]["state"])
    c = sharded(group)  # and the check can fail: three steps fewer is another model
    steps(*c, 0, 3)
    assert not all(torch.equal(a[0][k], full_state(*c)[0][k]) for k in a[0])
