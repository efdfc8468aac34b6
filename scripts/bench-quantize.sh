#!/usr/bin/env bash
# Quantization speed and memory, ours vs llama-quantize, measured in one run from the
# same F16 GGUF. Each tool runs in turn (never both at once) under /usr/bin/time -v;
# the table gives wall seconds, peak RSS and the perplexity llama.cpp measures on
# shared/data/corpus/test.txt (first $PPL_CHUNKS windows of 256 tokens, default 20) for both outputs.
#
#   bash scripts/bench-quantize.sh [MODEL.gguf|HF-folder] [LEVELS...]
#
# Default model: the real Qwen2.5-Coder-0.5B-Instruct (scripts/fetch-real-models.sh);
# default levels: Q4_K_M Q2_K IQ4_XS. Threads: all cores for both tools.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$(bash scripts/fetch-real-models.sh)/qwen2.5-coder-0.5b-instruct.gguf}"
shift || true
LEVELS=("$@")
[ ${#LEVELS[@]} -eq 0 ] && LEVELS=(Q4_K_M Q2_K IQ4_XS)
BIN="$(bash scripts/peer-llama-cpp.sh)"
cargo build --release -q -p llm-quantize
LQ="$PWD/target/release/llm-quantize"
TEST="${TEST_TEXT:-$PWD/../shared/data/corpus/test.txt}"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
NT="$(nproc)"

measure() { # label, command... -> "seconds rss_bytes"
  /usr/bin/time -v -o "$W/time.txt" "$@" >/dev/null 2>"$W/err.txt" || { cat "$W/err.txt" >&2; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$W/time.txt" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(awk -F': ' '/Maximum resident set size/{printf "%d", $2*1024}' "$W/time.txt")
  echo "$wall $rss"
}
ppl() {
  "$BIN/llama-perplexity" -m "$1" -f "$TEST" -c 256 -b 256 -t "$NT" --chunks "${PPL_CHUNKS:-20}" --no-warmup 2>&1 \
    | awk -F'PPL = ' '/Final estimate/{split($2,a," "); print a[1]}'
}

echo "# source: $MODEL" >&2
"$LQ" quantize "$MODEL" gguf -q F16 -o "$W" -n f16.gguf --no-checkpoints --verbosity quiet >/dev/null
F16="$W/f16.gguf"
printf "%-8s %10s %10s %12s %12s %8s %9s %10s %10s\n" level ours_s peer_s ours_rss_MB peer_rss_MB time_x ours_size peer_size ppl_ours/peer
for L in "${LEVELS[@]}"; do
  read -r ts tr < <(measure "$LQ" quantize "$F16" gguf -q "$L" -o "$W" -n "ours-$L.gguf" --no-checkpoints --verbosity quiet)
  read -r ps pr < <(measure "$BIN/llama-quantize" "$F16" "$W/peer-$L.gguf" "$L" "$NT")
  so=$(stat -c %s "$W/ours-$L.gguf"); sp=$(stat -c %s "$W/peer-$L.gguf")
  po=$(ppl "$W/ours-$L.gguf"); pp=$(ppl "$W/peer-$L.gguf")
  printf "%-8s %10.2f %10.2f %12.1f %12.1f %8.2f %9d %10d %s/%s\n" "$L" "$ts" "$ps" "$(echo "$tr/1048576" | bc -l)" "$(echo "$pr/1048576" | bc -l)" "$(echo "$ts/$ps" | bc -l)" "$so" "$sp" "$po" "$pp"
done
echo "# F16 source: $(stat -c %s "$F16") bytes; threads: $NT; model file: $(stat -c %s "$MODEL") bytes" >&2
