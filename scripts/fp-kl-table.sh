#!/usr/bin/env bash
# KL-divergence table of the floating-point grids (issue 19) against the original, on
# the shared models (or the folders given): compressed-tensors NVFP4, MXFP4, FP8 and
# FP8_BLOCK (round-to-nearest with FP-Quant's MSE scale search), GPTQ and MR-GPTQ
# (Hadamard 128 and 32) on NVFP4 and MXFP4 (Hadamard 128 on FP8 and FP8_BLOCK) through `quantize --method gptq|mr-gptq` (calibrated
# on 32 x 256 tokens of the bundled set), GGUF MXFP4 (llama.cpp's quantizer), and the
# integer references RTN / GPTQ INT4 g128 (compressed-tensors W4A16, calibrated the
# same way), each evaluated with `llm-quantize eval --base` on the shared test text.
#
#   LQ=target/release/llm-quantize bash scripts/fp-kl-table.sh [MODEL_DIR...] > table.md
#
# Environment: EVAL_SAMPLES (test windows, default 16), EVAL_LEN (window, default 256),
# COLUMNS_RE (an extended regex: only the columns whose label matches), CALIB_DATA (a
# calibration text for the calibrated columns instead of the bundled set).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-$PWD/../shared}"
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=("$SHARED"/models/*/)
LQ="${LQ:-$PWD/target/release/llm-quantize}"
TEST="$SHARED/data/corpus/test.txt"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
CAL="--calibration-samples 32 --calibration-seq-len 256${CALIB_DATA:+ --calibration-data $CALIB_DATA}"
ALL_METHODS=(
  "RTN NVFP4|compressed-tensors -q NVFP4"
  "GPTQ NVFP4|compressed-tensors -q NVFP4 --method gptq $CAL"
  "MR-GPTQ NVFP4|compressed-tensors -q NVFP4 --method mr-gptq $CAL"
  "MR-GPTQ H32 NVFP4|compressed-tensors -q NVFP4 --method mr-gptq --hadamard-size 32 $CAL"
  "RTN MXFP4|compressed-tensors -q MXFP4"
  "GPTQ MXFP4|compressed-tensors -q MXFP4 --method gptq $CAL"
  "MR-GPTQ MXFP4|compressed-tensors -q MXFP4 --method mr-gptq $CAL"
  "MR-GPTQ H32 MXFP4|compressed-tensors -q MXFP4 --method mr-gptq --hadamard-size 32 $CAL"
  "RTN MXFP4 (GGUF)|gguf -q MXFP4"
  "RTN FP8|compressed-tensors -q FP8"
  "GPTQ FP8|compressed-tensors -q FP8 --method gptq $CAL"
  "MR-GPTQ FP8|compressed-tensors -q FP8 --method mr-gptq $CAL"
  "RTN FP8_BLOCK|compressed-tensors -q FP8_BLOCK"
  "GPTQ FP8_BLOCK|compressed-tensors -q FP8_BLOCK --method gptq $CAL"
  "MR-GPTQ FP8_BLOCK|compressed-tensors -q FP8_BLOCK --method mr-gptq $CAL"
  "RTN INT4 g128|compressed-tensors -q W4A16 --method rtn"
  "GPTQ INT4 g128|compressed-tensors -q W4A16 $CAL"
)
METHODS=()
for m in "${ALL_METHODS[@]}"; do
  [[ "${m%%|*}" =~ ${COLUMNS_RE:-.} ]] && METHODS+=("$m")
done
printf "| model |"
for m in "${METHODS[@]}"; do printf " %s |" "${m%%|*}"; done
printf "\n|---|"
for m in "${METHODS[@]}"; do printf -- "---|"; done
printf "\n"
i=0
for model in "${MODELS[@]}"; do
  model="${model%/}"
  printf "| %s |" "$(basename "$model")"
  for m in "${METHODS[@]}"; do
    i=$((i + 1)); out="$W/o$i"
    # shellcheck disable=SC2086
    if "$LQ" quantize "$model" ${m#*|} -o "$out" --no-checkpoints --no-validate >/dev/null 2>"$W/err"; then
      f="$(ls -d "$out"/* | head -1)"
      kl="$("$LQ" eval "$f" --base "$model" --dataset "$TEST" --samples "${EVAL_SAMPLES:-16}" \
        --max-length "${EVAL_LEN:-256}" --format json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin)["kl"]; print("%.5f" % d["mean_kl_divergence"])')"
      printf " %s |" "$kl"
    else
      printf " n/a |"
    fi
    rm -rf "$out"
  done
  printf "\n"
done
