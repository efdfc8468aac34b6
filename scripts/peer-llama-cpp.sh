#!/usr/bin/env bash
# Builds llama.cpp's tools (the peer we measure against) from the pinned
# llama-cpp-python sdist on PyPI, once per machine, and prints the bin folder.
#
#   bash scripts/peer-llama-cpp.sh            # -> .../llama.cpp-<ver>/bin
#
# The build is cached under $LLM_QUANTIZE_PEER_DIR (default ~/.cache/llm-quantize/peer);
# a later call on the same machine returns at once.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="${LLM_QUANTIZE_PEER_DIR:-$HOME/.cache/llm-quantize/peer}"
DEST="$ROOT/llama.cpp-$VERSION"
TOOLS=(llama-quantize llama-perplexity llama-tokenize llama-bench llama-imatrix llama-server)

have_all() { for t in "${TOOLS[@]}"; do [ -x "$DEST/bin/$t" ] || return 1; done; }
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
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$work/build" -j "$(nproc)" --target "${TOOLS[@]}" >&2
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp/bin"
for t in "${TOOLS[@]}"; do cp "$work/build/bin/$t" "$DEST.tmp/bin/"; done
cp -r "$src/gguf-py" "$DEST.tmp/gguf-py"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "$DEST/bin"
