"""Cross-check of llmq-hfquant's GPTQ output against GPTQModel 7.7.0's own checkpoint
dequantizer, gptqmodel/utils/model_dequant.py `convert_gptq_file` (reads qweight /
qzeros / scales / g_idx with safe_open, applies the v1 `zero - 1` correction when
`checkpoint_format` is "gptq", unpacks 2/3/4/8-bit words incl. the 3-bit word-straddling
layout, and computes `(q - zeros[g_idx]) * scales[g_idx]` in f32).

Also checks the config (GPTQModel's / vLLM's keys) and quantize_config.json.
"""
import sys

import torch

from _common import (
    assert_equal,
    cases,
    fail,
    import_gptqmodel_model_dequant,
    load_expected,
    load_json,
)


def main():
    md = import_gptqmodel_model_dequant()
    total = 0
    for case_dir in cases(sys.argv[1]):
        case = load_json(case_dir / "case.json")
        qc = load_json(case_dir / "config.json")["quantization_config"]
        qc2 = load_json(case_dir / "quantize_config.json")
        for k, v in qc.items():
            if qc2.get(k) != v:
                fail(f"{case_dir.name}: quantize_config.json[{k}] = {qc2.get(k)} != {v}")
        want_cfg = {
            "quant_method": "gptq",
            "bits": case["bits"],
            "group_size": case["group_size"] or -1,
            "desc_act": case["act_order"],
            "sym": case["symmetric"],
            "checkpoint_format": case["format"],
        }
        for k, v in want_cfg.items():
            if qc.get(k) != v:
                fail(f"{case_dir.name}: quantization_config[{k}] = {qc.get(k)} != {v}")
        if md._uses_gptq_v1_qzeros(qc) != (case["format"] == "gptq"):
            fail(f"{case_dir.name}: GPTQModel disagrees about v1/v2")

        got = md.convert_gptq_file(case_dir / "model.safetensors", torch.float32, qc, "cpu")
        expected = load_expected(case_dir)
        for prefix, want in expected.items():
            assert_equal(f"{case_dir.name}/{prefix}", got[prefix + ".weight"], want)
            total += 1
    print(f"ok: {total} layers match GPTQModel convert_gptq_file")


if __name__ == "__main__":
    main()
