"""Cross-check of per-module bit widths (`quantize M gptq|compressed-tensors
--target-bpw X`) against the packages that read them:

- compressed-tensors (0.20.0): config.json's quantization_config parsed the way
  transformers does it (CompressedTensorsConfig.from_dict ->
  ModelCompressor.from_compression_config); each module's config group found with the
  package's own target matcher (compressed_tensors.utils.match.match_name), exactly
  one group per module, of the width case.json states; PackedQuantizationCompressor
  .decompress with that group's scheme gives exactly our dequantized weight (f32
  scale), and with the stored f16 scale our weight rounded to f16.
- GPTQ: each module's width from GPTQModel 7.7.0's own `dynamic` resolution
  (gptqmodel/quantization/config.py `dynamic_get`, imported from the unpacked sources;
  its `pcre` import is served by Python's `re`, which reads these `^name$` patterns
  the same way), equal to case.json's; GPTQModel's checkpoint dequantizer
  (`convert_gptq_file`, one width per call, the other widths' modules passed as
  ignored layers) gives exactly our dequantized weight.

A case: config.json, model.safetensors, expected.safetensors (our reader's values per
module prefix) and case.json {"format": "gptq" | "compressed-tensors",
"bits": {prefix: width}}.
"""
import importlib
import re
import sys

import torch

from _common import (
    assert_equal,
    cases,
    fail,
    import_gptqmodel_model_dequant,
    load_expected,
    load_json,
    load_model_tensors,
)


def check_ct(case_dir, case, qc):
    from compressed_tensors.compressors.model_compressors.model_compressor import (
        ModelCompressor,
    )
    from compressed_tensors.compressors.pack_quantized.base import (
        PackedQuantizationCompressor,
    )
    from compressed_tensors.utils.match import match_name
    from transformers import CompressedTensorsConfig

    compressor = ModelCompressor.from_compression_config(CompressedTensorsConfig.from_dict(qc))
    groups = compressor.quantization_config.config_groups
    if len(groups) < 2:
        fail(f"{case_dir.name}: {len(groups)} config group(s), expected several widths")
    tensors = load_model_tensors(case_dir)
    expected = load_expected(case_dir)
    if set(expected) != set(case["bits"]):
        fail(f"{case_dir.name}: expected modules differ from case.json's")
    n = 0
    for prefix, want in expected.items():
        hits = [
            (gname, s)
            for gname, s in groups.items()
            if any(match_name(prefix, t) for t in s.targets)
        ]
        if len(hits) != 1:
            fail(f"{case_dir.name}/{prefix}: matched by {[h[0] for h in hits]}")
        scheme = hits[0][1]
        if scheme.weights.num_bits != case["bits"][prefix]:
            fail(
                f"{case_dir.name}/{prefix}: the package reads {scheme.weights.num_bits} bits, "
                f"we wrote {case['bits'][prefix]}"
            )
        names = PackedQuantizationCompressor.compression_param_names(scheme)
        sd = {k: tensors[f"{prefix}.{k}"] for k in names if f"{prefix}.{k}" in tensors}
        sd32 = dict(sd, weight_scale=sd["weight_scale"].float())
        got = PackedQuantizationCompressor.decompress(sd32, scheme)["weight"]
        assert_equal(f"{case_dir.name}/{prefix} f32", got, want)
        got16 = PackedQuantizationCompressor.decompress(dict(sd), scheme)["weight"]
        assert_equal(f"{case_dir.name}/{prefix} f16", got16, want.half())
        n += 1
    return n


def check_gptq(case_dir, case, qc):
    sys.modules.setdefault("pcre", re)
    md = import_gptqmodel_model_dequant()
    cfg = importlib.import_module("gptqmodel.quantization.config")
    dynamic = qc.get("dynamic")
    if not dynamic:
        fail(f"{case_dir.name}: no dynamic overrides")
    expected = load_expected(case_dir)
    if set(expected) != set(case["bits"]):
        fail(f"{case_dir.name}: expected modules differ from case.json's")
    width = {}
    for prefix in expected:
        b = cfg.dynamic_get(dynamic, prefix, "bits", qc["bits"])
        if b != case["bits"][prefix]:
            fail(f"{case_dir.name}/{prefix}: GPTQModel reads {b} bits, we wrote {case['bits'][prefix]}")
        width[prefix] = b
    if len(set(width.values())) < 2:
        fail(f"{case_dir.name}: one width only")
    n = 0
    for b in sorted(set(width.values())):
        others = [p for p, w in width.items() if w != b]
        got = md.convert_gptq_file(
            case_dir / "model.safetensors",
            torch.float32,
            dict(qc, bits=b),
            "cpu",
            ignored_layers=others,
        )
        for prefix, w in width.items():
            if w == b:
                assert_equal(f"{case_dir.name}/{prefix}", got[prefix + ".weight"], expected[prefix])
                n += 1
    return n


def main():
    total = 0
    for case_dir in cases(sys.argv[1]):
        case = load_json(case_dir / "case.json")
        qc = load_json(case_dir / "config.json")["quantization_config"]
        if case["format"] == "gptq":
            total += check_gptq(case_dir, case, qc)
        else:
            total += check_ct(case_dir, case, qc)
    print(f"ok: {total} modules")


if __name__ == "__main__":
    main()
