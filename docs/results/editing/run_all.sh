#!/bin/bash
# Issue 12's measurements, one after the other on the idle 2-core machine (docs/EDITING.md):
# (1) mask-free editing settings on the shipped model; (2) train.rect_mask_prob 0 against 0.15 with the 15-minute
# AdamW laptop recipe (now the laptop-adamw preset), each arm evaluated on inpainting, outpainting and generation.
set -u
cd "$(dirname "$0")/../../.."
R=docs/results/editing
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
for g in 0 1 2 4; do for k in 1 3; do
  [ -s $R/edit_g${g}_k${k}.json ] || { .venv/bin/minimuse eval --task edit --n 256 --guidance $g --top-k $k > $R/edit_g${g}_k${k}.json.tmp \
    && mv $R/edit_g${g}_k${k}.json.tmp $R/edit_g${g}_k${k}.json; }
  echo "edit g=$g k=$k done $(date +%T)"
done; done
for p in 0 0.15; do
  run=runs/rect-$p
  .venv/bin/minimuse train --preset laptop-adamw --out $run --tokenizer data/checkpoints/laptop/tokenizer \
    --set train.rect_mask_prob=$p --report $( [ -f $run/transformer_state.safetensors ] && echo --resume ) > $run.log 2>&1
  echo "train rect=$p exit $? $(date +%T)"
  mkdir -p $R/rect-$p && cp $run/log.jsonl $run/report.json $R/rect-$p/ 2>/dev/null
  for t in inpaint outpaint; do
    .venv/bin/minimuse eval --checkpoint $run --task $t --n 256 > $R/rect-$p/$t.json
  done
  .venv/bin/minimuse eval --checkpoint $run --n 256 --tokenizer-n 0 > $R/rect-$p/generate.json
  echo "eval rect=$p done $(date +%T)"
done
