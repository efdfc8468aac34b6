"""GPT-OSS quantized to GPTQ / AWQ / compressed-tensors (tests/gpt_oss_calibrated.rs),
checked with the packages' own readers and against the fused original:

1. every quantized module dequantizes, through GPTQModel 7.7.0's `convert_gptq_file`,
   AutoAWQ 0.2.9's `dequantize_gemm` or compressed-tensors' `PackedQuantizationCompressor`
   (its config parsed the way transformers does), to exactly our dequantized weight
   (`expected.safetensors`, written by the Rust test from our readers);
2. the modules are exactly q/k/v/o and `mlp.experts.E.{gate,up,down}_proj` per layer
   (llm-compressor's per-expert layout, the names vLLM's fused-MoE mapping loads), the
   router is stored unquantized and equal to the original, no fused expert tensor is left;
3. the layout, from the original checkpoint alone (not our code): expert E's
   `gate_proj` is close to `gate_up_proj[E][:, 0::2]ᵀ`, `up_proj` to `[:, 1::2]ᵀ`,
   `down_proj` to `down_proj[E]ᵀ` (relative error within 0.4, what a 4-bit grid leaves; a wrong split or
   orientation gives about 1.4), and the biases are the fused biases' slices, bit for bit.

Arguments: a folder of cases (case.json {"format": ...}, the output's config.json and
model.safetensors, expected.safetensors) and the original (fused, bf16) model folder.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "llmq-hfquant" / "tests" / "py"))
from _common import (  # noqa: E402
    assert_equal,
    cases,
    fail,
    import_autoawq_packing_utils,
    import_gptqmodel_model_dequant,
    load_expected,
    load_json,
    load_model_tensors,
)

MAX_REL = 0.4


def dequantize(fmt, case_dir, qc, tensors, prefixes):
    if fmt == "gptq":
        md = import_gptqmodel_model_dequant()
        got = md.convert_gptq_file(case_dir / "model.safetensors", torch.float32, qc, "cpu")
        return {p: got[p + ".weight"] for p in prefixes}
    if fmt == "awq":
        pu = import_autoawq_packing_utils()
        return {
            p: pu.dequantize_gemm(
                tensors[p + ".qweight"],
                tensors[p + ".qzeros"],
                tensors[p + ".scales"].float(),
                qc["bits"],
                qc["group_size"],
            )
            .t()
            .contiguous()
            for p in prefixes
        }
    if fmt == "compressed-tensors":
        from compressed_tensors.compressors.model_compressors.model_compressor import (
            ModelCompressor,
        )
        from compressed_tensors.compressors.pack_quantized.base import (
            PackedQuantizationCompressor,
        )
        from transformers import CompressedTensorsConfig

        mc = ModelCompressor.from_compression_config(CompressedTensorsConfig.from_dict(qc))
        scheme = mc.quantization_config.config_groups["group_0"]
        names = PackedQuantizationCompressor.compression_param_names(scheme)
        out = {}
        for p in prefixes:
            sd = {k: tensors[f"{p}.{k}"] for k in names}
            sd["weight_scale"] = sd["weight_scale"].float()
            out[p] = PackedQuantizationCompressor.decompress(sd, scheme)["weight"]
        return out
    fail(f"unknown format {fmt}")


def main(root, original):
    orig = load_model_tensors(original)
    cfg = load_json(Path(original) / "config.json")
    n_layers, n_experts = cfg["num_hidden_layers"], cfg["num_local_experts"]
    total, worst = 0, 0.0
    for case_dir in cases(root):
        fmt = load_json(case_dir / "case.json")["format"]
        qc = load_json(case_dir / "config.json")["quantization_config"]
        tensors = load_model_tensors(case_dir)
        want = load_expected(case_dir)

        modules = set()
        for l in range(n_layers):
            modules |= {f"model.layers.{l}.self_attn.{p}_proj" for p in "qkvo"}
            modules |= {
                f"model.layers.{l}.mlp.experts.{e}.{p}"
                for e in range(n_experts)
                for p in ("gate_proj", "up_proj", "down_proj")
            }
        if set(want) != modules:
            fail(f"{fmt}: quantized modules {sorted(set(want) ^ modules)[:6]} differ from the layout")
        left = [k for k in tensors if ".mlp.experts." in k and k.split(".mlp.experts.")[1][0].isalpha()]
        if left:
            fail(f"{fmt}: fused expert tensors left: {left[:4]}")
        for l in range(n_layers):
            for k in ("weight", "bias"):
                name = f"model.layers.{l}.mlp.router.{k}"
                assert_equal(f"{fmt} {name}", tensors[name], orig[name])

        got = dequantize(fmt, case_dir, qc, tensors, sorted(modules))
        for p in sorted(modules):
            assert_equal(f"{fmt} {p}", got[p].float(), want[p])
            total += 1

        for l in range(n_layers):
            base = f"model.layers.{l}.mlp.experts"
            gu, gub = orig[f"{base}.gate_up_proj"].float(), orig[f"{base}.gate_up_proj_bias"]
            dn, dnb = orig[f"{base}.down_proj"].float(), orig[f"{base}.down_proj_bias"]
            for e in range(n_experts):
                ref = {
                    "gate_proj": (gu[e][:, 0::2].t(), gub[e][0::2]),
                    "up_proj": (gu[e][:, 1::2].t(), gub[e][1::2]),
                    "down_proj": (dn[e].t(), dnb[e]),
                }
                for proj, (w, b) in ref.items():
                    p = f"{base}.{e}.{proj}"
                    if got[p].shape != w.shape:
                        fail(f"{fmt} {p}: shape {tuple(got[p].shape)} != {tuple(w.shape)}")
                    rel = float((got[p].float() - w).norm() / w.norm())
                    worst = max(worst, rel)
                    if rel > MAX_REL:
                        fail(f"{fmt} {p}: relative error {rel:.3f} against the original")
                    assert_equal(f"{fmt} {p}.bias", tensors[p + ".bias"], b.contiguous())
    print(
        f"ok: {total} modules read by the packages equal ours; "
        f"worst relative error against the fused original {worst:.3f}"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
