# The device call of 2026-11-25 (twenty-fourth session) that produced this folder: run(command=<below>, timeout_s=225)
# on one NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130, driver 580.159.04), at commit 7da5e3d. Then, in a second call,
# ncu.txt (Nsight Compute on the forward kernel at R=131,072).
export CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 TORCH_EXTENSIONS_DIR=/tmp/ext ARR_COC_KERNEL=cuda PYTHONPATH=$PWD
S=$OUT/summary.txt; t(){ echo "$1 $(date +%s)" >> $S; }; t start
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/env.txt; python3 -c "import torch;print(torch.__version__)" >> $OUT/env.txt
timeout 100 python3 -c "from arr_coc.kernels import dispatch; dispatch._build(verbose=False); print('BUILD OK')" > $OUT/build.log 2>&1; t build$?
timeout 45 python3 scripts/bench_projection.py --rows 1 16384 131072 524288 --max-ref-rows 0 --no-compile --json $OUT/benchA.json > $OUT/benchA.md 2>&1; t benchA$?
timeout 90 python3 -m pytest -q -x -rfE -p no:cacheprovider --durations=10 tests/kernels/test_cuda_kernel.py > $OUT/pytest.txt 2>&1; t pytest$?
timeout 60 python3 scripts/bench_projection.py --rows 131072 --max-ref-rows 131072 --reps 10 --json $OUT/benchB.json > $OUT/benchB.md 2>&1; t benchB$?
# second call:
# ncu --target-processes all --kernel-name regex:projection_warp_kernel --launch-count 1 --section SpeedOfLight \
#   --section Occupancy --section SchedulerStats --metrics smsp__inst_executed.sum,sm__cycles_elapsed.max python3 /tmp/n.py
# where /tmp/n.py calls ext.forward once on bench_projection's R=131,072 rows (seed 131072, y = 100·N(0,1) + 66).
