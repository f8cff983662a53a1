#!/usr/bin/env bash
# GPU check (issues 14 and 19), prepared to run in under 8 minutes on one H100. Every step writes
# its results as soon as it has them and records its status in steps.tsv, so a time-out loses
# nothing already measured; a failing step (or config) does not stop the others. In order:
#   preflight   driver, CUDA, cuDNN, TF32 flags, GPUs (stops here without CUDA);
#   pytest_cuda the GPU tests (pytest -m cuda);
#   parity      CPU vs CUDA float32, TF32 off: RSE, RSP, NRD head;
#   amp_diffs   AMP (bf16, fp16) vs float32: loss terms and gradient of a toy step;
#   toy_*       train_net.py, toy NRD config: 20 AMP iterations + checkpoint, --resume,
#               --eval-only with TTA;
#   step_*      per real config, one process each: float32, bf16 and fp16 training step time and
#               peak memory at batch 2 (COCO rows: MODEL.RESNETS.NORM BN and SOLVER.BASE_LR 0:
#               random FrozenBN weights at the configs' LR diverge);
#   ddp_2gpu    train_net.py --num-gpus 2 with SyncBN (when two GPUs exist);
#   decoders_*  benchmarks/decoders.py fp32 and bf16 at 1024x2048, if time is left;
#   summary     benchmarks/gpu_summary.py -> summary.md.
#
# Usage:
#   source .gpu/setup.sh; benchmarks/gpu_check.sh    # output benchmarks/results/gpu/ (or $OUT)
#   benchmarks/gpu_check.sh --output-dir DIR
#   benchmarks/gpu_check.sh --dry-run                 # CPU smoke run: tiny sizes, few configs
# Environment: PYTHON (default python3), GPU_CHECK_CONFIGS (space-separated config files instead
# of all real configs), GPU_CHECK_BUDGET (seconds for all steps, default 450).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN=0
OUTPUT_DIR="${OUT:-benchmarks/results/gpu}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --output-dir) OUTPUT_DIR="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "ERROR: unknown argument '$1' (--dry-run, --output-dir DIR)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
mkdir -p "$OUTPUT_DIR"
OUTPUT_DIR="$(cd "$OUTPUT_DIR" && pwd)"
STATUS="$OUTPUT_DIR/steps.tsv"
: > "$STATUS"
LOGS="$OUTPUT_DIR/logs"
mkdir -p "$LOGS"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$OUTPUT_DIR/datasets}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
TOY=configs/Toy/nrd_R_18_toy.yaml
TOY_DATA=(DATASETS.TOY.NUM_TRAIN 16 DATASETS.TOY.NUM_VAL 4)

if [ "$DRY_RUN" = 1 ]; then
  MODE="dry run (CPU smoke: tiny sizes, 1 iteration; not results)"
  DEV=cpu; PRE=(--allow-cpu); AMPS=(bf16); TOY_ITERS=2
  STEP_ARGS=(--input-size 64 128 --iters 1 --warmup 0)
  TOY_SMALL=(DATASETS.TOY.IMAGE_SIZE "(64, 80)" INPUT.RESIZE_BASE_SIZE "(64, 80)"
    INPUT.CROP.SIZE "(64, 64)" INPUT.SIZE_DIVISIBILITY 64 INPUT.MIN_SIZE_TEST 64
    INPUT.MAX_SIZE_TEST 128 SOLVER.IMS_PER_BATCH 2 TEST.AUG.MIN_SIZES "(64,)")
  DEFAULT_CONFIGS="configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml
configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
  RUN_DECODERS=0
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  MODE="GPU"
  DEV=cuda; PRE=(); AMPS=(bf16 fp16); TOY_ITERS=20
  STEP_ARGS=(--iters 3 --warmup 2)
  TOY_SMALL=()
  DEFAULT_CONFIGS="$(ls configs/Cityscapes-SemanticSegmentation/*.yaml \
    configs/COCO-PanopticSegmentation/*.yaml configs/ADE20K-SemanticSegmentation/*.yaml \
    configs/PascalContext-SemanticSegmentation/*.yaml | grep -v '/Base-')"
  RUN_DECODERS=1
fi
CONFIGS="${GPU_CHECK_CONFIGS:-$DEFAULT_CONFIGS}"
FAILED=0
START=$SECONDS

step() {  # step NAME TIMEOUT_S CMD...: runs CMD within the time left, records status and seconds
  local name="$1" limit="$2"; shift 2
  local left=$((BUDGET - (SECONDS - START))) t0=$SECONDS rc shown
  shown="$(printf '%q ' "$@")"
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "${shown% }" >> "$STATUS"; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $shown" | tee "$LOGS/$name.log"
  timeout "$limit" "$@" >> "$LOGS/$name.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || { FAILED=1; echo "   FAILED (exit $rc); see $LOGS/$name.log"; tail -5 "$LOGS/$name.log"; }
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "${shown% }" >> "$STATUS"
  return "$rc"
}

summary() {
  "$PY" benchmarks/gpu_summary.py --output-dir "$OUTPUT_DIR" --mode "$MODE" || FAILED=1
  echo "Wrote $OUTPUT_DIR/summary.md"
}

if ! step preflight 60 "$PY" benchmarks/gpu_steps.py preflight "${PRE[@]}" \
    --json "$OUTPUT_DIR/preflight.json"; then
  summary; exit 1
fi
if [ "$DRY_RUN" = 0 ]; then
  step pytest_cuda 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
fi
step parity 60 "$PY" benchmarks/gpu_steps.py parity --device "$DEV" --json "$OUTPUT_DIR/parity.json"
step amp_diffs 60 "$PY" benchmarks/gpu_steps.py amp --device "$DEV" --amp "${AMPS[@]}" \
  --config-file "$TOY" --config-file configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml \
  --json "$OUTPUT_DIR/amp_diffs.json"

TOY_OUT="$OUTPUT_DIR/toy_amp"
TOY_OPTS=("${TOY_DATA[@]}" "${TOY_SMALL[@]}" OUTPUT_DIR "$TOY_OUT" SOLVER.AMP.ENABLED True
  SOLVER.AMP.PRECISION bfloat16 SOLVER.CHECKPOINT_PERIOD "$TOY_ITERS" TEST.NUM_VIS_IMAGES 0)
step toy_train 90 "$PY" train_net.py --config-file "$TOY" "${TOY_OPTS[@]}" \
  SOLVER.MAX_ITER "$TOY_ITERS" DATASETS.TEST "()"
step toy_resume 60 "$PY" train_net.py --config-file "$TOY" --resume "${TOY_OPTS[@]}" \
  SOLVER.MAX_ITER "$((TOY_ITERS + 2))" DATASETS.TEST "()"
step toy_eval_tta 60 "$PY" train_net.py --config-file "$TOY" --eval-only "${TOY_OPTS[@]}" \
  MODEL.WEIGHTS "$TOY_OUT/model_final.pth" TEST.AUG.ENABLED True

# One process per config: a config that fails (or runs out of memory) loses only its row.
for c in $CONFIGS; do
  opts=(MODEL.WEIGHTS "")
  case "$c" in *COCO-Panoptic*) opts+=(MODEL.RESNETS.NORM BN SOLVER.BASE_LR 0.0) ;; esac
  name="step_$(basename "$(dirname "$c")")_$(basename "$c" .yaml)"
  step "$name" 40 "$PY" benchmarks/gpu_steps.py train-step --device "$DEV" --amp "${AMPS[@]}" \
    "${STEP_ARGS[@]}" --config-file "$c" --json "$OUTPUT_DIR/$name.json" --opts "${opts[@]}"
done

if [ "$DRY_RUN" = 0 ] && [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  step ddp_2gpu 90 "$PY" train_net.py --config-file configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml \
    --num-gpus 2 "${TOY_DATA[@]}" MODEL.RESNETS.NORM SyncBN MODEL.FPN.NORM SyncBN \
    SOLVER.MAX_ITER 10 DATASETS.TEST "()" OUTPUT_DIR "$OUTPUT_DIR/ddp_2gpu"
fi
if [ "$RUN_DECODERS" = 1 ]; then
  DEC=(--device cuda --time-size 1024 2048 --flop-size 1024 2048 --iters 10 --warmup 3)
  step decoders_fp32 100 "$PY" benchmarks/decoders.py "${DEC[@]}" \
    --output-dir "$OUTPUT_DIR/decoders_fp32"
  step decoders_bf16 80 "$PY" benchmarks/decoders.py "${DEC[@]}" --amp bf16 --skip-flops \
    --output-dir "$OUTPUT_DIR/decoders_bf16"
fi
summary
exit "$FAILED"
