"""Decompress our compressed-tensors FP checkpoints (nvfp4-pack-quantized,
mxfp4-pack-quantized, float-quantized) with the compressed-tensors package's own
compressors and require exactly our dequantized weights (tests/ct_fp_crosscheck.rs).

Argument: a folder of cases; each holds model.safetensors, config.json (with
`quantization_config`), case.json {"prefixes": [...]} and expected.safetensors (our
FpQuantized::dequantize() per prefix, f32).
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import assert_equal, cases, fail, load_expected, load_json  # noqa: E402

from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402


def main(root):
    n = 0
    for case in cases(root):
        qc = QuantizationConfig.model_validate(load_json(case / "config.json")["quantization_config"])
        scheme = qc.config_groups["group_0"]
        compressor = BaseCompressor.load_from_registry(qc.format)
        tensors = load_file(str(case / "model.safetensors"))
        want = load_expected(case)
        for prefix in load_json(case / "case.json")["prefixes"]:
            local = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            if not local:
                fail(f"{case.name}: no tensors under {prefix}")
            got = compressor.decompress(local, scheme)["weight"]
            w = want[prefix]
            # the FP4 decompressors return bf16 (unpack_fp4_from_uint8's default); FP8 the scale's dtype
            if got.dtype not in (torch.bfloat16, torch.float32):
                fail(f"{case.name} {prefix}: dtype {got.dtype}")
            assert_equal(f"{case.name} {prefix} ({qc.format})", got.to(torch.float32), w)
            n += 1
    print(f"{n} modules decompressed by compressed-tensors equal ours")


if __name__ == "__main__":
    main(sys.argv[1])
