# Shared set-up of the one-call GPU session scripts (sourced, not run): installs the carried wheels (.whl/, see
# scripts/fetch_gpu_wheels.sh), puts the repo on PYTHONPATH, empties $OUT/summary.txt and defines `step`.
# Needs OUT and PY set by the caller.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
: >"$OUT/summary.txt"

step() {  # step NAME SECONDS CMD...: run with a time limit, record status and duration in $OUT/summary.txt
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@"
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/summary.txt" >&2  # stderr: a step's stdout may be a file
  return $rc
}
