#!/usr/bin/env bash
# Time and peak RSS (/usr/bin/time -v) of calibrated quantization on the real
# Qwen2.5-Coder-0.5B-Instruct, for several calibration sample counts, with the KL
# divergence of each result against the original on the shared test text.
#
#   bash scripts/bench-calibration.sh [METHOD] [SAMPLES...]
#
# METHOD: gptq (default), awq or rtn; SAMPLES default: 4 16 64. SEQ sets the
# calibration length (default 256). The HF folder is made once from the GGUF by
# scripts/gguf-to-hf-qwen2.py (dequantized to bf16) and kept in $WORK (default
# /tmp/llmq-calib-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD="${1:-gptq}"
shift || true
SAMPLES=("$@")
[ ${#SAMPLES[@]} -eq 0 ] && SAMPLES=(4 16 64)
WORK="${WORK:-/tmp/llmq-calib-bench}"
SHARED="${SHARED:-$PWD/../shared}"
mkdir -p "$WORK"
# LQ: a prebuilt binary to measure (default: build target/release/llm-quantize)
if [ -z "${LQ:-}" ]; then
  cargo build --release -q -p llm-quantize
  LQ="$PWD/target/release/llm-quantize"
fi
HF="$WORK/qwen2.5-coder-0.5b-hf"
if [ ! -f "$HF/config.json" ]; then
  mkdir -p "$HF"
  python3 scripts/gguf-to-hf-qwen2.py "$(bash scripts/fetch-real-models.sh)/qwen2.5-coder-0.5b-instruct.gguf" "$HF"
fi
case "$METHOD" in
  gptq) FMT=(gptq -q 4bit) ;;
  awq) FMT=(awq -q 4bit) ;;
  rtn) FMT=(gptq -q 4bit --method rtn) ;;
  *) echo "unknown method $METHOD" >&2; exit 2 ;;
esac
printf "| method | samples x seq | wall | peak RSS | KL vs original | ppl |\n|---|---|---|---|---|---|\n"
for n in "${SAMPLES[@]}"; do
  out="$WORK/q-$METHOD-$n"
  rm -rf "$out"
  /usr/bin/time -v -o "$WORK/time.txt" "$LQ" quantize "$HF" "${FMT[@]}" -o "$WORK" -n "q-$METHOD-$n" \
    --no-checkpoints --calibration-samples "$n" --calibration-seq-len "${SEQ:-256}" \
    --verbosity quiet >/dev/null
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$WORK/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/{printf "%.2f GB", $2*1024/1e9}' "$WORK/time.txt")
  read -r kl ppl < <("$LQ" --format json eval "$out" --base "$HF" --dataset "$SHARED/data/corpus/test.txt" \
    --samples 16 --max-length 512 --verbosity quiet |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.4f %.2f" % (d["kl"]["mean_kl_divergence"], d["perplexity"]))')
  printf "| %s | %s x %s | %s | %s | %s | %s |\n" "$METHOD" "$n" "${SEQ:-256}" "$wall" "$rss" "$kl" "$ppl"
done
