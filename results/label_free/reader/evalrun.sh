#!/usr/bin/env bash
# usage: evalrun.sh RUN  -- 600 test questions at the run's own budget + the allocation probe
set -u
cd /work/main
run=$1
OMP_NUM_THREADS=1 .venv/bin/python -m eval.run_eval --config configs/eval/small.yaml checkpoint=$run data.path=/tmp/smallb \
  data.generate=false data.max_samples=600 output_dir=$run.eval > $run.eval.out 2>&1
echo "eval rc=$?" >> $run.eval.out
OMP_NUM_THREADS=1 .venv/bin/python -m scripts.probe_allocation --run $run --eval-config configs/eval/small.yaml \
  --data /tmp/smallb > $run.probe.json 2> $run.probe.err
echo "probe rc=$?" >> $run.probe.err
