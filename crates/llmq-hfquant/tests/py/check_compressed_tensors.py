"""Cross-check of llmq-hfquant's compressed-tensors pack-quantized output against the
`compressed-tensors` package itself (0.20.0):

1. config.json's quantization_config is parsed the way transformers does it
   (CompressedTensorsConfig.from_dict -> ModelCompressor.from_compression_config)
   and must equal, key for key (bar "version"), the config the package builds for
   the same preset / args (QuantizationConfig + ModelCompressor.update_config keys);
2. PackedQuantizationCompressor.decompress of every layer must give exactly our
   dequantized weight: in f32 (scale given as f32) and, with the stored f16 scale,
   our weight rounded to f16;
3. PackedQuantizationCompressor.compress of that weight with our scale and zero point
   must reproduce our weight_packed / weight_zero_point bit for bit.
"""
import sys

import torch
from compressed_tensors.base import (
    COMPRESSION_VERSION_NAME,
    QUANTIZATION_METHOD,
    QUANTIZATION_METHOD_NAME,
    SPARSITY_CONFIG_NAME,
    TRANSFORM_CONFIG_NAME,
)
from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    preset_name_to_scheme,
)
from transformers import CompressedTensorsConfig

from _common import assert_equal, cases, fail, load_expected, load_json, load_model_tensors


def reference_config(case):
    if case["preset"]:
        scheme = preset_name_to_scheme(case["preset"], ["Linear"])
    else:
        gs = case["group_size"]
        scheme = QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(
                num_bits=case["bits"],
                type="int",
                symmetric=case["symmetric"],
                strategy="group" if gs else "channel",
                group_size=gs,
                dynamic=False,
            ),
        )
    # what infer_model_format() sets on each scheme before saving
    scheme.format = "pack-quantized"
    qc = QuantizationConfig(
        config_groups={"group_0": scheme},
        format="pack-quantized",
        quantization_status="compressed",
        ignore=["lm_head"],
    )
    # ModelCompressor.update_config
    return {
        COMPRESSION_VERSION_NAME: None,
        QUANTIZATION_METHOD_NAME: QUANTIZATION_METHOD,
        SPARSITY_CONFIG_NAME: {},
        TRANSFORM_CONFIG_NAME: {},
        **qc.model_dump(exclude=["quant_method"]),
    }


def check_case(case_dir):
    case = load_json(case_dir / "case.json")
    qc = load_json(case_dir / "config.json")["quantization_config"]
    ref = reference_config(case)
    ours = dict(qc)
    ours[COMPRESSION_VERSION_NAME] = None
    if ours != ref:
        fail(f"{case_dir.name}: quantization_config differs\n ours {ours}\n  ref {ref}")

    compressor = ModelCompressor.from_compression_config(CompressedTensorsConfig.from_dict(qc))
    q_config = compressor.quantization_config
    if q_config.format != "pack-quantized":
        fail(f"{case_dir.name}: parsed format {q_config.format}")
    scheme = q_config.config_groups["group_0"]

    tensors = load_model_tensors(case_dir)
    expected = load_expected(case_dir)
    n = 0
    for prefix, want in expected.items():
        names = PackedQuantizationCompressor.compression_param_names(scheme)
        sd = {k: tensors[f"{prefix}.{k}"] for k in names}
        for k in tensors:
            if k.startswith(prefix + ".") and k[len(prefix) + 1 :] not in names:
                fail(f"{case_dir.name}: unexpected tensor {k}")
        if sd["weight_shape"].dtype != torch.int64:
            fail(f"weight_shape dtype {sd['weight_shape'].dtype}")

        # 1) exact f32 dequantization
        sd32 = dict(sd, weight_scale=sd["weight_scale"].float())
        got = PackedQuantizationCompressor.decompress(sd32, scheme)["weight"]
        assert_equal(f"{case_dir.name}/{prefix} f32", got, want)
        # 2) as stored (f16 scale -> f16 weight)
        got16 = PackedQuantizationCompressor.decompress(dict(sd), scheme)["weight"]
        assert_equal(f"{case_dir.name}/{prefix} f16", got16, want.half())

        # 3) the package packs our weight into our bits
        csd = {"weight": want, "weight_scale": sd["weight_scale"].float()}
        if not case["symmetric"]:
            ng = sd["weight_scale"].shape[1]
            zp = unpack_from_int32(
                sd["weight_zero_point"], case["bits"], (want.shape[0], ng), packed_dim=0
            )
            csd["weight_zero_point"] = zp
        packed = PackedQuantizationCompressor.compress(csd, scheme)
        assert_equal(f"{case_dir.name}/{prefix} weight_packed", packed["weight_packed"], sd["weight_packed"])
        if not case["symmetric"]:
            assert_equal(
                f"{case_dir.name}/{prefix} weight_zero_point",
                packed["weight_zero_point"],
                sd["weight_zero_point"],
            )
        elif "weight_zero_point" in packed:
            fail("package kept a zero point for a symmetric scheme")
        assert_equal(f"{case_dir.name}/{prefix} weight_shape", packed["weight_shape"], sd["weight_shape"])
        n += 1
    return n


def main():
    total = 0
    for c in cases(sys.argv[1]):
        total += check_case(c)
    print(f"ok: {total} layers match compressed-tensors")


if __name__ == "__main__":
    main()
