#!/usr/bin/env bash
# Decode and prompt speed of our CUDA engine against llama.cpp CUDA on the same GGUF files,
# in the same run, on random-weight models of real shapes (nothing that size is shipped).
#
#   bash scripts/gpu-vs-llama-cpp.sh LLM_QUANTIZE LLAMA_SRC TOKENIZER_DIR WORK [RESULTS]
#
# LLAMA_SRC: llama.cpp's source (e.g. the pinned llama-cpp-python sdist's vendor/llama.cpp,
# or a .tar.xz of it); built once into WORK/lb with CUDA for this GPU's architecture.
# TOKENIZER_DIR: a Hugging Face tokenizer folder (config.json, tokenizer.json, ...).
# Models go to WORK/q (kept: a second run reuses them). Each `bench` row has our pp512 /
# tg128, llama-bench's on the same file, their ratios and our share of copy bandwidth.
set -uo pipefail
LQ="${1:?usage: gpu-vs-llama-cpp.sh LLM_QUANTIZE LLAMA_SRC TOKENIZER_DIR WORK [RESULTS]}"
SRC="${2:?}"; TOK="${3:?}"; W="${4:?}"; R="${5:-${OUT:-$W/results}}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$W/q" "$R"
if [ ! -x "$W/lb/bin/llama-bench" ]; then
  if [ -f "$SRC" ]; then mkdir -p "$W/src" && tar xJf "$SRC" -C "$W/src" && SRC="$(ls -d "$W"/src/*/ | head -1)"; fi
  arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)"
  cmake -S "$SRC" -B "$W/lb" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" >"$R/cmake.log" 2>&1 || { tail -20 "$R/cmake.log"; exit 1; }
  cmake --build "$W/lb" -j "$(nproc)" --target llama-bench >"$R/build.log" 2>&1 || { tail -20 "$R/build.log"; exit 1; }
fi
# name hidden layers ffn heads kv-heads head-dim vocab formats...
model() {
  local n=$1; shift; local a=("$@"); local fmts=("${a[@]:7}")
  for q in "${fmts[@]}"; do
    [ -f "$W/q/$n-$q.gguf" ] && continue
    [ -d "$W/$n" ] || python3 "$HERE/random-model.py" "$W/$n" --tokenizer "$TOK" --hidden "${a[0]}" \
      --layers "${a[1]}" --ffn "${a[2]}" --heads "${a[3]}" --kv-heads "${a[4]}" --head-dim "${a[5]}" \
      --vocab "${a[6]}" >/dev/null
    "$LQ" quantize "$W/$n" gguf -q "$q" -o "$W/q" -n "$n-$q.gguf" --no-checkpoints --verbosity quiet
  done
  rm -rf "${W:?}/$n"
}
model m8 4096 32 14336 32 8 128 128256 Q4_K_M Q8_0 F16   # Llama-3.1-8B shape
model m1 2048 16 8192 32 8 64 128256 Q4_K_M Q8_0         # Llama-3.2-1B shape
model q05 896 24 4864 14 2 64 151936 Q4_K_M Q8_0         # Qwen2.5-0.5B shape
export LLAMA_CPP_BIN="$W/lb/bin"
for set in "m1-Q4_K_M m1-Q8_0 q05-Q4_K_M q05-Q8_0" "m8-Q4_K_M m8-Q8_0 m8-F16"; do
  models="$(for m in $set; do printf '%s,' "$W/q/$m.gguf"; done)"
  out="$R/bench-$(echo "$set" | cut -c1-2).json"
  "$LQ" --format json bench --models "${models%,}" -p 512 -n 128 -r 3 --device cuda --llama-bench \
    --verbosity quiet -o "$out" >/dev/null 2>"$out.err" || { tail -5 "$out.err"; continue; }
  python3 - "$out" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["models"]:
    lb = r.get("llama_bench") or {}
    t = lambda x, k: (x.get(k) or {}).get("tokens_per_second")
    print(f"{r['name']:<14} pp512 {t(r,'prompt')} vs {t(lb,'prompt')} ({r.get('prompt_ratio_vs_llama_cpp')}x)  "
          f"tg128 {t(r,'decode')} vs {t(lb,'decode')} ({r.get('decode_ratio_vs_llama_cpp')}x)  "
          f"share {(r.get('decode') or {}).get('share_of_copy_bandwidth')}")
PY
done
