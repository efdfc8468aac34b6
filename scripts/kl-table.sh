#!/usr/bin/env bash
# KL-divergence table of the calibrated methods against round-to-nearest, on every model
# in ../shared/models (or the folders given): RTN, GPTQ, GPTQ + act-order and AWQ at
# 4-bit and 3-bit, group size 128 (AWQ at 3 bits goes into the GPTQ v2 layout, since
# AutoAWQ's is 4-bit only), each quantized from the bundled calibration set and
# evaluated with `llm-quantize eval --base` on the shared test text.
#
#   bash scripts/kl-table.sh [MODEL_DIR...] > table.md
#
# Environment: SAMPLES (calibration samples, default 32), SEQ (calibration length,
# default 256), EVAL_SAMPLES (test windows, default 24), EVAL_LEN (window, default 256).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-$PWD/../shared}"
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=("$SHARED"/models/*/)
# LQ: a prebuilt binary to measure (default: build target/release/llm-quantize)
if [ -z "${LQ:-}" ]; then
  cargo build --release -q -p llm-quantize
  LQ="$PWD/target/release/llm-quantize"
fi
TEST="$SHARED/data/corpus/test.txt"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT

# label|format and options
METHODS=(
  "RTN 4b|gptq -q 4bit --method rtn"
  "GPTQ 4b|gptq -q 4bit"
  "GPTQ+act-order 4b|gptq -q 4bit --act-order"
  "AWQ 4b|awq -q 4bit"
  "RTN 3b|gptq -q 3bit --method rtn"
  "GPTQ 3b|gptq -q 3bit"
  "GPTQ+act-order 3b|gptq -q 3bit --act-order"
  "AWQ 3b|gptq -q 3bit --method awq --symmetric false --checkpoint-format gptq_v2"
)

printf "| model |"
for m in "${METHODS[@]}"; do printf " %s |" "${m%%|*}"; done
printf "\n|---|"
for _ in "${METHODS[@]}"; do printf "%s" "---|"; done
printf "\n"
for model in "${MODELS[@]}"; do
  model="${model%/}"
  printf "| %s |" "$(basename "$model")"
  for m in "${METHODS[@]}"; do
    # shellcheck disable=SC2206
    opts=(${m#*|})
    out="$W/q"
    rm -rf "$out"
    "$LQ" quantize "$model" "${opts[@]}" -o "$W" -n q --no-checkpoints \
      --calibration-samples "${SAMPLES:-32}" --calibration-seq-len "${SEQ:-256}" \
      --verbosity quiet >/dev/null
    kl=$("$LQ" --format json eval "$out" --base "$model" --dataset "$TEST" \
      --samples "${EVAL_SAMPLES:-24}" --max-length "${EVAL_LEN:-256}" --verbosity quiet \
      | python3 -c 'import json,sys; print("%.5f" % json.load(sys.stdin)["kl"]["mean_kl_divergence"])')
    printf " %s |" "$kl"
  done
  printf "\n"
done
