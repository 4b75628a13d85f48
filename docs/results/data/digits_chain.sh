set -e
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1
M=.venv/bin/minimuse
date
/usr/bin/time -v $M train-tokenizer --preset laptop --data runs/digits-data --out runs/digits/tokenizer 2> runs/digits-tok.time
date
/usr/bin/time -v $M pretokenize --preset laptop --data runs/digits-data --tokenizer runs/digits/tokenizer --out runs/digits-shards 2> runs/digits-pretok.time
date
$M train --preset laptop-adamw --data runs/digits-shards --tokenizer runs/digits/tokenizer --out runs/digits --set train.kind_weights= --report
date
$M eval --checkpoint runs/digits --task digits --n 100 > runs/digits-eval.json
date
