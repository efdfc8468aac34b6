#!/usr/bin/env bash
# Builds llama.cpp's tools (the peer we measure against) from the pinned
# llama-cpp-python sdist on PyPI, once per machine, and prints the bin folder.
#
#   bash scripts/peer-llama-cpp.sh            # -> .../llama.cpp-<ver>/bin
#
# The build is cached under $LLM_QUANTIZE_PEER_DIR (default ~/.cache/llm-quantize/peer);
# a later call on the same machine returns at once (a build with other flags is redone).
#
# Native code, except AMX: on VMs that advertise AMX without granting its tile state,
# ggml's AMX kernels die with SIGILL (tileloadd), so the tile ISAs are switched off
# (explicit -mno-* flags win over -march=native in GCC and Clang).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="${LLM_QUANTIZE_PEER_DIR:-$HOME/.cache/llm-quantize/peer}"
DEST="$ROOT/llama.cpp-$VERSION"
TOOLS=(llama-quantize llama-perplexity llama-tokenize llama-bench llama-imatrix llama-server)
ISA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# only where the compiler knows the flags (x86-64, GCC >= 11 / Clang >= 12)
echo 'int main(void){return 0;}' | ${CC:-cc} $ISA_FLAGS -x c -o /dev/null - 2>/dev/null || ISA_FLAGS=""
STAMP="native $ISA_FLAGS"

have_all() {
  [ "$(cat "$DEST/build-flags" 2>/dev/null)" = "$STAMP" ] || return 1
  for t in "${TOOLS[@]}"; do [ -x "$DEST/bin/$t" ] || return 1; done
}
if have_all; then echo "$DEST/bin"; exit 0; fi

mkdir -p "$ROOT"
work="$(mktemp -d "$ROOT/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
python3 -m pip install -q scikit-build-core cmake ninja >&2
python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
  "llama-cpp-python==$VERSION" -d "$work" >&2
tar xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$ISA_FLAGS" -DCMAKE_CXX_FLAGS="$ISA_FLAGS" \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$work/build" -j "$(nproc)" --target "${TOOLS[@]}" >&2
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp/bin"
for t in "${TOOLS[@]}"; do cp "$work/build/bin/$t" "$DEST.tmp/bin/"; done
cp -r "$src/gguf-py" "$DEST.tmp/gguf-py"
echo "$STAMP" > "$DEST.tmp/build-flags"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "$DEST/bin"
