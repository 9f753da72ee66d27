#!/usr/bin/env bash
# label-free bandit: seed 0's one-budget reader, knowing/balancing/attending fresh, LinUCB proj_dim 64, saliency loss
set -u
cd /work/main
run=/tmp/s20/lf/bandit_sal
OMP_NUM_THREADS=1 .venv/bin/python -m training.train --config configs/train/small.yaml output_dir=$run train.seed=0 \
  data.path=/tmp/smallb data.generate=false model.vision.pretrained=/tmp/small_vit.safetensors \
  model.vision_trainable=false model.arr_coc.budget=36 model.arr_coc.min_tokens=1 model.arr_coc.max_tokens=9 \
  model.arr_coc.allocator=bandit \
  'model.arr_coc.allocator_kwargs={"levels": [1, 2, 4, 8, 9], "context_dim": 131, "utility_weight": 0.0, "proj_dim": 64}' \
  train.saliency_weight=1 train.max_steps=2000 optim.lr=1e-3 optim.grad_clip=null \
  train.init_from=weights/arr_coc_small_25pct \
  'train.init_from_skip=["arr_coc.attending.","arr_coc.knowing.","arr_coc.balancing."]' > $run.train.out 2>&1
echo "train rc=$?" >> $run.train.out
/tmp/s20/evalrun.sh $run
