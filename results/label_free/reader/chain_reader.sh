#!/usr/bin/env bash
# usage: [SEED=4] chain_reader.sh  -- a reader from scratch and the label-free pair from it, one seed, end to end:
# 10,000 uniform-pooling steps (stage1.sh), 10,000 more (stage2.sh ... uni), then 10,000 steps of saliency
# distillation and of uniform pooling continued from that reader, side by side; each run is evaluated by evalrun.sh
# (600 test questions at 25% + the allocation probe). Runs land in /tmp/s20/lf/ (76 min on this 2-core machine).
set -u
cd /work/main
export TQDM_DISABLE=1
s=${SEED:-4}
here=results/label_free/reader
SEED=$s bash $here/stage1.sh uni10k_s$s 10000
/tmp/s20/evalrun.sh /tmp/s20/lf/uni10k_s$s
SEED=$s bash $here/stage2.sh uni10k_s$s uni 10000
reader=uni10k_s${s}_uni_10000_s$s
SEED=$s bash $here/stage2.sh $reader sal 10000 &
SEED=$s bash $here/stage2.sh $reader uni 10000 &
wait
echo chain done
