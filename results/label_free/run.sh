#!/usr/bin/env bash
# usage: run.sh NAME STEPS [overrides...]
set -u
cd /work/main
name=$1; steps=$2; shift 2
run=/tmp/s19/rel/$name
OMP_NUM_THREADS=1 .venv/bin/python -m training.train --config configs/train/small.yaml output_dir=$run train.seed=1 \
  data.path=/tmp/smallb data.generate=false model.vision.pretrained=/tmp/small_vit.safetensors \
  model.vision_trainable=false model.arr_coc.allocator=projection model.arr_coc.budget=36 model.arr_coc.min_tokens=1 \
  model.arr_coc.max_tokens=9 train.max_steps=$steps optim.lr=1e-3 optim.grad_clip=null train.init_from=weights/arr_coc_small \
  'train.init_from_skip=["arr_coc.knowing.","arr_coc.balancing."]' "$@" > $run.train.out 2>&1
echo "train rc=$?" >> $run.train.out
OMP_NUM_THREADS=1 .venv/bin/python -m eval.run_eval --config configs/eval/small.yaml checkpoint=$run data.path=/tmp/smallb \
  data.generate=false data.max_samples=600 output_dir=$run.eval > $run.eval.out 2>&1
echo "eval rc=$?" >> $run.eval.out
