#!/usr/bin/env bash
# from scratch (frozen tower), saliency distillation with the gate off, seed 0, 5,000 steps (cf. results/label_free/scratch_sal: gate on)
set -u
cd /work/main
run=/tmp/s20/lf/scratch_sal_nost
OMP_NUM_THREADS=1 TQDM_DISABLE=1 .venv/bin/python -m training.train --config configs/train/small.yaml output_dir=$run train.seed=0 \
  data.path=/tmp/smallb data.generate=false model.vision.pretrained=/tmp/small_vit.safetensors \
  model.vision_trainable=false model.arr_coc.allocator=projection model.arr_coc.budget=36 model.arr_coc.min_tokens=1 \
  model.arr_coc.max_tokens=9 train.max_steps=5000 train.saliency_weight=1 model.arr_coc.straight_through=false \
  > $run.train.out 2>&1
echo "train rc=$?" >> $run.train.out
/tmp/s20/evalrun.sh $run
