#!/usr/bin/env bash
# Serve benchmark: `llm-quantize serve` and llama.cpp's `llama-server` on the same GGUF
# and machine, measured by scripts/bench-serve.py at 1, 4 and 16 concurrent clients.
# Usage: bash scripts/bench-serve.sh [MODEL.gguf] [MAX_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$HOME/.cache/llm-quantize/real-models/qwen2.5-coder-0.5b-instruct.gguf}"
MAXTOK="${2:-64}"
LQ="${LQ:-target/release/llm-quantize}"
PEER="${LLAMA_CPP_BIN:-$HOME/.cache/llm-quantize/peer/llama.cpp-0.3.36/bin}"
PY="python3 scripts/bench-serve.py"

wait_up() { for _ in $(seq 600); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }

echo "== llm-quantize serve (max-batch 16) ==" >&2
"$LQ" serve "$MODEL" --port 18181 --max-batch 16 --ctx-size 2048 --verbosity quiet >/dev/null 2>/tmp/bench-lq.err &
pid=$!; trap 'kill $pid 2>/dev/null || true' EXIT
wait_up http://127.0.0.1:18181
$PY http://127.0.0.1:18181 --max-tokens "$MAXTOK"
curl -s http://127.0.0.1:18181/metrics | grep -E '^llmq_time_to_first_token_seconds_(sum|count)|^llmq_generation_tokens_total' >&2
kill $pid; wait $pid 2>/dev/null || true

if [ -x "$PEER/llama-server" ]; then
  echo "== llama-server (-np 16, -c 32768: 2048 per slot, continuous batching) ==" >&2
  LD_LIBRARY_PATH="$PEER:$PEER/../lib:${LD_LIBRARY_PATH:-}" "$PEER/llama-server" -m "$MODEL" \
    --host 127.0.0.1 --port 18182 -np 16 -c 32768 -cb >/tmp/bench-llama.log 2>&1 &
  pid=$!
  wait_up http://127.0.0.1:18182
  $PY http://127.0.0.1:18182 --max-tokens "$MAXTOK"
  kill $pid; wait $pid 2>/dev/null || true
else
  echo "llama-server not found in $PEER" >&2
fi
