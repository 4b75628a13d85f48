set -o pipefail
python3 .gpu/restore.py || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
dir=/tmp/sr_full; t0=$(date +%s)
python3 -m minimuse train-superres --preset laptop --out $dir $EXTRA --set superres.train.eval_every=2500 --set superres.train.eval_prompts=128 > $dir.txt 2>&1
echo "seconds=$(( $(date +%s) - t0 ))"; tail -3 $dir.txt | cut -c1-300
grep sr_psnr $dir/log.jsonl | cut -c1-250
cp $dir/log.jsonl $OUT/log_full.jsonl
timeout 200 python3 .gpu/sr_sweep.py $dir 256 2>&1 | grep -v Warn | tee $OUT/sweep.txt
