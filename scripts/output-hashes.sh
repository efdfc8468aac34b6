#!/usr/bin/env bash
# Fingerprint of everything the quantizer writes and the evaluator prints, over every
# model in ../shared/models: sha256 of each output file of every format and level
# (GGUF all mixes, imatrix from calibration text, GGUF requantized from a GGUF source,
# GPTQ v1/v2 with and without act-order, AWQ, compressed-tensors, RTN) and the
# perplexity / KL numbers of `eval`. A refactor that claims "no behaviour change" must
# leave this output identical:
#
#   bash scripts/output-hashes.sh > before.txt     # on the old commit
#   bash scripts/output-hashes.sh > after.txt      # on the new one
#   diff before.txt after.txt                      # must be empty
#
# Environment: LQ (a prebuilt binary; default: build target/release/llm-quantize),
# SHARED (default ../shared), MODELS (space-separated folder names, default all),
# SAMPLES / SEQ (calibration, default 8 x 128 to keep it quick), JOBS (models in
# parallel, default 1). Timings are left out; only bytes and numbers are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
# canonical path: the imatrix files record the calibration file's path as given, so two
# checkouts (worktrees) must pass the same string
SHARED="$(cd "${SHARED:-$PWD/../shared}" && pwd -P)"
if [ -z "${LQ:-}" ]; then
  cargo build --release -q -p llm-quantize
  LQ="$PWD/target/release/llm-quantize"
fi
SAMPLES="${SAMPLES:-8}"
SEQ="${SEQ:-128}"
CAL="$SHARED/data/corpus/train.txt"
TEST="$SHARED/data/corpus/test.txt"
read -r -a NAMES <<<"${MODELS:-$(cd "$SHARED/models" && ls -d */ | tr -d / | tr '\n' ' ')}"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT

GGUF_LEVELS=(Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_0 Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K Q8_0 IQ4_XS F16 BF16)
CAL_OPTS=(--calibration-data "$CAL" --calibration-samples "$SAMPLES" --calibration-seq-len "$SEQ")
# label|format and options (calibrated outputs are folders)
HF_RUNS=(
  "gptq-4bit|gptq -q 4bit"
  "gptq-4bit-actorder|gptq -q 4bit --act-order"
  "gptq-3bit-v2|gptq -q 3bit --checkpoint-format gptq_v2"
  "gptq-8bit-g32|gptq -q 8bit --group-size 32"
  "gptq-4bit-rtn|gptq -q 4bit --method rtn"
  "awq-4bit|awq -q 4bit"
  "ct-W4A16|compressed-tensors -q W4A16"
  "ct-W4A16_ASYM-awq|compressed-tensors -q W4A16_ASYM --method awq"
  "ct-W8A16-rtn|compressed-tensors -q W8A16 --method rtn"
)

# files of an output (file or folder), hashed, checkpoints and reports with times excluded
hash_out() {
  local label="$1" path="$2"
  if [ -d "$path" ]; then
    (cd "$path" && find . -type f ! -name '*.tmp' | LC_ALL=C sort | while read -r f; do
      printf '%s %s/%s %s\n' "$model" "$label" "${f#./}" "$(sha256sum "$f" | cut -c1-64)"
    done)
  else
    printf '%s %s %s\n' "$model" "$label" "$(sha256sum "$path" | cut -c1-64)"
  fi
}

# the numbers of an eval JSON result (no timings)
eval_numbers() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
keep = {}
def walk(p, v):
    if isinstance(v, dict):
        for k, x in v.items(): walk(p + "." + k if p else k, x)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        if not any(t in p for t in ("seconds", "time", "per_second", "tokens_per", "rss", "elapsed")):
            keep[p] = v
walk("", r)
print(" ".join(f"{k}={keep[k]!r}" for k in sorted(keep)))'
}

run() { "$LQ" --format json --verbosity quiet "$@"; }

for model in "${NAMES[@]}"; do
  src="$SHARED/models/$model"
  d="$W/$model"
  mkdir -p "$d"
  export LLM_QUANTIZE_CHECKPOINT_DIR="$d/ckpt"
  for q in "${GGUF_LEVELS[@]}"; do
    run quantize "$src" gguf -q "$q" -o "$d" -n "$q.gguf" >/dev/null
    hash_out "gguf-$q" "$d/$q.gguf"
  done
  run quantize "$src" gguf -q Q4_K_M "${CAL_OPTS[@]}" -o "$d" -n imat-Q4_K_M.gguf >/dev/null
  hash_out gguf-imatrix-Q4_K_M "$d/imat-Q4_K_M.gguf"
  hash_out gguf-imatrix-Q4_K_M.imatrix "$d/imat-Q4_K_M.imatrix.gguf"
  run quantize "$d/F16.gguf" gguf -q Q4_K_M -o "$d" -n from-gguf-Q4_K_M.gguf >/dev/null
  hash_out gguf-from-gguf-Q4_K_M "$d/from-gguf-Q4_K_M.gguf"
  for r in "${HF_RUNS[@]}"; do
    label="${r%%|*}"
    # shellcheck disable=SC2206
    opts=(${r#*|})
    run quantize "$src" "${opts[@]}" "${CAL_OPTS[@]}" -o "$d" -n "$label" >/dev/null
    hash_out "$label" "$d/$label"
  done
  for e in Q4_K_M.gguf Q2_K.gguf gptq-4bit awq-4bit ct-W4A16; do
    printf '%s eval-%s %s\n' "$model" "$e" \
      "$(run eval "$d/$e" --base "$src" --dataset "$TEST" --samples 4 --max-length 128 | eval_numbers)"
  done
  printf '%s eval-source %s\n' "$model" \
    "$(run eval "$src" --dataset "$TEST" --samples 4 --max-length 128 | eval_numbers)"
  rm -rf "$d"
done
