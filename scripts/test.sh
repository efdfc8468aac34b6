#!/usr/bin/env bash
# The test command (README.md): installs what the tests need on a fresh machine
# (Python gguf-py + numpy, llama.cpp's tools built once from the pinned
# llama-cpp-python sdist and cached), then runs lints and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# each phase's wall time on stderr, so a CI log shows where its minutes go
phase_start=$SECONDS
phase() {
  echo "[test.sh] $1: $((SECONDS - phase_start)) s" >&2
  phase_start=$SECONDS
}

python3 -m pip install -q --disable-pip-version-check "gguf==0.19.0" "numpy<3" "safetensors" "openai==3.51.0" "jinja2==3.1.6" 1>&2
# torch + compressed-tensors venv for llmq-hfquant's cross-checks (about 3 GB, once per machine)
LLMQ_HFQUANT_PYTHON="$(bash scripts/install-py-test-deps.sh)"
export LLMQ_HFQUANT_PYTHON
phase "python test dependencies"
LLAMA_CPP_BIN="$(bash scripts/peer-llama-cpp.sh)"
export LLAMA_CPP_BIN
echo "llama.cpp peer: $LLAMA_CPP_BIN" >&2
phase "llama.cpp peer"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
phase "fmt + clippy (compiles the workspace)"
cargo test --workspace --release --no-run
phase "test build"
cargo test --workspace --release
phase "tests"
