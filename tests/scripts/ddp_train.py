"""Run by test_train.py under `accelerate launch --num_processes 2 --cpu`: 3 training steps, then each process
writes a checksum of its weights so the test can check that DDP kept the two replicas identical."""
import hashlib
import json
import sys

from accelerate import PartialState

from minimuse.presets import get_config
from minimuse.train import train_transformer

out, tok = sys.argv[1], sys.argv[2]
cfg = get_config("ci", **{"train.steps": 3, "train.batch_size": 8, "data.pool_size": 64, "train.ckpt_every": 3,
                          "train.log_every": 1})
seen = {}


def grab(step, record, model):  # runs on every process after every step
    seen["record"], seen["model"] = record, model


train_transformer(cfg, out, tokenizer_dir=tok, on_step=grab)
state = PartialState()
digest = hashlib.sha256(b"".join(p.detach().double().numpy().tobytes() for p in seen["model"].parameters())).hexdigest()
with open(f"{out}/rank{state.process_index}.json", "w") as f:
    json.dump({"rank": state.process_index, "world": state.num_processes, "digest": digest,
               "loss": seen["record"]["loss"]}, f)
