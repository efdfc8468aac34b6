#!/usr/bin/env bash
# Installs, once per machine, the Python packages that crates/llmq-hfquant's
# cross-check tests run our GPTQ / AWQ / compressed-tensors checkpoints
# through, and prints the path of the Python interpreter that has them:
#
#   export LLMQ_HFQUANT_PYTHON="$(bash scripts/install-py-test-deps.sh)"
#   cargo test --release -p llmq-hfquant
#
# What it installs, in a virtual environment under $LLM_QUANTIZE_PY_TEST_DIR
# (default ~/.cache/llm-quantize/py-test-deps):
#   - torch (only PyPI is reachable here, so the default Linux wheel with its
#     CUDA runtime packages, about 3 GB; it runs on the CPU without a GPU.
#     A CPU-only index is tried first where one is configured via
#     LLMQ_TORCH_CPU_INDEX.)
#   - compressed-tensors (+ transformers, pydantic, ...) as published on PyPI
#   - safetensors, numpy, threadpoolctl (imported by the GPTQModel files run)
#   - gguf and accelerate: transformers' own GGUF loader, the reference of the
#     `convert model.gguf ...` test (crates/llm-quantize/tests/convert_gguf.rs)
#   - nvidia-cuda-nvrtc: NVIDIA's runtime compiler library, with which the CUDA
#     backend's test compiles every kernel on a machine without a GPU
#   - the sources (not installed: they need CUDA to build) of AutoAWQ and
#     GPTQModel, unpacked under src/: the tests execute their CPU/torch unpack
#     functions straight from those files.
# A second call with the same pinned versions returns at once.
set -euo pipefail

TORCH_VERSION="${LLMQ_TORCH_VERSION:-2.15.0}"
CT_VERSION="0.20.0"
SAFETENSORS_VERSION="0.8.0"
NUMPY_VERSION="2.4.6"
THREADPOOLCTL_VERSION="3.6.0"
NVRTC_VERSION="13.2.86"
AUTOAWQ_VERSION="0.2.9"
GPTQMODEL_VERSION="7.7.0"
GGUF_VERSION="0.19.0"
ACCELERATE_VERSION="1.15.0"

ROOT="${LLM_QUANTIZE_PY_TEST_DIR:-$HOME/.cache/llm-quantize/py-test-deps}"
VENV="$ROOT/venv"
PY="$VENV/bin/python"
STAMP="$ROOT/installed-$TORCH_VERSION-$THREADPOOLCTL_VERSION-$CT_VERSION-$SAFETENSORS_VERSION-$NUMPY_VERSION-$AUTOAWQ_VERSION-$GPTQMODEL_VERSION-$GGUF_VERSION-$ACCELERATE_VERSION-nvrtc$NVRTC_VERSION"

if [ -f "$STAMP" ] && [ -x "$PY" ] \
  && [ -f "$ROOT/src/autoawq-$AUTOAWQ_VERSION/awq/utils/packing_utils.py" ] \
  && [ -f "$ROOT/src/gptqmodel-$GPTQMODEL_VERSION/gptqmodel/nn_modules/qlinear/__init__.py" ]; then
  echo "$PY"
  exit 0
fi

mkdir -p "$ROOT"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV" >&2
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# torch: a CPU-only build where an index for it is reachable, else PyPI's wheel.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  installed=0
  if [ -n "${LLMQ_TORCH_CPU_INDEX:-}" ]; then
    if "${PIP[@]}" install -q --timeout 30 --retries 1 "torch==$TORCH_VERSION" \
      --index-url "$LLMQ_TORCH_CPU_INDEX" >&2; then
      installed=1
    fi
  fi
  if [ "$installed" = 0 ]; then
    "${PIP[@]}" install -q "torch==$TORCH_VERSION" >&2
  fi
fi

"${PIP[@]}" install -q "compressed-tensors==$CT_VERSION" "safetensors==$SAFETENSORS_VERSION" \
  "numpy==$NUMPY_VERSION" "threadpoolctl==3.6.0" "gguf==$GGUF_VERSION" \
  "accelerate==$ACCELERATE_VERSION" "nvidia-cuda-nvrtc==$NVRTC_VERSION" >&2

# Reference sources executed by the tests (their packages need CUDA to build).
mkdir -p "$ROOT/src"
work="$(mktemp -d "$ROOT/dl.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"${PIP[@]}" download -q --no-deps --no-binary :all: "autoawq==$AUTOAWQ_VERSION" \
  "gptqmodel==$GPTQMODEL_VERSION" -d "$work" >&2
rm -rf "$ROOT/src/autoawq-$AUTOAWQ_VERSION" "$ROOT/src/gptqmodel-$GPTQMODEL_VERSION"
tar xzf "$work/autoawq-$AUTOAWQ_VERSION.tar.gz" -C "$ROOT/src"
tar xzf "$work/gptqmodel-$GPTQMODEL_VERSION.tar.gz" -C "$ROOT/src"

"$PY" -c "import torch, compressed_tensors, safetensors, numpy, gguf, accelerate; torch.zeros(1)" >&2
rm -f "$ROOT"/installed-*
touch "$STAMP"
echo "$PY"
