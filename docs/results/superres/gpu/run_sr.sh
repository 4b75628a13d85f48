set -o pipefail
python3 .gpu/restore.py || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name --format=csv,noheader
STEPS=${STEPS:-3000}
for cand in "$@"; do
  IFS=, read w d e <<< "$cand"
  dir=/tmp/sr_${w}_${d}_${e}
  mkdir -p $dir; [ -f /tmp/pool.safetensors ] && cp /tmp/pool.safetensors $dir/
  t0=$(date +%s)
  python3 -m minimuse train-superres --preset laptop --out $dir \
    --set superres.transformer.width=$w --set superres.transformer.depth=$d --set superres.lowres_depth=$e \
    --set superres.train.steps=$STEPS --set superres.train.eval_every=$STEPS --set superres.train.eval_prompts=256 > $dir/out.txt 2>&1
  [ -f /tmp/pool.safetensors ] || cp $dir/pool.safetensors /tmp/pool.safetensors
  echo "cand w=$w d=$d e=$e seconds=$(( $(date +%s) - t0 )) $(tail -1 $dir/log.jsonl | cut -c1-220)"
  tail -2 $dir/out.txt | cut -c1-300
  cp $dir/log.jsonl $OUT/log_${w}_${d}_${e}.jsonl
done
