#!/usr/bin/env python3
# Measurement helper (not part of the product): dequantize the real Qwen2.5-Coder-0.5B
# GGUF into a Hugging Face folder (bf16 safetensors, config.json, tokenizer.json).
import gguf, json, struct, sys, numpy as np
src, dst = sys.argv[1], sys.argv[2]
r = gguf.GGUFReader(src)
f = lambda k: r.fields[k].contents()
L = f('qwen2.block_count')
cfg = {
 "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
 "hidden_size": f('qwen2.embedding_length'), "intermediate_size": f('qwen2.feed_forward_length'),
 "num_hidden_layers": L, "num_attention_heads": f('qwen2.attention.head_count'),
 "num_key_value_heads": f('qwen2.attention.head_count_kv'), "rms_norm_eps": 1e-6,
 "rope_theta": f('qwen2.rope.freq_base'), "max_position_embeddings": f('qwen2.context_length'),
 "vocab_size": 151936, "tie_word_embeddings": False, "hidden_act": "silu",
 "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16",
 "sliding_window": None, "use_sliding_window": False,
}
json.dump(cfg, open(f"{dst}/config.json", "w"), indent=1)
names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
out = {}
for t in r.tensors:
    a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    shape = list(reversed([int(x) for x in t.shape]))
    a = a.reshape(shape)
    n = t.name
    if n == "token_embd.weight": hf = "model.embed_tokens.weight"
    elif n == "output.weight": hf = "lm_head.weight"
    elif n == "output_norm.weight": hf = "model.norm.weight"
    else:
        _, i, base, kind = n.split(".")
        hf = f"model.layers.{i}.{names[base]}.{kind}"
    u = a.view(np.uint32)
    b = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    out[hf] = (shape, b.tobytes())
hdr, off = {}, 0
for k in sorted(out):
    shape, by = out[k]
    hdr[k] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + len(by)]}
    off += len(by)
h = json.dumps(hdr).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(f"{dst}/model.safetensors", "wb") as fo:
    fo.write(struct.pack("<Q", len(h))); fo.write(h)
    for k in sorted(out): fo.write(out[k][1])
toks = f('tokenizer.ggml.tokens'); types = f('tokenizer.ggml.token_type'); merges = f('tokenizer.ggml.merges')
added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
          "normalized": False, "special": True} for i, (s, ty) in enumerate(zip(toks, types)) if ty in (3, 4)]
tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
 "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
   {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": False},
   {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
 "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
 "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
   "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
   "vocab": {s: i for i, s in enumerate(toks)}, "merges": list(merges)}}
json.dump(tj, open(f"{dst}/tokenizer.json", "w"), ensure_ascii=False)
json.dump({"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>", "model_max_length": 32768,
  "tokenizer_class": "Qwen2Tokenizer"}, open(f"{dst}/tokenizer_config.json", "w"))
print("ok", len(out))
