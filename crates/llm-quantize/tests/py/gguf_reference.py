"""`convert model.gguf gptq|compressed-tensors` checked against transformers' own GGUF
loader (transformers.modeling_gguf_pytorch_utils, which dequantizes with gguf-py and
undoes llama.cpp's Q/K permutation itself), a reference nobody in this project wrote.

Argument: a JSON file {"cases": [{"gguf_dir", "gguf_file", "text", "our_ids", "outputs":
[{"dir", "format", "lossless", "mean_relative_rmse", "worst_relative_rmse", "max_kl",
"min_top1"}]}]}. For each output:

(a) its weights, dequantized by the formats' home code (GPTQModel's
    `convert_gptq_file`, compressed-tensors' `PackedQuantizationCompressor.decompress`),
    equal transformers' dequantization of the GGUF name by name: bit for bit when the
    conversion is lossless, else with the relative RMSE the conversion reported;
(b) the folder's config.json builds a transformers model that, with those weights, gives
    logits close to the GGUF-loaded model's on the text (identical up to float noise
    when lossless); the numbers are printed;
(c) its tokenizer.json encodes the text to the ids of transformers' GGUF tokenizer and
    of our own GGUF tokenizer (`our_ids`).
"""
import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "llmq-hfquant/tests/py"))
from _common import fail, import_gptqmodel_model_dequant, load_json, load_model_tensors  # noqa: E402


def dequantize_output(out_dir, fmt):
    """Every weight of a converted folder as f32, by the format's own code."""
    qc = load_json(out_dir / "config.json")["quantization_config"]
    tensors = load_model_tensors(out_dir)
    if fmt == "gptq":
        md = import_gptqmodel_model_dequant()
        deq = md.convert_gptq_file(out_dir / "model.safetensors", torch.float32, qc, "cpu")
        dense = {k: v.float() for k, v in tensors.items() if k in deq}
        deq.update(dense)
        return deq
    from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from transformers import CompressedTensorsConfig

    comp = ModelCompressor.from_compression_config(CompressedTensorsConfig.from_dict(qc))
    scheme = comp.quantization_config.config_groups["group_0"]
    names = PackedQuantizationCompressor.compression_param_names(scheme)
    out, seen = {}, set()
    for k in tensors:
        if k.endswith(".weight_packed"):
            prefix = k[: -len(".weight_packed")]
            sd = {n: tensors[f"{prefix}.{n}"] for n in names}
            sd["weight_scale"] = sd["weight_scale"].float()
            out[prefix + ".weight"] = PackedQuantizationCompressor.decompress(sd, scheme)["weight"]
            seen.update(f"{prefix}.{n}" for n in names)
    for k, v in tensors.items():
        if k not in seen:
            out[k] = v.float()
    return out


def rel_rmse(ref, got):
    ref, got = ref.double(), got.double()
    s = float((ref * ref).sum())
    e = float(((got - ref) ** 2).sum())
    return (e / s) ** 0.5 if s > 0 else (e / max(ref.numel(), 1)) ** 0.5


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def main():
    n = 0
    for spec in load_json(sys.argv[1])["cases"]:
        check_gguf(spec)
        n += len(spec["outputs"])
    print(f"ok: {n} outputs match transformers' GGUF loader", flush=True)


def check_gguf(spec):
    gdir, gfile = spec["gguf_dir"], spec["gguf_file"]
    ref_model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32)
    ref_model.eval()
    ref_sd = {k: v.float() for k, v in ref_model.state_dict().items()}
    ref_tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    text = spec["text"]
    ref_ids = ref_tok(text, add_special_tokens=False)["input_ids"]
    if ref_ids != spec["our_ids"]:
        fail(f"our GGUF tokenizer differs from transformers' ({len(spec['our_ids'])} vs {len(ref_ids)} ids)")
    ids = ref_ids[:96]
    ref_logits = logits_of(ref_model, ids)
    for o in spec["outputs"]:
        out_dir = Path(o["dir"])
        name = out_dir.name
        got = dequantize_output(out_dir, o["format"])
        if sorted(got) != sorted(ref_sd):
            fail(f"{name}: tensor names differ: {sorted(set(got) ^ set(ref_sd))[:8]}")
        worst, acc, n = 0.0, 0.0, 0
        for k, ref in ref_sd.items():
            g = got[k]
            if g.shape != ref.shape:
                fail(f"{name}/{k}: shape {tuple(g.shape)} != {tuple(ref.shape)}")
            if o["lossless"]:
                if not torch.equal(g.view(torch.int32), ref.view(torch.int32)):
                    fail(f"{name}/{k}: not bit-identical to transformers' dequantization")
                continue
            r = rel_rmse(ref, g)
            worst = max(worst, r)
            acc += r * ref.numel()
            n += ref.numel()
        if not o["lossless"]:
            mean = acc / n
            want_mean, want_worst = o["mean_relative_rmse"], o["worst_relative_rmse"]
            if abs(mean - want_mean) > 1e-6 * max(want_mean, 1e-12) + 1e-9:
                fail(f"{name}: relative RMSE {mean} vs reported {want_mean}")
            if abs(worst - want_worst) > 1e-6 * want_worst + 1e-9:
                fail(f"{name}: worst relative RMSE {worst} vs reported {want_worst}")
        # (b) the folder's own config with the dequantized weights
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_json(out_dir / "config.json")
            cfg.pop("quantization_config")
            Path(tmp, "config.json").write_text(json.dumps(cfg))
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp), dtype=torch.float32)
        missing, unexpected = model.load_state_dict(got, strict=False)
        if missing or unexpected:
            fail(f"{name}: missing {missing[:5]} unexpected {unexpected[:5]}")
        model.eval()
        lg = logits_of(model, ids)
        max_abs = float((lg - ref_logits).abs().max())
        p_ref = torch.log_softmax(ref_logits, -1)
        p_got = torch.log_softmax(lg, -1)
        kl = float((p_ref.exp() * (p_ref - p_got)).sum(-1).mean())
        top1 = float((lg.argmax(-1) == ref_logits.argmax(-1)).double().mean())
        print(json.dumps({"output": name, "lossless": o["lossless"], "weights_rel_rmse": acc / n if n else 0.0,
                          "logits_max_abs_diff": max_abs, "kl": kl, "top1_agreement": top1}), flush=True)
        if o["lossless"] and max_abs > 1e-4:
            fail(f"{name}: logits differ by {max_abs} with bit-identical weights")
        if not o["lossless"] and (kl > o["max_kl"] or top1 < o["min_top1"]):
            fail(f"{name}: KL {kl} (max {o['max_kl']}), top-1 agreement {top1} (min {o['min_top1']})")
        # (c) tokenizer
        tok = AutoTokenizer.from_pretrained(str(out_dir))
        if tok(text, add_special_tokens=False)["input_ids"] != ref_ids:
            fail(f"{name}: tokenizer.json encodes differently from the GGUF tokenizer")
        if tok.bos_token != ref_tok.bos_token or tok.eos_token != ref_tok.eos_token:
            fail(f"{name}: bos/eos {tok.bos_token}/{tok.eos_token} vs {ref_tok.bos_token}/{ref_tok.eos_token}")


if __name__ == "__main__":
    main()
