#!/usr/bin/env bash
# usage: chain.sh SEED [STEPS] -- a STEPS-step (default 5,000) grounded reader, then 2,000 steps of LinUCB (proj_dim 64) and of the projection
# control from it; each evaluated (600 test questions at 25%) and probed.
set -u
cd "$(dirname "$0")/../../../.."  # the repository root
S=$1; STEPS=${2:-5000}; W=${W:-/tmp/s23/bandit}; mkdir -p $W
export OMP_NUM_THREADS=1
COMMON="--config configs/train/small.yaml data.path=/tmp/smallb data.generate=false \
  model.vision.pretrained=/tmp/small_vit.safetensors model.vision_trainable=false model.arr_coc.budget=36 \
  model.arr_coc.min_tokens=1 model.arr_coc.max_tokens=9 train.grounding_weight=1 train.seed=$S"
R=$W/seed${S}_reader$STEPS
[ -f $R.eval/summary.json ] || {
  .venv/bin/python -m training.train $COMMON output_dir=$R model.arr_coc.allocator=projection train.max_steps=$STEPS \
    > $R.train.out 2>&1; echo "train rc=$?" >> $R.train.out
  bash results/label_free/reader/evalrun.sh $R; }
B=$W/seed${S}_bandit$STEPS
.venv/bin/python -m training.train $COMMON output_dir=$B model.arr_coc.allocator=bandit \
  'model.arr_coc.allocator_kwargs={"levels": [1, 2, 4, 8, 9], "context_dim": 131, "utility_weight": 0.0, "proj_dim": 64}' \
  train.max_steps=2000 optim.lr=1e-3 train.init_from=$R 'train.init_from_skip=["arr_coc.attending."]' \
  > $B.train.out 2>&1; echo "train rc=$?" >> $B.train.out
bash results/label_free/reader/evalrun.sh $B
P=$W/seed${S}_projection$STEPS
.venv/bin/python -m training.train $COMMON output_dir=$P model.arr_coc.allocator=projection \
  train.max_steps=2000 optim.lr=1e-3 train.init_from=$R > $P.train.out 2>&1; echo "train rc=$?" >> $P.train.out
bash results/label_free/reader/evalrun.sh $P
echo "chain $S done $(date)" >> $W/done.txt
