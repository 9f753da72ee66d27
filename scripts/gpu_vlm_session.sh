#!/usr/bin/env bash
# One GPU session for issue 6's benchmark training run: generate the benchmark, train the `bench` preset for a fixed
# wall-clock budget, and bring back the loss curve, tokens/s and peak memory. Everything runs in one device call
# (a fresh machine is bare and goes back 30 s after a call), so data and checkpoints live only inside it.
#
#   here, once:   bash scripts/fetch_gpu_wheels.sh        # open_clip_torch + datasets (+ deps) into .whl/
#   device tool:  run(command="bash scripts/gpu_vlm_session.sh", carry=[".whl"], timeout_s=600)
#   CPU dry run:  SMOKE=1 OUT=/tmp/vlm_out bash scripts/gpu_vlm_session.sh   # tiny preset, checks the plumbing
#
# Writes to $OUT: env.txt, make_benchmark.log, train.log (tail), log.csv (per-step loss/accuracy/tokens_per_s/
# peak_mem_gb), loss_curve.png, summary.txt (one line per step with exit status and seconds, then the figures).
# TRAIN_MINUTES (default 6) bounds training; TRAIN_SIZE (default 50000) the generated train split.
set -u
OUT=${OUT:-$PWD/vlm_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
TRAIN_MINUTES=${TRAIN_MINUTES:-6}
TRAIN_SIZE=${TRAIN_SIZE:-50000}
WORKERS=${WORKERS:-$(nproc)}
# shellcheck source=scripts/gpu_common.sh
source scripts/gpu_common.sh

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU";
  "$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available());
print('transformers', transformers.__version__, 'accelerate', accelerate.__version__)
import open_clip, datasets; print('open_clip', open_clip.__version__, 'datasets', datasets.__version__)"; } \
  >"$OUT/env.txt" 2>&1

if [ "$SMOKE" = 1 ]; then
  DATA=/tmp/arr_coc_bench_smoke; RUN=/tmp/arr_coc_run_smoke
  rm -rf "$DATA" "$RUN"  # the tiny config generates its own 64 px mini-benchmark at data.path
  step train 600 "$PY" -m training.train --config configs/train/tiny.yaml output_dir="$RUN" data.path="$DATA" \
    train.max_steps=4 train.max_minutes="$TRAIN_MINUTES" >"$OUT/train.log" 2>&1
else
  DATA=/tmp/arr_coc_bench; RUN=/tmp/arr_coc_run_bench
  step make_benchmark 240 "$PY" -m scripts.make_benchmark --out "$DATA" --train-size "$TRAIN_SIZE" \
    --workers "$WORKERS" --overwrite >"$OUT/make_benchmark.log" 2>&1
  # awk, not $(( )): TRAIN_MINUTES may be fractional (2.5), which bash arithmetic refuses (and the step was skipped).
  step train "$(awk -v m="$TRAIN_MINUTES" 'BEGIN { printf "%d", m * 60 + 150 }')" accelerate launch --config_file configs/accelerate/fsdp_gpu.yaml \
    -m training.train --config configs/train/bench.yaml output_dir="$RUN" data.path="$DATA" \
    train.max_minutes="$TRAIN_MINUTES" >"$OUT/train.log" 2>&1
fi
tail -c 200000 "$OUT/train.log" >"$OUT/train.tail" && mv "$OUT/train.tail" "$OUT/train.log"
cp "$RUN/log.csv" "$OUT/log.csv" 2>/dev/null
step plot 120 "$PY" - "$OUT" <<'PYEOF'
import csv, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = list(csv.DictReader(open(out / "log.csv")))
steps = [int(r["step"]) for r in rows]
loss = [float(r["loss"]) for r in rows]
tok = [float(r["tokens_per_s"]) for r in rows[len(rows) // 10:]]  # skip warm-up steps
mem = max(float(r["peak_mem_gb"]) for r in rows)
with open(out / "summary.txt", "a") as f:
    f.write(f"steps {steps[-1]}; loss first {loss[0]:.4f} last {loss[-1]:.4f}; median tokens/s {statistics.median(tok):.0f}; "
            f"peak memory {mem:.2f} GiB; final accuracy {float(rows[-1]['accuracy']):.3f}\n")
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(steps, loss)
ax.set_xlabel("step"); ax.set_ylabel("train loss"); ax.set_title("bench preset on the generated benchmark")
fig.tight_layout(); fig.savefig(out / "loss_curve.png", dpi=100)
PYEOF
cat "$OUT/summary.txt"
