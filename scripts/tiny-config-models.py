#!/usr/bin/env python3
"""Tiny random-initialised models whose configs exercise switches the shared models do not
(RoPE scaling variants, MoE routing switches), built by transformers itself, with golden
next-token log-probs computed by transformers in float32.

    python scripts/tiny-config-models.py OUT_DIR [--shared ../shared]

Writes OUT_DIR/<name>/ for every model of MODELS: config.json, model.safetensors
(bfloat16, as the shared models), the tokenizer of a shared model, and golden.json:

    input_ids            [[int]]   2 sequences of SEQ_LEN tokens of the test split
    next_token_logprob   [[float]] log p(input_ids[b][t+1] | ..t), t < SEQ_LEN - 1
    argmax, argmax_margin          per position: top-1 id, top-1 minus top-2 logit
    unscaled_max_dlogprob float    max |Δ next_token_logprob| when the config's switch
                                   is removed (how much the switch matters here)
    gguf (optional)                the three per-position arrays again for the model as
                                   its GGUF states it, where GGUF cannot carry the config
                                   (YaRN with truncate=false: llama.cpp truncates)

Protocol as ../shared/models/README.md: the saved bfloat16 weights loaded back with
`dtype=float32`, eager attention, CPU. Weights are drawn with a wide initializer so the predictions are
far from uniform and positional detail shows in the log-probs. Every dimension is a
multiple of 256 so that GGUF k-quants apply.
"""

import argparse
import copy
import json
import os
import shutil

import torch
import transformers

SEQ_LEN = 192
N_SEQ = 2
SEED = 1234

COMMON = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    initializer_range=0.08,
    bos_token_id=0,
    eos_token_id=0,
    tie_word_embeddings=False,
)

# name -> (config class, model class, shared tokenizer folder, config overrides,
#          the key of the overrides whose removal the golden's sensitivity measures)
MODELS = {
    "llama3-rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        "llama",
        dict(
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=128,
            tie_word_embeddings=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
        "rope_parameters",
    ),
    "linear-rope": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        "qwen3",
        dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0)),
        "rope_parameters",
    ),
    "yarn-rope": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        "qwen2",
        dict(
            max_position_embeddings=256,
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
        "rope_parameters",
    ),
    "deepseek-yarn": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        "deepseek-v3",
        dict(
            max_position_embeddings=256,
            head_dim=64,
            num_key_value_heads=4,
            q_lora_rank=256,
            kv_lora_rank=256,
            qk_nope_head_dim=64,
            qk_rope_head_dim=64,
            v_head_dim=64,
            n_routed_experts=8,
            n_shared_experts=1,
            num_experts_per_tok=2,
            moe_intermediate_size=256,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            rope_interleave=True,
            # DeepSeek's YaRN: cos/sin times mscale(f, mscale) / mscale(f, mscale_all_dim),
            # the softmax scale times mscale(f, mscale_all_dim)^2
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                original_max_position_embeddings=64,
                beta_fast=32.0,
                beta_slow=1.0,
                mscale=1.0,
                mscale_all_dim=0.707,
            ),
        ),
        "rope_parameters",
    ),
    "phi3-longrope": (
        "Phi3Config",
        "Phi3ForCausalLM",
        "phi3",
        dict(
            pad_token_id=None,
            # Phi3Config copies the top-level value over the one in rope_parameters
            original_max_position_embeddings=256,
            rope_parameters=dict(
                rope_type="longrope",
                rope_theta=10000.0,
                original_max_position_embeddings=256,
                short_factor=[1.0 + 0.1 * i for i in range(32)],
                long_factor=[1.0 + 0.5 * i for i in range(32)],
            ),
        ),
        "rope_parameters",
    ),
    # LongRoPE past its original length: the whole sequence takes the long factors
    "phi3-longrope-long": (
        "Phi3Config",
        "Phi3ForCausalLM",
        "phi3",
        dict(
            pad_token_id=None,
            original_max_position_embeddings=64,
            rope_parameters=dict(
                rope_type="longrope",
                rope_theta=10000.0,
                original_max_position_embeddings=64,
                short_factor=[1.0 + 0.1 * i for i in range(32)],
                long_factor=[1.0 + 0.5 * i for i in range(32)],
            ),
        ),
        "rope_parameters",
    ),
    # dynamic NTK past max_position_embeddings: the base grows with the sequence
    "dynamic-ntk": (
        "LlamaConfig",
        "LlamaForCausalLM",
        "llama",
        dict(
            max_position_embeddings=64,
            rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0),
        ),
        "rope_parameters",
    ),
    # Gemma 3's released configs: linear scaling on the full-attention layers only
    "gemma3-linear": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        "gemma3",
        dict(
            layer_types=["sliding_attention", "full_attention"],
            sliding_window=32,
            query_pre_attn_scalar=64,
            rope_parameters=dict(
                full_attention=dict(rope_type="linear", factor=8.0, rope_theta=1000000.0),
                sliding_attention=dict(rope_type="default", rope_theta=10000.0),
            ),
        ),
        "rope_parameters",
    ),
    # GPT-OSS: attention sinks, q/k/v/o biases, alternating sliding/full layers, YaRN
    # without truncation, a biased router, fused interleaved experts with biases, the
    # clamped SwiGLU
    "gpt-oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        "qwen3",
        dict(
            num_local_experts=8,
            num_experts_per_tok=2,
            intermediate_size=512,
            sliding_window=32,
            layer_types=["sliding_attention", "full_attention"],
            attention_bias=True,
            max_position_embeddings=256,
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                beta_fast=32.0,
                beta_slow=1.0,
                truncate=False,
                original_max_position_embeddings=64,
            ),
        ),
        "rope_parameters",
    ),
    "qwen3-moe-nonorm": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        "qwen3-moe",
        dict(
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=256,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        ),
        "norm_topk_prob",
    ),
}

DEFAULTS = {
    "rope_parameters": dict(rope_type="default", rope_theta=10000.0),
    "norm_topk_prob": True,
}
# per model, where the plain value differs
PLAIN = {
    "gemma3-linear": dict(
        rope_parameters=dict(
            full_attention=dict(rope_type="default", rope_theta=1000000.0),
            sliding_attention=dict(rope_type="default", rope_theta=10000.0),
        )
    ),
}


# name -> the harness model it is derived from; its experts are stored packed as
# transformers' MXFP4 (GPT-OSS's released form) and its goldens come from transformers
# decoding that packing (`Mxfp4Config(dequantize=True)`)
MXFP4 = {"gpt-oss-mxfp4": "gpt-oss"}

E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def pack_mxfp4(w):
    """[..., rows, cols] -> blocks [..., rows, cols/32, 16] (two E2M1 codes per byte, low
    nibble first) and E8M0 scales [..., rows, cols/32]: the smallest power of two that
    fits each block's largest magnitude into E2M1's range, codes rounded to nearest."""
    w = w.float()
    g = w.reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    amax = g.abs().amax(-1).clamp(min=1e-30)
    e = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    codes = (g.unsqueeze(-1) / 2 ** e[..., None, None] - E2M1).abs().argmin(-1).to(torch.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8), (e + 127).to(torch.uint8)


def write_mxfp4(src, out):
    from safetensors.torch import load_file, save_file

    os.makedirs(out, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), out)
    packed = {}
    for k, v in load_file(os.path.join(src, "model.safetensors")).items():
        if k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            # stored [E, in, out]; packed along `in` per output row
            packed[k + "_blocks"], packed[k + "_scales"] = pack_mxfp4(v.transpose(1, 2))
        else:
            packed[k] = v
    save_file(packed, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = dict(
        quant_method="mxfp4",
        modules_to_not_convert=["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
    )
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def build(cls_cfg, cls_model, overrides):
    cfg = getattr(transformers, cls_cfg)(**{**COMMON, **overrides})
    cfg._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = getattr(transformers, cls_model)(cfg)
    model.eval()
    return model


def logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits.float()
    lp = torch.log_softmax(logits, dim=-1)
    nxt = torch.tensor(ids)[:, 1:]
    tok_lp = lp[:, :-1, :].gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
    top2 = torch.topk(logits, 2, dim=-1)
    return tok_lp, top2.indices[..., 0], top2.values[..., 0] - top2.values[..., 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
    ap.add_argument("--only", nargs="*", help="model names (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    text = open(os.path.join(a.shared, "data", "corpus", "test.txt"), encoding="utf-8").read()
    wanted = set(a.only or list(MODELS) + list(MXFP4))
    wanted |= {MXFP4[n] for n in wanted if n in MXFP4}
    for name, (cls_cfg, cls_model, tok_from, overrides, switch) in MODELS.items():
        if name not in wanted:
            continue
        out = os.path.join(a.out, name)
        os.makedirs(out, exist_ok=True)
        src = os.path.join(a.shared, "models", tok_from)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(src, f), out)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(src, "tokenizer.json"))
        all_ids = tok(text[:200000], add_special_tokens=False)["input_ids"]
        ids = [all_ids[i * 1000 : i * 1000 + SEQ_LEN] for i in range(N_SEQ)]

        build(cls_cfg, cls_model, overrides).to(torch.bfloat16).save_pretrained(out)
        # loaded back, not cast back: a cast would leave the rotary buffers rounded to bf16
        model = getattr(transformers, cls_model).from_pretrained(
            out, dtype=torch.float32, attn_implementation="eager"
        )
        model.eval()
        tok_lp, am, margin = logprobs(model, ids)

        # the same weights without the switch: how much it moves the log-probs
        plain = copy.deepcopy(overrides)
        plain[switch] = PLAIN.get(name, DEFAULTS)[switch]
        ref = build(cls_cfg, cls_model, plain)
        ref.load_state_dict(model.state_dict())
        ref_lp, _, _ = logprobs(ref, ids)

        golden = dict(
            transformers=transformers.__version__,
            torch=torch.__version__,
            input_ids=ids,
            next_token_logprob=tok_lp.tolist(),
            argmax=am.tolist(),
            argmax_margin=margin.tolist(),
            unscaled_max_dlogprob=float((tok_lp - ref_lp).abs().max()),
        )
        # YaRN without truncation (GPT-OSS's released form) is written to GGUF as YaRN,
        # which llama.cpp computes with truncated ramp bounds: the goldens of the model as
        # its GGUF states it
        add_gguf_golden(golden, cls_cfg, cls_model, overrides, model, ids)
        with open(os.path.join(out, "golden.json"), "w") as f:
            json.dump(golden, f)
        print(f"{name}: max |Δlogprob| without {switch} = {golden['unscaled_max_dlogprob']:.4f}")

        for packed_name in [n for n, base in MXFP4.items() if base == name and n in wanted]:
            pout = os.path.join(a.out, packed_name)
            write_mxfp4(out, pout)
            pm = getattr(transformers, cls_model).from_pretrained(
                pout,
                dtype=torch.float32,
                attn_implementation="eager",
                quantization_config=transformers.Mxfp4Config(dequantize=True),
            )
            pm.eval()
            p_lp, p_am, p_margin = logprobs(pm, ids)
            pg = dict(
                transformers=transformers.__version__,
                torch=torch.__version__,
                input_ids=ids,
                next_token_logprob=p_lp.tolist(),
                argmax=p_am.tolist(),
                argmax_margin=p_margin.tolist(),
                # how much the packing moves the log-probs
                unscaled_max_dlogprob=float((p_lp - tok_lp).abs().max()),
            )
            add_gguf_golden(pg, cls_cfg, cls_model, overrides, pm, ids)
            with open(os.path.join(pout, "golden.json"), "w") as f:
                json.dump(pg, f)
            print(f"{packed_name}: max |Δlogprob| against unpacked = {pg['unscaled_max_dlogprob']:.4f}")


def add_gguf_golden(golden, cls_cfg, cls_model, overrides, model, ids):
    """YaRN without truncation (GPT-OSS's released form) is written to GGUF as YaRN, which
    llama.cpp computes with truncated ramp bounds: the goldens of the model as its GGUF
    states it."""
    rp = overrides.get("rope_parameters", {})
    if rp.get("rope_type") == "yarn" and rp.get("truncate") is False:
        as_gguf = copy.deepcopy(overrides)
        as_gguf["rope_parameters"] = {**rp, "truncate": True}
        g = build(cls_cfg, cls_model, as_gguf)
        g.load_state_dict(model.state_dict())
        g_lp, g_am, g_margin = logprobs(g, ids)
        golden["gguf"] = dict(
            next_token_logprob=g_lp.tolist(),
            argmax=g_am.tolist(),
            argmax_margin=g_margin.tolist(),
        )


if __name__ == "__main__":
    main()
