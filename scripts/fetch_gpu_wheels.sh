#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (it has torch 2.11, transformers 5.17, accelerate, timm, pyarrow, ... but
# no open_clip_torch and no datasets) into .whl/ (git-ignored), for Python 3.12 / manylinux x86_64.
#
#   bash scripts/fetch_gpu_wheels.sh             # here, on the CPU machine (it reaches the package registries)
#   device tool: run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && <your command>", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
# Exact versions: the ones CI tests (constraints.txt) and the dependency versions this venv resolved for them.
PKGS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLAT+=(--platform "$p")
done
for pkg in "${PKGS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .whl "$pkg"
done
ls -la .whl
du -sh .whl
