#!/bin/sh
# The sweeps behind docs/SWEEPS.md and notebooks/09_experiments.ipynb, on the shipped laptop checkpoint, one after
# the other on an otherwise idle machine. Each writes DIR/sweep.jsonl and DIR/sweep.png; add --resume after a kill.
# They ran when the checkpoint decoded by confidence, with remask_prob 0.05: against today's checkpoint (remask at
# 0.35) add `--param sampler --values confidence` to each but the samplers and remask_prob sweeps, and `--param
# remask-prob --values 0.05` to the samplers sweep. The last line sweeps the new default against confidence decoding.
set -e
minimuse sweep --param steps --values 2,4,6,8,12,16,24,32 --param schedule --values cosine,linear --n 64 \
    --out docs/results/sweeps/steps_schedule
minimuse sweep --param guidance --values 0,0.5,1,2,3,4 --param guidance-schedule --values constant,linear --n 64 \
    --out docs/results/sweeps/guidance
minimuse sweep --param choice-temperature --values 0,1,2,4.5 --n 64 --out docs/results/sweeps/choice_temperature
minimuse sweep --param sampler --values confidence,halton,random,remask,critic --param steps --values 8,12,24 \
    --n 64 --out docs/results/sweeps/samplers --overwrite
# claim (c) with diversity over 16 prompts (8 seeds each) instead of 4, and its standard error over the prompts
minimuse sweep --param guidance --values 0,0.5,1,2,3,4 --n 64 --diversity-prompts 16 \
    --out docs/results/sweeps/guidance_div16 --overwrite
minimuse sweep --param choice-temperature --values 0,1,2,4.5 --n 64 --diversity-prompts 16 \
    --out docs/results/sweeps/choice_temperature_div16 --overwrite
minimuse sweep --param remask-prob --values 0.05,0.2 --param sampler --values remask --param steps --values 12 --n 64 \
    --out docs/results/sweeps/remask_prob
minimuse sweep --param sampler --values confidence,remask --param steps --values 8,12,24 --n 64 \
    --out docs/results/sweeps/remask_default
