#!/usr/bin/env bash
# The test command (README.md): installs what the tests need on a fresh machine
# (Python gguf-py + numpy, llama.cpp's tools built once from the pinned
# llama-cpp-python sdist and cached), then runs lints and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check "gguf==0.19.0" "numpy<3" "safetensors" "openai==3.51.0" "jinja2==3.1.6" 1>&2
# torch + compressed-tensors venv for llmq-hfquant's cross-checks (about 3 GB, once per machine)
LLMQ_HFQUANT_PYTHON="$(bash scripts/install-py-test-deps.sh)"
export LLMQ_HFQUANT_PYTHON
LLAMA_CPP_BIN="$(bash scripts/peer-llama-cpp.sh)"
export LLAMA_CPP_BIN
echo "llama.cpp peer: $LLAMA_CPP_BIN" >&2

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
