#!/usr/bin/env python3
"""Writes a Llama-architecture Hugging Face folder with random weights of real shapes, for
speed measurements where no trained model of that size can be carried (GPU machines reach
no hub). Quality numbers of such a model mean nothing; its bytes per token are real.

  random-model.py OUT --tokenizer DIR [--hidden 2048 --layers 16 --ffn 8192 --heads 32
                  --kv-heads 8 --head-dim 64 --vocab V]
                  [--experts E --experts-per-token K --moe-ffn F]

With --experts, a Qwen3-MoE folder instead (q/k norms, E routed experts of FFN F per layer,
K of them per token; --ffn is then unused), e.g. the Qwen3-30B-A3B shape: --hidden 2048
--heads 32 --kv-heads 4 --head-dim 128 --experts 128 --experts-per-token 8 --moe-ffn 768
--vocab 151936 (48 layers; fewer to fit a disk or a time limit).

The tokenizer files are copied from DIR (a small shared model); --vocab defaults to its
vocabulary size, and may be larger (e.g. 128256 for a Llama-3 shape: the extra rows are
never produced by the tokenizer but are read in every logits product). Weights are bf16,
N(0, 0.02), norms 1. Needs numpy; with PyTorch and a GPU present the values are drawn on
the GPU (an 8B shape in seconds instead of minutes; other values than numpy's).
"""
import argparse, json, os, shutil, struct
import numpy as np


def bf16_bytes(a):
    """float32 array -> bf16 little-endian bytes (round to nearest even)."""
    u = a.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--ffn", type=int, default=8192)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experts", type=int, default=0)
    p.add_argument("--experts-per-token", type=int, default=8)
    p.add_argument("--moe-ffn", type=int, default=768)
    a = p.parse_args()
    src = json.load(open(os.path.join(a.tokenizer, "config.json")))
    vocab = a.vocab or src["vocab_size"]
    os.makedirs(a.out, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(a.tokenizer, f)):
            shutil.copy(os.path.join(a.tokenizer, f), a.out)
    h, hd = a.hidden, a.head_dim
    shapes = [("model.embed_tokens.weight", (vocab, h)), ("model.norm.weight", (h,)),
              ("lm_head.weight", (vocab, h))]
    moe = a.experts > 0
    for i in range(a.layers):
        b = f"model.layers.{i}."
        shapes += [(b + "input_layernorm.weight", (h,)), (b + "post_attention_layernorm.weight", (h,)),
                   (b + "self_attn.q_proj.weight", (a.heads * hd, h)),
                   (b + "self_attn.k_proj.weight", (a.kv_heads * hd, h)),
                   (b + "self_attn.v_proj.weight", (a.kv_heads * hd, h)),
                   (b + "self_attn.o_proj.weight", (h, a.heads * hd))]
        if moe:
            shapes += [(b + "self_attn.q_norm.weight", (hd,)), (b + "self_attn.k_norm.weight", (hd,)),
                       (b + "mlp.gate.weight", (a.experts, h))]
            for e in range(a.experts):
                x = f"{b}mlp.experts.{e}."
                shapes += [(x + "gate_proj.weight", (a.moe_ffn, h)), (x + "up_proj.weight", (a.moe_ffn, h)),
                           (x + "down_proj.weight", (h, a.moe_ffn))]
        else:
            shapes += [(b + "mlp.gate_proj.weight", (a.ffn, h)), (b + "mlp.up_proj.weight", (a.ffn, h)),
                       (b + "mlp.down_proj.weight", (h, a.ffn))]
    header, off = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    rng = np.random.default_rng(a.seed)
    try:
        import torch
        gen = torch.Generator(device="cuda").manual_seed(a.seed) if torch.cuda.is_available() else None
    except ImportError:
        gen = None

    def normal_bf16(rows, cols):
        if gen is not None:
            t = torch.randn((rows, cols), generator=gen, device="cuda", dtype=torch.float32) * 0.02
            return t.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        return bf16_bytes(rng.standard_normal((rows, cols), np.float32) * 0.02)

    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for name, shape in shapes:
            if len(shape) == 1:
                f.write(bf16_bytes(np.ones(shape, np.float32)))
                continue
            for r0 in range(0, shape[0], 4096):  # bounded memory
                f.write(normal_bf16(min(4096, shape[0] - r0), shape[1]))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
           "intermediate_size": a.ffn, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
           "num_key_value_heads": a.kv_heads, "head_dim": hd, "vocab_size": vocab,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu",
           "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
           "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
           "bos_token_id": src.get("bos_token_id", 0), "eos_token_id": src.get("eos_token_id", 0),
           "dtype": "bfloat16"}
    if moe:
        cfg.update({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
                    "intermediate_size": a.moe_ffn * a.experts_per_token,
                    "moe_intermediate_size": a.moe_ffn, "num_experts": a.experts,
                    "num_experts_per_tok": a.experts_per_token, "norm_topk_prob": True,
                    "decoder_sparse_step": 1, "mlp_only_layers": [], "rms_norm_eps": 1e-6,
                    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
                    "use_sliding_window": False, "sliding_window": None})
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=1)
    print(f"{a.out}: {sum(int(np.prod(s)) for _, s in shapes) / 1e9:.2f} B parameters")


main()
