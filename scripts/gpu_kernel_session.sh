#!/usr/bin/env bash
# One GPU session for the CUDA projection kernel (issue 4): build, GPU tests, benchmark and a profile, in one call.
#
#   device tool:  run(command="bash scripts/gpu_kernel_session.sh", timeout_s=600)
#   elsewhere:    OUT=/tmp/gpu_out bash scripts/gpu_kernel_session.sh
#   little device time left:  run(command="QUICK=1 bash scripts/gpu_kernel_session.sh", timeout_s=240)
#
# QUICK=1 (about 110 s on an H100 after the machine's start, measured 2026-11-25 as results/gpu_kernel_raw4): sm_90
# only, the kernel's GPU tests (test_cuda_kernel.py, not the op's CPU-side tests), the benchmark at R = 1, 16k, 131k
# and 524k without the slow baselines plus one torch.compile comparison at 131k (bench_compile.json), and Nsight
# Compute with the executed-instruction count; no SASS step.
#
# A fresh GPU machine starts with an empty build cache (the build alone takes a minute or more), so everything that
# needs the kernel runs here, in one process tree, and writes what it finds under $OUT (at most 8 files come back):
#   env.txt      GPU, driver, torch, nvcc
#   build.log    the extension build (ninja, verbose) and its wall time
#   pytest.txt   tests/kernels/test_cuda_kernel.py (GPU) + test_ops.py (the CPU op tests, on this torch)
#   bench.md     scripts/bench_projection.py: the table for README.md (R up to 524,288, K=200, fp32)
#   bench.json   the same numbers, machine-readable
#   ncu.txt      Nsight Compute on the forward kernel at R=131,072 (what limits it: memory, issue or latency)
#   sass.txt     scripts/kernel_sass.py: registers and the Newton loop's instruction count (static)
#   bench_compile.json  QUICK=1 only (in place of sass.txt): the torch.compile comparison at R=131,072
#   summary.txt  one line per step with its exit status and seconds
# Steps run in order and each runs even if an earlier one failed; each has its own time limit so the whole stays
# under the device tool's 10 minutes.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
if [ "$QUICK" != 0 ] && [ "$QUICK" != 1 ]; then echo "QUICK must be 0 or 1, got '$QUICK'" >&2; exit 2; fi
if [ "$QUICK" = 1 ]; then export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}; fi  # PTX doubles the build
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-16}
# One build cache for every step (and ncu's child process): the build happens once.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/arr_coc_torch_extensions}
export ARR_COC_KERNEL=cuda  # a kernel that cannot be had must fail loudly, not test the reference
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
: >"$OUT/summary.txt"

step() {  # step NAME LIMIT_S LOGFILE CMD...
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "$name rc=$rc ${limit}s-limit took=$((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, 'SMs')"
  "$CUDA_HOME/bin/nvcc" --version | tail -2
  nproc
} >"$OUT/env.txt" 2>&1

step build 300 "$OUT/build.log" "$PY" -c "
import time
t0 = time.perf_counter()
from arr_coc.kernels import dispatch
ext = dispatch._build(verbose=True)
print(f'BUILD OK in {time.perf_counter() - t0:.1f} s:', ext.__file__)
"

if [ "$QUICK" = 1 ]; then
  step pytest 120 "$OUT/pytest.txt" "$PY" -m pytest -q -rfE -p no:cacheprovider --durations=10 \
    tests/kernels/test_cuda_kernel.py
  step bench 60 "$OUT/bench.md" "$PY" scripts/bench_projection.py --rows 1 16384 131072 524288 --max-ref-rows 0 \
    --no-compile --json "$OUT/bench.json"
  step bench_compile 90 "$OUT/bench.md" "$PY" scripts/bench_projection.py --rows 131072 --max-ref-rows 131072 \
    --reps 10 --json "$OUT/bench_compile.json"
else
  step pytest 240 "$OUT/pytest.txt" "$PY" -m pytest -q -rA -p no:cacheprovider \
    tests/kernels/test_cuda_kernel.py tests/kernels/test_ops.py
  step bench 240 "$OUT/bench.md" "$PY" scripts/bench_projection.py --json "$OUT/bench.json"
fi

if command -v ncu >/dev/null 2>&1; then
  cat >/tmp/arr_coc_ncu.py <<'EOF'
import torch
from arr_coc.kernels import dispatch
ext = dispatch.load_kernel()
r, k = 131072, 200
y = (torch.randn(r, k, device="cuda") * 100 + 66)
b = torch.full((r,), 13200.0, device="cuda")
lo, hi = torch.tensor(64.0, device="cuda"), torch.tensor(400.0, device="cuda")
y2, b2, lo2, hi2 = dispatch._rows(y, b, lo, hi, torch.float32)
for mode, bi in ((0, None), (1, b2.long())):
    ext.forward(y2, b2, bi, lo2, hi2, mode, 0)
torch.cuda.synchronize()
EOF
  step ncu 150 "$OUT/ncu.txt" ncu --target-processes all --kernel-name regex:projection_warp_kernel --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --metrics smsp__inst_executed.sum "$PY" /tmp/arr_coc_ncu.py
else
  echo "ncu not found" >"$OUT/ncu.txt"
fi

# Static machine code of the default-preset warp kernel (registers, Newton-loop length), beside the timings.
[ "$QUICK" = 1 ] || step sass 120 "$OUT/sass.txt" "$PY" scripts/kernel_sass.py

echo "done; outputs in $OUT" | tee -a "$OUT/summary.txt"
