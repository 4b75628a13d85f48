#!/usr/bin/env bash
# The GPU check: one prepared script that measures, on a lent CUDA GPU, what the CPU cannot (docs/GPU.md):
#   1. the CUDA tests (pytest -m cuda);
#   2. parallel decoding against the cached autoregressive model at 64, 256 and 1024 tokens, batch 1 and 16 (Muse's
#      speed claim, `minimuse bench --compare-ar --device cuda`);
#   3. training-step throughput and MFU of the gpu and gpu-small presets in bf16, with and without torch.compile,
#      against the bf16 matmul peak measured in the same process (docs/gpu_bench.py);
#   4. one FSDP launch (configs/accelerate/fsdp.yaml, 1 process), killed with SIGKILL and resumed, against two
#      uninterrupted runs;
#   5. lessons 06-09 under `laptop` with nbval-lax, each with its wall time;
#   6. if time is left, the gpu preset trained for its full budget and evaluated at n = 64 per kind.
# Each step has a time limit and the steps left when GPU_CHECK_BUDGET seconds are spent are skipped, so the call ends
# inside its limit with every finished step's raw output under OUTDIR (steps.txt lists them with status and seconds);
# GPU_CHECK_STEPS="env notebooks" runs only the steps named (a rerun of those a first call had no time for).
#
#   benchmarks/gpu_check.sh --prepare          on the CPU, once: the MiniLM package without its weights (.gpu/site),
#                                              the text cache of every prompt the check uses (.gpu/text_cache) and
#                                              the notebook packages the GPU machine lacks, as wheels (.whl)
#   benchmarks/gpu_check.sh --dry-run OUTDIR   on the CPU at ci sizes, with the encoder's weights hidden as on the GPU
#   benchmarks/gpu_check.sh OUTDIR             on the GPU
#
# The GPU machine receives at most 64 MiB and MiniLM's wheel alone is 83 MB, so the encoder's weights never travel:
# every caption and prompt is encoded here by the real MiniLM into the text cache (MINIMUSE_TEXT_CACHE), and the
# GPU reads those exact tensors. A prompt missing from the cache fails loudly there (no weights to read).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in --dry-run) MODE=dry; shift ;; --prepare) MODE=prepare; shift ;; esac
OUT=$(mkdir -p "${1:-build/gpu_check}" && cd "${1:-build/gpu_check}" && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-500}
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export MINIMUSE_TEXT_CACHE=${MINIMUSE_TEXT_CACHE:-$PWD/.gpu/text_cache}
if [ "$MODE" = prepare ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else  # the stub shadows the installed package: its weights are hidden here as they are absent there
  export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$MODE" = dry ]; then  # neither travels (9 MB of the 64 MiB): IPython and ipykernel run without them
  for m in jedi debugpy; do mkdir -p ".gpu/hide/$m" && echo "raise ImportError('$m is not on the GPU machine')" > ".gpu/hide/$m/__init__.py"; done
  export PYTHONPATH="$PWD/.gpu/hide:$PYTHONPATH"
fi
: > "$OUT/steps.txt"
if [ "$MODE" = gpu ] && [ -d .whl ]; then  # the packages the GPU image lacks, carried as wheels (--prepare)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl \
    > "$OUT/wheels.log" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
fi

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }  # a log's records so far (one line per step)

step() {  # step NAME LIMIT_S CMD...: CMD with a time limit, output in OUT/NAME.log, status and seconds in steps.txt
  local name=$1 limit=$2 left=$((BUDGET - SECONDS)) t0 rc pid dog
  shift 2
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then return 0; fi  # a rerun of some
  if [ "$left" -lt 15 ]; then echo "$name skipped: the budget of ${BUDGET}s is spent" | tee -a "$OUT/steps.txt"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(now_ms)
  set -m  # the step runs in a process group of its own, so the watchdog stops all of it
  "$@" > "$OUT/$name.log" 2>&1 &
  pid=$!
  set +m
  ( sleep "$limit"; kill -TERM -- "-$pid" 2>/dev/null; sleep 5; kill -KILL -- "-$pid" 2>/dev/null ) &
  dog=$!
  wait "$pid"
  rc=$?
  { pkill -P "$dog"; kill "$dog"; wait "$dog"; } 2>/dev/null
  printf '%s rc=%s wall_s=%d.%03d limit_s=%s\n' "$name" "$rc" $(( ($(now_ms) - t0) / 1000 )) $(( ($(now_ms) - t0) % 1000 )) \
    "$limit" | tee -a "$OUT/steps.txt"
  return 0
}

if [ "$MODE" = gpu ]; then
  PRESET_NB=laptop; DEVICE=cuda
  # the command of docs/AUTOREGRESSIVE.md (trained models at 64 tokens, random ones of the same size beyond), and the
  # masked model at 6 steps, where it matches the autoregressive model's faithfulness
  CKPTS=(--checkpoint data/checkpoints/laptop --ar-checkpoint data/checkpoints/laptop-ar)
  AR=(--preset laptop "${CKPTS[@]}" --tokens 64 256 1024 --batch-sizes 1 16 --repeats 5)
  AR6=(--preset laptop "${CKPTS[@]}" --set sample.num_steps=6 --tokens 64 --batch-sizes 1 16 --repeats 5)
  AR_GPU=(--preset gpu --tokens 256 1024 --batch-sizes 1 --repeats 3)
  BENCH=(--presets gpu gpu-small --precisions bf16 bf16+compile --rounds 3 --steps 10)
  LAUNCH=("$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml --num_processes 1)
else
  PRESET_NB=ci; DEVICE=cpu
  AR=(--preset ci --tokens 16 64 --batch-sizes 1 2 --repeats 1)
  AR6=(--preset ci --set sample.num_steps=2 --tokens 16 --batch-sizes 1 --repeats 1)
  AR_GPU=(--preset ci --tokens 16 --batch-sizes 1 --repeats 1)
  BENCH=(--presets ci --precisions bf16 bf16+compile --rounds 1 --steps 2 --device cpu)
  LAUNCH=("$PY")  # Accelerate runs FSDP on GPUs only: here the same commands check the kill-and-resume harness
fi

fsdp_check() {  # three runs of one small training: straight, straight again, and killed at step >= 12 then resumed
  local d=$OUT/fsdp
  local train=(-m minimuse train --preset ci --tokenizer "$d/tok" --set train.steps=20 --set train.ckpt_every=5
               --set train.log_every=1 --set train.mixed_precision=bf16 --set data.pool_size=128)
  rm -rf "$d" && mkdir -p "$d"
  "$PY" benchmarks/gpu_check.py tokenizer "$d/tok" || return 1
  if [ "$MODE" = gpu ]; then "${LAUNCH[@]}" benchmarks/gpu_check.py fsdp-probe > "$d/probe.json" || return 1; fi
  "${LAUNCH[@]}" "${train[@]}" --out "$d/straight" > "$d/straight.log" 2>&1 || return 1
  "${LAUNCH[@]}" "${train[@]}" --out "$d/again" > "$d/again.log" 2>&1 || return 1
  setsid "${LAUNCH[@]}" "${train[@]}" --out "$d/killed" > "$d/killed.log" 2>&1 &
  local pid=$! n=0
  until [ "$(lines "$d/killed/log.jsonl")" -ge 12 ] || ! kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  kill -9 -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  n=$(lines "$d/killed/log.jsonl")
  echo "killed at log step $n (the last checkpoint is step $((n / 5 * 5)))" | tee "$d/kill.txt"
  "${LAUNCH[@]}" "${train[@]}" --out "$d/killed" --resume > "$d/resumed.log" 2>&1 || return 1
  "$PY" benchmarks/gpu_check.py same-weights "$d/straight" "$d/again" "$d/killed" | tee "$d/same_weights.json"
}

notebooks() {  # lessons 06-09 one at a time under nbval-lax, each timed
  local nb t0
  for nb in notebooks/06_*.ipynb notebooks/07_*.ipynb notebooks/08_*.ipynb notebooks/09_*.ipynb; do
    t0=$(now_ms)
    MINIMUSE_PRESET=$PRESET_NB "$PY" -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
      --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300 "$nb" 2>&1 | tail -n 15
    echo "NOTEBOOK $nb preset=$PRESET_NB rc=${PIPESTATUS[0]} wall_ms=$(( $(now_ms) - t0 ))"
  done
}

if [ "$MODE" = prepare ]; then
  BUDGET=100000
  rm -rf .gpu/site && mkdir -p .gpu/site "$MINIMUSE_TEXT_CACHE"
  "$PY" benchmarks/gpu_check.py stub-encoder .gpu/site
  # every prompt the check encodes, through the real MiniLM: the CUDA tests, the FSDP runs' captions, the lessons
  step cache_tests 600 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests
  step cache_fsdp 600 fsdp_check
  PRESET_NB=laptop step cache_notebooks_laptop 900 notebooks
  PRESET_NB=ci step cache_notebooks_ci 600 notebooks
  rm -rf .whl && "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 -d .whl -r benchmarks/requirements-gpu-check.txt
  du -sh .gpu/site "$MINIMUSE_TEXT_CACHE" .whl | tee -a "$OUT/steps.txt"
  exit 0
fi

step env 60 "$PY" benchmarks/gpu_check.py env "$OUT/env.json"
[ "$MODE" = gpu ] && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step tests 150 "$PY" -m pytest -m cuda -q -p no:cacheprovider -rs tests
step compare_ar 120 bash -c "$PY -m minimuse bench --compare-ar --device $DEVICE ${AR[*]} > '$OUT/compare_ar.json'"
step compare_ar_6_steps 60 bash -c "$PY -m minimuse bench --compare-ar --device $DEVICE ${AR6[*]} > '$OUT/compare_ar_6_steps.json'"
step compare_ar_gpu_preset 90 bash -c "$PY -m minimuse bench --compare-ar --device $DEVICE ${AR_GPU[*]} > '$OUT/compare_ar_gpu_preset.json'"
step train_step 270 "$PY" docs/gpu_bench.py "$OUT/train_step.json" "${BENCH[@]}" --no-sampling
step fsdp 150 fsdp_check
step notebooks 240 notebooks
if [ "$MODE" = gpu ] && [ $((BUDGET - SECONDS)) -gt 420 ]; then
  step gpu_train 400 "$PY" -m minimuse train --preset gpu --out "$OUT/gpu_run" \
    --tokenizer data/checkpoints/laptop/superres_tokenizer --report
fi
echo "done in ${SECONDS}s" | tee -a "$OUT/steps.txt"
