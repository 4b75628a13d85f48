#!/bin/sh
# Every figure measured at the shipped laptop checkpoint's sampling defaults, measured again after they moved from
# confidence decoding to the remask sampler (remask_prob 0.35, 24 steps, guidance 1.0): one after the other on an
# otherwise idle 2-core machine, from the repository root. Each command's output is the file it is redirected to.
set -e
D=docs/results/remask_default
M=".venv/bin/minimuse"
t() { s=$(date +%s); "$@"; echo "$(( $(date +%s) - s )) s: $*" >> $D/times.txt; }
t sh -c "$M eval --checkpoint data/checkpoints/laptop --n 256 > $D/eval_n256.json"
t sh -c "$M eval --checkpoint data/checkpoints/laptop --n 256 --tokenizer-n 0 --steps 12 --guidance 1.0 > $D/eval_n256_steps12.json"
t sh -c "$M eval --checkpoint data/checkpoints/laptop --n 256 --tokenizer-n 0 --precision bf16 > $D/eval_n256_bf16.json"
t sh -c "$M eval --task inpaint --n 256 > $D/eval_inpaint.json"
t sh -c "$M eval --task outpaint --n 256 > $D/eval_outpaint.json"
t sh -c "$M eval --fid --n 64 --tokenizer-n 0 > $D/eval_fid.json"
t sh -c "$M eval --task counts --n 256 --tokenizer-n 0 > $D/eval_counts.json"
t sh -c "$M eval --checkpoint data/checkpoints/laptop --task superres --n 64 > $D/eval_superres.json"
t .venv/bin/python docs/superres_count_gap.py 256 $D/count_gap.json
# Then the checks of the trade (docs/SAMPLING.md, last section): FID on two more prompt sets with both rules, the
# sweep of the new default against confidence decoding, and the sampling time, alternated in one process.
for s in 1 2; do
  t sh -c "$M eval --fid --n 64 --tokenizer-n 0 --seed $s > $D/eval_fid_seed$s.json"
  t sh -c "$M eval --fid --n 64 --tokenizer-n 0 --seed $s --sampler confidence > $D/eval_fid_seed${s}_confidence.json"
done
t $M sweep --param sampler --values confidence,remask --param steps --values 8,12,24 --n 64 --out docs/results/sweeps/remask_default
t sh -c ".venv/bin/python docs/remask_time.py data/checkpoints/laptop 16 7 > $D/time_batch16.json"
