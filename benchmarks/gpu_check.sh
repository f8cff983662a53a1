#!/usr/bin/env bash
# One-GPU check of issue 14 ("GPU"), meant to take under 8 minutes on one GPU:
#   1. benchmarks/decoders.py at 1024x2048 in fp32 (with FLOPs) and in AMP bf16 (timing only),
#      interleaved rounds, one worker process per row (peak memory per row);
#   2. one AMP (bf16) training step of every real config (configs/<dataset>/*.yaml except
#      Base-*) at its real crop size (tools/benchmark.py picks INPUT.CROP.SIZE; COCO: the
#      largest training size, 800x1333), batch 2 (the configs' 16 images over 8 GPUs),
#      MODEL.WEIGHTS "" (random init), interleaved per dataset, peak memory per config;
#   3. benchmarks/gpu_summary.py: summary.md (device, torch version, settings, one table).
#
# Usage:
#   benchmarks/gpu_check.sh                  # on a GPU; output benchmarks/results/gpu/
#   OUT=/dir benchmarks/gpu_check.sh         # output in $OUT (the device tool's folder)
#   benchmarks/gpu_check.sh --output-dir DIR # output in DIR
#   benchmarks/gpu_check.sh --dry-run        # CPU smoke run: tiny sizes, 1 iteration, 2 decoder
#                                            # rows, 2 configs (GPU_CHECK_CONFIGS overrides)
# Environment: PYTHON (default .venv/bin/python, else python), GPU_CHECK_CONFIGS (space-separated
# config files instead of all real configs).
# Every step runs even if an earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN=0
OUTPUT_DIR="${OUT:-benchmarks/results/gpu}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --output-dir) OUTPUT_DIR="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "ERROR: unknown argument '$1' (--dry-run, --output-dir DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python; fi
mkdir -p "$OUTPUT_DIR"
OUTPUT_DIR="$(cd "$OUTPUT_DIR" && pwd)"
STATUS="$OUTPUT_DIR/steps.tsv"
: > "$STATUS"
LOGS="$OUTPUT_DIR/logs"
mkdir -p "$LOGS"

if [ "$DRY_RUN" = 1 ]; then
  MODE="dry run (CPU smoke: tiny sizes, 1 iteration; not results)"
  DEC_COMMON=(--device cpu --quick --in-process --threads 1 --rows semfpn_r50,nrd_r50)
  DEC_FP32=(); DEC_AMP=(--amp bf16 --skip-flops)
  TRAIN_ARGS=(--device cpu --threads 1 --input-size 64 128 --iters 1 --warmup 0)
  DEFAULT_CONFIGS="configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml
configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml"
  T_DEC=300; T_AMP=300; T_TRAIN=300
else
  MODE="GPU"
  DEC_COMMON=(--device cuda --time-size 1024 2048 --flop-size 1024 2048 --iters 10 --warmup 3)
  DEC_FP32=(); DEC_AMP=(--amp bf16 --skip-flops)
  TRAIN_ARGS=(--device cuda --iters 3 --warmup 2)
  # Baselines first: each dataset's ratios are against its first config.
  DEFAULT_CONFIGS="$(for f in configs/Cityscapes-SemanticSegmentation/semantic_fpn_*.yaml \
    configs/Cityscapes-SemanticSegmentation/*.yaml \
    configs/COCO-PanopticSegmentation/panoptic_fpn_*.yaml configs/COCO-PanopticSegmentation/*.yaml \
    configs/ADE20K-SemanticSegmentation/semantic_fpn_*.yaml configs/ADE20K-SemanticSegmentation/*.yaml \
    configs/PascalContext-SemanticSegmentation/semantic_fpn_*.yaml \
    configs/PascalContext-SemanticSegmentation/*.yaml; do echo "$f"; done \
    | grep -v '/Base-' | awk '!seen[$0]++')"
  # Time limits (s) per step: at most 150 + 100 + 4 x 60 = 490 s in all.
  T_DEC=150; T_AMP=100; T_TRAIN=60
fi
CONFIGS="${GPU_CHECK_CONFIGS:-$DEFAULT_CONFIGS}"
FAILED=0

step() {  # step NAME TIMEOUT_S CMD...: runs CMD, logs it, records its status and duration
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS rc
  local shown
  shown="$(printf '%q ' "$@")"
  echo "== $name: $shown" | tee "$LOGS/$name.log"
  timeout "$limit" "$@" >> "$LOGS/$name.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || { FAILED=1; echo "   FAILED (exit $rc); see $LOGS/$name.log"; tail -5 "$LOGS/$name.log"; }
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "${shown% }" >> "$STATUS"
}

step decoders_fp32 "$T_DEC" "$PY" benchmarks/decoders.py "${DEC_COMMON[@]}" "${DEC_FP32[@]}" \
  --output-dir "$OUTPUT_DIR/decoders_fp32"
step decoders_bf16 "$T_AMP" "$PY" benchmarks/decoders.py "${DEC_COMMON[@]}" "${DEC_AMP[@]}" \
  --output-dir "$OUTPUT_DIR/decoders_bf16"

# One tools/benchmark.py process per dataset: its configs interleaved, the first the baseline.
for dataset in $(printf '%s\n' $CONFIGS | xargs -n1 dirname | awk '!seen[$0]++'); do
  name="train_$(basename "$dataset")"
  args=()
  for c in $(printf '%s\n' $CONFIGS | grep "^$dataset/"); do args+=(--config-file "$c"); done
  step "$name" "$T_TRAIN" "$PY" tools/benchmark.py "${args[@]}" --task train --amp bf16 \
    "${TRAIN_ARGS[@]}" --json "$OUTPUT_DIR/$name.json" MODEL.WEIGHTS ""
done

"$PY" benchmarks/gpu_summary.py --output-dir "$OUTPUT_DIR" --mode "$MODE" || FAILED=1
echo "Wrote $OUTPUT_DIR/summary.md"
exit "$FAILED"
