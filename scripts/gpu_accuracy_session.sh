#!/usr/bin/env bash
# One GPU call for issue 7's accuracy-vs-budget benchmark: generate the benchmark, train every model at once on the
# one GPU (`--parallel`), evaluate every method at every token fraction, export the trained ARR-COC model for the
# demo, and bring back the table, the figures and the small checkpoint. A fresh machine is bare and goes back 30 s
# after a call, so everything happens inside this one call (about 10 minutes).
#
#   here, once:   bash scripts/fetch_gpu_wheels.sh        # open_clip_torch + datasets (+ deps) into .whl/
#   device tool:  run(command="bash scripts/gpu_accuracy_session.sh", carry=[".whl"], timeout_s=600)
#   CPU dry run:  SMOKE=1 OUT=/tmp/acc_out bash scripts/gpu_accuracy_session.sh   # tiny models, checks the plumbing
#   CPU dry run of the real branch (what the GPU call runs, tiny sizes; about 100 s here):
#     pytest -m slow tests/test_gpu_session_scripts.py -k dry_run
#
# Knobs (environment): TOTAL_SECONDS (default 550) is the wall clock of the whole call: the benchmark gets what is
# left of it after the data (`--total-minutes`: it times the evaluation and picks the test rows per evaluation that
# fit) and leaves 45 s for the export; TRAIN_MINUTES (default 2.5) is the wall clock every model's steps must fit in
# (`--steps auto` probes all models at once and gives each the steps the slowest fits); TRAIN_SIZE (default 20000)
# and TEST_SIZE (default 1000) the generated splits; PARALLEL (default 5) the models trained at once
# (one `bench` model at batch 128 holds 10-13 GiB: 7 at once ran out of the H100's 80 GB, measured 2026-11-23);
# MODELS (default "arr_coc_projection arr_coc_bandit") the unsupervised ARR-COC models; UNIFORM_FRACTIONS (default:
# all) the budgets a uniform-pooling model is trained at; PROBE_STEPS (default 12) the --steps auto probe's steps;
# BUDGET_FRACTIONS (default: none) also trains `arr_coc_multibudget` on a budget per batch from these fractions;
# FINETUNE_FRACTIONS (default: none) with FINETUNE_STEPS also trains `arr_coc_finetuned`, the grounded model fine-tuned
# afterwards for FINETUNE_STEPS on a budget per batch from these fractions (FINETUNE_LR, default the config's: its
# learning rate; the README's CPU recipe: FINETUNE_FRACTIONS="0.125 0.25 0.25 0.5 1" FINETUNE_STEPS=2000 FINETUNE_LR=1e-3);
# it trains after its base, so it needs wall clock beyond TRAIN_MINUTES; BANDIT_AFTER_STEPS (default: none) also
# trains `arr_coc_bandit_grounded`, the grounded model with a fresh bandit allocator learning from its answers for
# that many steps, after it (the README's CPU recipe: BANDIT_AFTER_STEPS=2000 FINETUNE_LR=1e-3);
# SALIENCY_AFTER_STEPS (default: none) also trains, label-free, `arr_coc_salient` (saliency distillation) and its
# control `uniform_continued` for that many steps from the uniform-pooling model of the training budget
# (SALIENCY_FROM=full: from the full-token model; by default UNIFORM_FRACTIONS must include the training fraction);
# PRETRAIN_STEPS (default 0: none) > 0 first trains the bench ViT on the train split's scene records
# (scripts/pretrain_vision.py) and starts every model from it; VISION_TOWER=<file> instead starts every model from a
# tower pretrained before (pretrain_vision's safetensors, carried: the README's CPU tower, so that GPU and CPU runs
# share it; 3,000 steps took 172 s of an H100 call); FREEZE_VISION (default 1) keeps that tower frozen while
# the VLMs train, as LLaVA keeps CLIP frozen (0: trainable; on `small`, a frozen pretrained tower was the only setting
# whose VLM began to read digits within 600 steps, results/pilots.md, "Why no model reads the digits");
# EXPORT (default: arr_coc_grounded, or arr_coc_projection without grounding) the run exported for the demo;
# EVAL_SAMPLES (default TEST_SIZE) the test rows per evaluation; STEPS (default auto) fixed steps instead of the probe; RELEVANCE_WEIGHT
# (default 0; 0 leaves it out) > 0 also trains `arr_coc_relevance` (relevance distillation, models/relevance.py);
# GROUNDING_WEIGHT (default 1; 0 leaves it out) > 0 also trains `arr_coc_grounded` (box supervision,
# models/grounding.py), which is then the model exported for the demo (otherwise `arr_coc_projection`).
# PRESET (default bench) picks the model and benchmark scale: `small` generates the README's small benchmark (96 px,
# 2-3 shapes, 70% digit questions; TRAIN_SIZE 12000 and TEST_SIZE 600 unless set), trains configs/train/small.yaml
# and exports weights/arr_coc_small in float32; SEEDS (default "0") the training seeds; FRACTIONS (default: the
# benchmark's 1 0.5 0.25 0.125) the token fractions evaluated; ONSET_ACCURACY (default 0.35 for `small`, none for
# `bench`) adds each trained model's onset to the report's per-seed table (--onset-accuracy: the first 500-step window
# whose mean training accuracy reaches it; training/curves.py). One call for issue 7's open question, whether every
# seed of the frozen-tower small model, and the full-token model, learn to read digits given 10,000 steps (on the CPU
# seed 2 read only after 5,000-5,500; README):
#   PRESET=small PRETRAIN_STEPS=3000 SEEDS="0 1 2 3 4" STEPS=10000 MODELS= UNIFORM_FRACTIONS=0.25 FRACTIONS="1 0.25" \
#     PARALLEL=8 bash scripts/gpu_accuracy_session.sh
# Models: full, ARR-COC projection, bandit and grounded at 25%, uniform-trained at 50/25/12.5% = 7 (8 with relevance).
# Writes to $OUT (at most 8 files come back, 16 MiB each): summary.txt (environment, then one line per step: exit
# status, seconds), bench.log (tail), accuracy_budget.md, accuracy_budget.png, budget_heatmap.png,
# accuracy_budget.json, and weights.tar.part-aa/-ab (the exported ARR-COC model, split under 16 MiB; here:
# `cat weights.tar.part-* | tar -x -C weights/`).
set -u
OUT=${OUT:-$PWD/acc_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
T_START=$(date +%s)
TOTAL_SECONDS=${TOTAL_SECONDS:-550}
TRAIN_MINUTES=${TRAIN_MINUTES:-2.5}
PRESET=${PRESET:-bench}
case "$PRESET" in
  bench) TRAIN_SIZE=${TRAIN_SIZE:-20000}; TEST_SIZE=${TEST_SIZE:-1000}; GEN_ARGS=(); EXPORT_DTYPE=bfloat16
         ONSET_ACCURACY=${ONSET_ACCURACY:-} ;;
  small) TRAIN_SIZE=${TRAIN_SIZE:-12000}; TEST_SIZE=${TEST_SIZE:-600}; EXPORT_DTYPE=float32
         ONSET_ACCURACY=${ONSET_ACCURACY-0.35}
         GEN_ARGS=(--image-size 96 --min-objects 2 --max-objects 3 --set "shape_size=[32,36]" "glyph_size=[12,16]"
                   distractor_glyphs=1 clutter_lines=6 clutter_outlines=2 "question_weights=[0.7,0.1,0.1,0.1]") ;;
  *) echo "PRESET must be bench or small, got '$PRESET'" >&2; exit 2 ;;
esac
SEEDS=${SEEDS:-0}
FRACTIONS=${FRACTIONS:-}
EVAL_SAMPLES=${EVAL_SAMPLES:-$TEST_SIZE}
PARALLEL=${PARALLEL:-5}
MODELS=${MODELS-arr_coc_projection arr_coc_bandit}  # MODELS= (empty): neither
UNIFORM_FRACTIONS=${UNIFORM_FRACTIONS:-}
PROBE_STEPS=${PROBE_STEPS:-12}
BUDGET_FRACTIONS=${BUDGET_FRACTIONS:-}
FINETUNE_FRACTIONS=${FINETUNE_FRACTIONS:-}
FINETUNE_STEPS=${FINETUNE_STEPS:-}
FINETUNE_LR=${FINETUNE_LR:-}
BANDIT_AFTER_STEPS=${BANDIT_AFTER_STEPS:-}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-0}
VISION_TOWER=${VISION_TOWER:-}
FREEZE_VISION=${FREEZE_VISION:-1}
if [ -n "$VISION_TOWER" ]; then  # checked before anything runs: a refusal after the data would cost device time
  if [ "$PRETRAIN_STEPS" != 0 ]; then
    echo "VISION_TOWER=$VISION_TOWER and PRETRAIN_STEPS=$PRETRAIN_STEPS exclude each other: give one" >&2; exit 2
  fi
  if [ ! -f "$VISION_TOWER" ]; then echo "VISION_TOWER=$VISION_TOWER: no such file" >&2; exit 2; fi
  VISION_TOWER=$(cd "$(dirname "$VISION_TOWER")" && pwd)/$(basename "$VISION_TOWER")
fi
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
STEPS=${STEPS:-auto}
RELEVANCE_WEIGHT=${RELEVANCE_WEIGHT:-0}
GROUNDING_WEIGHT=${GROUNDING_WEIGHT:-1}
WORKERS=${WORKERS:-$(nproc)}
# shellcheck source=scripts/gpu_common.sh
source scripts/gpu_common.sh

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU";
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'transformers', transformers.__version__)"; nproc; } >>"$OUT/summary.txt" 2>&1

WORK=/tmp/arr_coc_acc_runs; RES=/tmp/arr_coc_acc_results
# The trained ARR-COC model exported for the demo: the first seed's grounded model where one is trained (a numeric
# test: GROUNDING_WEIGHT=0.0 trains none), else its projection model; EXPORT=<name> picks another.
FIRST_SEED=${SEEDS%% *}
RUN="$WORK/seed$FIRST_SEED/arr_coc_projection"
if awk -v w="$GROUNDING_WEIGHT" 'BEGIN { exit !(w + 0 > 0) }'; then RUN="$WORK/seed$FIRST_SEED/arr_coc_grounded"; fi
if [ -n "${EXPORT:-}" ]; then RUN="$WORK/seed$FIRST_SEED/$EXPORT"; fi
rm -rf "$WORK" "$RES"
# The optional models, in the dry run as in the real one (unquoted on use: each expands to nothing when unset).
OPTIONAL="${BUDGET_FRACTIONS:+--budget-fractions $BUDGET_FRACTIONS} ${FINETUNE_FRACTIONS:+--finetune-fractions \
$FINETUNE_FRACTIONS} ${FINETUNE_STEPS:+--finetune-steps $FINETUNE_STEPS} ${FINETUNE_LR:+--finetune-lr $FINETUNE_LR} \
${BANDIT_AFTER_STEPS:+--bandit-after-steps $BANDIT_AFTER_STEPS} \
${SALIENCY_AFTER_STEPS:+--saliency-after-steps $SALIENCY_AFTER_STEPS} ${SALIENCY_FROM:+--saliency-from $SALIENCY_FROM}"
if [ "$SMOKE" = 1 ]; then
  step bench 600 "$PY" -m scripts.bench_accuracy_budget --smoke --parallel 2 --fractions 1 0.25 \
    --relevance-weight "$RELEVANCE_WEIGHT" --grounding-weight "$GROUNDING_WEIGHT" --work "$WORK" --out "$RES" \
    $OPTIONAL >"$OUT/bench.log" 2>&1
else
  DATA=/tmp/arr_coc_bench
  # Loader workers per training run: the machine's cores shared by the runs trained at once, rounded up (the runs'
  # main processes mostly wait on the GPU). One worker decodes roughly 350 uint8 448 px samples/s (scripts/bench_data).
  LW=${LOADER_WORKERS:-$(( (WORKERS + PARALLEL - 1) / PARALLEL ))}
  step make_benchmark 180 "$PY" -m scripts.make_benchmark --out "$DATA" --train-size "$TRAIN_SIZE" --val-size 0 \
    --test-size "$TEST_SIZE" --workers "$WORKERS" --overwrite "${GEN_ARGS[@]}" >"$OUT/bench.log" 2>&1
  OVERRIDE=(data.generate=false)  # one --train-override list (a second flag would replace the first)
  if [ "$PRETRAIN_STEPS" != 0 ]; then  # a pretrained-style tower first (scripts/pretrain_vision.py), then every model
    # A failed or timed-out pretraining stops the session: training on from a random tower would report other models
    # under this command.
    if ! step pretrain_vision 240 "$PY" -m scripts.pretrain_vision --data "$DATA" --preset "$PRESET" \
        --steps "$PRETRAIN_STEPS" --batch-size 64 --eval-images 500 --out /tmp/arr_coc_vit.safetensors \
        >>"$OUT/summary.txt" 2>>"$OUT/bench.log"; then
      echo "pretrain_vision failed: no benchmark trained (see bench.log)" | tee -a "$OUT/summary.txt" >&2
      tail -c 150000 "$OUT/bench.log" >"$OUT/bench.tail" && mv "$OUT/bench.tail" "$OUT/bench.log"
      exit 1
    fi
    VISION_TOWER=/tmp/arr_coc_vit.safetensors
  fi
  if [ -n "$VISION_TOWER" ]; then  # pretrained here, or elsewhere and carried: every model starts from it
    OVERRIDE+=(model.vision.pretrained="$VISION_TOWER")
    if [ "$FREEZE_VISION" = 1 ]; then OVERRIDE+=(model.vision_trainable=false); fi
  fi
  LEFT=$(( T_START + TOTAL_SECONDS - 45 - $(date +%s) ))  # 45 s kept for the export and the copies
  TOTAL_MIN=$("$PY" -c "print(round($LEFT / 60, 2))")
  step bench $(( LEFT + 20 )) "$PY" -m scripts.bench_accuracy_budget --data "$DATA" --work "$WORK" \
    --train-config "configs/train/$PRESET.yaml" --eval-config "configs/eval/$PRESET.yaml" --seeds $SEEDS \
    ${FRACTIONS:+--fractions $FRACTIONS} --out "$RES" --parallel "$PARALLEL" --steps "$STEPS" \
    --minutes "$TRAIN_MINUTES" --loader-workers "$LW" \
    --eval-samples "$EVAL_SAMPLES" --relevance-weight "$RELEVANCE_WEIGHT" --grounding-weight "$GROUNDING_WEIGHT" \
    --total-minutes "$TOTAL_MIN" --probe-steps "$PROBE_STEPS" --models $MODELS \
    ${UNIFORM_FRACTIONS:+--uniform-fractions $UNIFORM_FRACTIONS} ${ONSET_ACCURACY:+--onset-accuracy $ONSET_ACCURACY} \
    $OPTIONAL --train-override "${OVERRIDE[@]}" >>"$OUT/bench.log" 2>&1
fi
tail -c 150000 "$OUT/bench.log" >"$OUT/bench.tail" && mv "$OUT/bench.tail" "$OUT/bench.log"
for f in accuracy_budget.md accuracy_budget.png budget_heatmap.png accuracy_budget.json; do
  cp "$RES/$f" "$OUT/" 2>/dev/null
done
# The trained ARR-COC model for the README's demo (bf16 for `bench`, about 23 MiB; float32 for `small`, 1 MiB),
# as weights/arr_coc_$PRESET, split under the device tool's 16 MiB per-file limit.
rm -rf /tmp/arr_coc_export
step export 60 "$PY" -m scripts.export_model --run "$RUN" --out "/tmp/arr_coc_export/arr_coc_$PRESET" \
  --dtype "$EXPORT_DTYPE" >/tmp/arr_coc_export.json 2>>"$OUT/bench.log" \
  && tar -C /tmp/arr_coc_export -cf - "arr_coc_$PRESET" | split -b 15m - "$OUT/weights.tar.part-"
cat /tmp/arr_coc_export.json >>"$OUT/summary.txt" 2>/dev/null
cat "$OUT/summary.txt"
