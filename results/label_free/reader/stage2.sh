#!/usr/bin/env bash
# usage: stage2.sh READER ARM [STEPS=2000]  -- STEPS at 25% from a uniform-pooling reader (/tmp/s20/lf/READER), seed 2
# ARM: sal (saliency distillation, gate off) | uni (uniform pooling, the control) | box (box loss, gate on: labels)
#      | salst (saliency distillation, gate on) | none (projection, gate on, no auxiliary loss)
set -u
cd /work/main
reader=$1; arm=$2; steps=${3:-2000}
run=/tmp/s20/lf/${reader}_$arm$( [ "$steps" = 2000 ] || echo "_$steps" )${SEED:+_s$SEED}
case $arm in
  sal) extra=(model.arr_coc.allocator=projection train.saliency_weight=1 model.arr_coc.straight_through=false) ;;
  salst) extra=(model.arr_coc.allocator=projection train.saliency_weight=1) ;;
  uni) extra=(model.arr_coc.allocator=uniform) ;;
  box) extra=(model.arr_coc.allocator=projection train.grounding_weight=1) ;;
  none) extra=(model.arr_coc.allocator=projection) ;;
  *) echo "unknown arm $arm"; exit 2 ;;
esac
OMP_NUM_THREADS=1 .venv/bin/python -m training.train --config configs/train/small.yaml output_dir=$run train.seed=${SEED:-2} \
  data.path=/tmp/smallb data.generate=false model.vision.pretrained=/tmp/small_vit.safetensors \
  model.vision_trainable=false model.arr_coc.budget=36 model.arr_coc.min_tokens=1 model.arr_coc.max_tokens=9 \
  train.max_steps=$steps optim.lr=1e-3 optim.grad_clip=null train.init_from=/tmp/s20/lf/$reader "${extra[@]}" \
  > $run.train.out 2>&1
echo "train rc=$?" >> $run.train.out
/tmp/s20/evalrun.sh $run
