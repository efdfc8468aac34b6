"""Shared helpers for the cross-check scripts run by tests/python_crosscheck.rs.

Each script gets a folder of cases written by the Rust test; a case folder holds a
checkpoint written by llmq-hfquant (model*.safetensors + config.json), case.json
describing it and expected.safetensors: for every quantized module `prefix`, the
f32 weight [out, in] that our IntQuantized::dequantize() computes.
"""
import importlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path


def cases(root):
    root = Path(root)
    out = sorted(p for p in root.iterdir() if (p / "case.json").exists())
    if not out:
        fail(f"no cases under {root}")
    return out


def load_json(path):
    with open(path) as f:
        return json.load(f)


def load_expected(case_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(case_dir) / "expected.safetensors"))


def load_model_tensors(case_dir):
    """All tensors of the model folder (single file or sharded with index)."""
    from safetensors.torch import load_file

    case_dir = Path(case_dir)
    index = case_dir / "model.safetensors.index.json"
    files = (
        sorted(set(load_json(index)["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    tensors = {}
    for f in files:
        tensors.update(load_file(str(case_dir / f)))
    return tensors


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def assert_equal(name, got, want):
    import torch

    if got.shape != want.shape:
        fail(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    if got.dtype != want.dtype:
        fail(f"{name}: dtype {got.dtype} != {want.dtype}")
    if not torch.equal(got, want):
        diff = (got.float() - want.float()).abs()
        idx = int(diff.argmax())
        fail(
            f"{name}: {int((diff != 0).sum())} of {diff.numel()} values differ, "
            f"max |diff| {float(diff.max())} at flat index {idx}: "
            f"got {float(got.flatten()[idx])} want {float(want.flatten()[idx])}"
        )


def src_root():
    """Where scripts/install-py-test-deps.sh unpacked the AutoAWQ / GPTQModel sources."""
    s = os.environ.get("LLMQ_HFQUANT_PYSRC")
    if not s:
        fail("LLMQ_HFQUANT_PYSRC not set")
    return Path(s)


def import_autoawq_packing_utils():
    """AutoAWQ's awq/utils/packing_utils.py, loaded as a file (it imports only torch;
    the awq package itself needs CUDA kernels)."""
    path = next(src_root().glob("autoawq-*/awq/utils/packing_utils.py"))
    spec = importlib.util.spec_from_file_location("autoawq_packing_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Quiet:
    def __getattr__(self, k):
        return _Quiet()

    def __call__(self, *a, **k):
        return _Quiet()


def import_gptqmodel_model_dequant():
    """GPTQModel's gptqmodel/utils/model_dequant.py (its checkpoint dequantizer),
    imported without running gptqmodel/__init__.py (which needs CUDA extensions):
    the parent packages are bare namespace modules and the logger is silenced."""
    root = next(src_root().glob("gptqmodel-*")) / "gptqmodel"
    for name, sub in [
        ("gptqmodel", root),
        ("gptqmodel.utils", root / "utils"),
        ("gptqmodel.quantization", root / "quantization"),
    ]:
        m = types.ModuleType(name)
        m.__path__ = [str(sub)]
        sys.modules[name] = m
    logger = types.ModuleType("gptqmodel.utils.logger")
    logger.setup_logger = lambda *a, **k: _Quiet()
    sys.modules["gptqmodel.utils.logger"] = logger
    py = importlib.import_module("gptqmodel.utils.python")
    for k in (
        "gte_python_3_13_3",
        "gte_python_3_14",
        "has_gil_control",
        "has_gil_disabled",
        "log_gil_requirements_for",
    ):
        setattr(sys.modules["gptqmodel.utils"], k, getattr(py, k))
    return importlib.import_module("gptqmodel.utils.model_dequant")
