#!/usr/bin/env bash
# The laptop step on a CPU without bf16, before and after the project's own Muon (fp32 Newton-Schulz), side by side:
#
#     bash docs/profile_avx2.sh        # from the repository root, on an idle machine; about 7 minutes
#
# Caps torch's CPU kernels at AVX2 (ATen, oneDNN, MKL), so that a CPU with AVX-512 and AMX computes as an AVX2
# laptop does: `auto` precision resolves to fp32 and bf16 matrix products are emulated (/proc/cpuinfo still lists the
# CPU's own flags, so the JSON's cpu_has_avx512_bf16 says what the chip has, not what the cap allows). Runs
# docs/profile_train.py at commit 45dfcc3 (torch.optim.Muon, bf16 Newton-Schulz) and at the checked-out commit,
# alternated twice, into docs/results/speedrun/avx2_cap/{before,after}_{1,2}.json.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=docs/results/speedrun/avx2_cap
BEFORE=$(mktemp -d)/before
git worktree add --detach "$BEFORE" 45dfcc3 >/dev/null
trap 'git worktree remove --force "$BEFORE"' EXIT
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
for i in 1 2; do
  # the before-commit's own minimuse, not the editable install of this checkout
  "$PY" - "$BEFORE" > "$OUT/before_$i.json" <<'PYEOF'
import runpy, sys
root = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower() + type(f).__module__.lower()]
sys.path.insert(0, root)
import minimuse
assert minimuse.__file__.startswith(root), minimuse.__file__
sys.argv = ["docs/profile_train.py", "--steps", "60", "--tokenizer", "data/checkpoints/laptop/tokenizer"]
runpy.run_path(f"{root}/docs/profile_train.py", run_name="__main__")
PYEOF
  "$PY" docs/profile_train.py --steps 60 > "$OUT/after_$i.json"
done
