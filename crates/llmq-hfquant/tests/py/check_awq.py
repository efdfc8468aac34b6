"""Cross-check of llmq-hfquant's AWQ GEMM output against AutoAWQ 0.2.9's own code,
awq/utils/packing_utils.py `dequantize_gemm` (unpack_awq -> reverse_awq_order with
AWQ_REVERSE_ORDER -> `(iweight - izeros) * scales` with `repeat_interleave(group_size)`)
executed from the AutoAWQ source, and of the config keys transformers' AwqConfig reads.
"""
import sys

from _common import (
    assert_equal,
    cases,
    fail,
    import_autoawq_packing_utils,
    load_expected,
    load_json,
    load_model_tensors,
)


def main():
    pu = import_autoawq_packing_utils()
    total = 0
    for case_dir in cases(sys.argv[1]):
        case = load_json(case_dir / "case.json")
        qc = load_json(case_dir / "config.json")["quantization_config"]
        want_cfg = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": case["group_size"],
            "zero_point": True,
            "version": "gemm",
        }
        for k, v in want_cfg.items():
            if qc.get(k) != v:
                fail(f"{case_dir.name}: quantization_config[{k}] = {qc.get(k)} != {v}")
        tensors = load_model_tensors(case_dir)
        for prefix, want in load_expected(case_dir).items():
            qweight = tensors[prefix + ".qweight"]
            qzeros = tensors[prefix + ".qzeros"]
            scales = tensors[prefix + ".scales"]
            gs = qc["group_size"]
            # f32 scales: exact; stored f16 scales: f16 arithmetic as in AutoAWQ
            got = pu.dequantize_gemm(qweight, qzeros, scales.float(), 4, gs)
            assert_equal(f"{case_dir.name}/{prefix} f32", got.t().contiguous(), want)
            got16 = pu.dequantize_gemm(qweight, qzeros, scales, 4, gs)
            assert_equal(f"{case_dir.name}/{prefix} f16", got16.t().contiguous(), want.half())
            total += 1
    print(f"ok: {total} layers match AutoAWQ dequantize_gemm")


if __name__ == "__main__":
    main()
