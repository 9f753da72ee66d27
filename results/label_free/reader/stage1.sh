#!/usr/bin/env bash
# usage: [SEED=2] stage1.sh NAME STEPS  -- uniform pooling at 25% from scratch (frozen tower), seed $SEED (default 2),
# no labels beyond answers
set -u
cd /work/main
name=$1; steps=$2
run=/tmp/s20/lf/$name
OMP_NUM_THREADS=1 .venv/bin/python -m training.train --config configs/train/small.yaml output_dir=$run train.seed=${SEED:-2} \
  data.path=/tmp/smallb data.generate=false model.vision.pretrained=/tmp/small_vit.safetensors \
  model.vision_trainable=false model.arr_coc.allocator=uniform model.arr_coc.budget=36 model.arr_coc.min_tokens=1 \
  model.arr_coc.max_tokens=9 train.max_steps=$steps > $run.train.out 2>&1
echo "train rc=$?" >> $run.train.out
