//! The bad-input catalogue, Hugging Face folders: hostile variants of the shared tiny
//! models' `config.json` and safetensors, each run through `info` and `quantize` (and
//! the calibrated formats). Every case asserts the contract's exit code, a JSON error
//! whose message names the problem, and that nothing a reader would take for a model
//! was left behind. GGUF files and command lines: `hostile_catalogue_gguf.rs`.

mod common;
mod hostile_support;
use hostile_support::*;
use serde_json::{json, Value};
use std::path::Path;

/// (name, base model, edit, exit code, needle)
fn folder_cases() -> Vec<(&'static str, &'static str, FolderEdit, i32, &'static str)> {
    let set = |k: &'static str, v: Value| cfg(move |c| c[k] = v.clone());
    vec![
        (
            "kv heads 0",
            "llama",
            set("num_key_value_heads", json!(0)),
            6,
            "num_key_value_heads",
        ),
        (
            "kv heads not dividing",
            "llama",
            set("num_key_value_heads", json!(3)),
            6,
            "num_key_value_heads",
        ),
        (
            "kv heads above heads",
            "llama",
            set("num_key_value_heads", json!(8)),
            6,
            "num_key_value_heads",
        ),
        (
            "heads 0",
            "llama",
            set("num_attention_heads", json!(0)),
            6,
            "num_attention_heads",
        ),
        (
            "hidden 1e12",
            "llama",
            set("hidden_size", json!(1_000_000_000_000u64)),
            6,
            "hidden_size",
        ),
        (
            "hidden float",
            "llama",
            set("hidden_size", json!(256.5)),
            6,
            "hidden_size",
        ),
        (
            "hidden string",
            "llama",
            set("hidden_size", json!("256")),
            6,
            "hidden_size",
        ),
        (
            "hidden disagrees",
            "llama",
            set("hidden_size", json!(512)),
            6,
            "shape",
        ),
        (
            "intermediate disagrees",
            "llama",
            set("intermediate_size", json!(1024)),
            6,
            "gate_proj",
        ),
        (
            "intermediate negative",
            "llama",
            set("intermediate_size", json!(-768)),
            6,
            "intermediate_size",
        ),
        (
            "layers 1e9",
            "llama",
            set("num_hidden_layers", json!(1_000_000_000)),
            6,
            "num_hidden_layers",
        ),
        (
            "layers one more",
            "llama",
            set("num_hidden_layers", json!(5)),
            6,
            "model.layers.4",
        ),
        (
            "layers one fewer",
            "llama",
            set("num_hidden_layers", json!(3)),
            6,
            "model.layers.3",
        ),
        (
            "layers 0",
            "llama",
            set("num_hidden_layers", json!(0)),
            6,
            "num_hidden_layers",
        ),
        (
            "vocab 1e12",
            "llama",
            set("vocab_size", json!(1_000_000_000_000u64)),
            6,
            "vocab_size",
        ),
        (
            "vocab disagrees",
            "llama",
            set("vocab_size", json!(4000)),
            6,
            "embed_tokens",
        ),
        (
            "head_dim 0",
            "llama",
            set("head_dim", json!(0)),
            6,
            "head_dim",
        ),
        (
            "head_dim disagrees",
            "llama",
            set("head_dim", json!(32)),
            6,
            "q_proj",
        ),
        (
            "head_dim huge",
            "llama",
            set("head_dim", json!(1u64 << 40)),
            6,
            "head_dim",
        ),
        (
            "sliding window 0",
            "mistral",
            set("sliding_window", json!(0)),
            6,
            "sliding_window",
        ),
        (
            "eps negative",
            "llama",
            set("rms_norm_eps", json!(-1e-6)),
            6,
            "rms_norm_eps",
        ),
        (
            "rope theta 0",
            "llama",
            cfg(|c| c["rope_parameters"]["rope_theta"] = json!(0.0)),
            6,
            "rope_theta",
        ),
        (
            "max positions 0",
            "llama",
            set("max_position_embeddings", json!(0)),
            6,
            "max_position_embeddings",
        ),
        (
            "architectures missing",
            "llama",
            cfg(|c| {
                c.as_object_mut().unwrap().remove("architectures");
            }),
            6,
            "architectures",
        ),
        (
            "architecture unknown",
            "llama",
            set("architectures", json!(["GPTNeoXForCausalLM"])),
            8,
            "GPTNeoXForCausalLM",
        ),
        (
            "activation unknown",
            "llama",
            set("hidden_act", json!("relu")),
            8,
            "hidden_act",
        ),
        (
            "rope type unknown",
            "llama",
            cfg(|c| c["rope_parameters"]["rope_type"] = json!("warp")),
            8,
            "rope",
        ),
        (
            "config not json",
            "llama",
            Box::new(|m: &Path| std::fs::write(m.join("config.json"), "{ not json").unwrap()),
            6,
            "json",
        ),
        (
            "config empty",
            "llama",
            Box::new(|m: &Path| std::fs::write(m.join("config.json"), "").unwrap()),
            6,
            "json",
        ),
        (
            "config an array",
            "llama",
            Box::new(|m: &Path| std::fs::write(m.join("config.json"), "[1,2]").unwrap()),
            6,
            "architectures",
        ),
        (
            "untied without lm_head",
            "llama",
            drop_tensor("lm_head.weight"),
            6,
            "lm_head",
        ),
        (
            "tensor removed",
            "llama",
            drop_tensor("model.layers.1.mlp.down_proj.weight"),
            6,
            "down_proj",
        ),
        (
            "norm removed",
            "llama",
            drop_tensor("model.norm.weight"),
            6,
            "model.norm",
        ),
        (
            "tensor transposed",
            "llama",
            weights(|h, _| {
                let s = &mut h["model.layers.0.mlp.up_proj.weight"]["shape"];
                let v: Vec<Value> = s.as_array().unwrap().iter().rev().cloned().collect();
                *s = json!(v);
            }),
            6,
            "up_proj",
        ),
        (
            "unexplained q_norm",
            "llama",
            tensors(|ts| {
                let t = (json!("BF16"), json!([64]), vec![0; 128]);
                ts.insert("model.layers.0.self_attn.q_norm.weight".into(), t);
            }),
            6,
            "q_norm",
        ),
        (
            "unknown tensor",
            "llama",
            tensors(|ts| {
                let norm = ts["model.norm.weight"].clone();
                ts.insert("model.extra.weight".into(), norm);
            }),
            6,
            "model.extra.weight",
        ),
        (
            "tensor resized",
            "llama",
            tensors(|ts| {
                let t = ts
                    .get_mut("model.layers.3.self_attn.o_proj.weight")
                    .unwrap();
                t.1 = json!([128, 512]);
            }),
            6,
            "o_proj",
        ),
        (
            "nan in weight",
            "llama",
            weights(|h, d| {
                let o = offset(h, "model.layers.2.self_attn.v_proj.weight") + 20;
                d[o] = 0xC0;
                d[o + 1] = 0x7F;
            }),
            6,
            "v_proj",
        ),
        (
            "inf in weight",
            "llama",
            weights(|h, d| {
                let o = offset(h, "model.layers.1.mlp.gate_proj.weight") + 40;
                d[o] = 0x80;
                d[o + 1] = 0x7F;
            }),
            6,
            "gate_proj",
        ),
        (
            "inf in embedding",
            "llama",
            weights(|h, d| {
                let o = offset(h, "model.embed_tokens.weight");
                d[o] = 0x80;
                d[o + 1] = 0xFF;
            }),
            6,
            "embed",
        ),
        (
            "offsets past the data",
            "llama",
            weights(|h, d| {
                h["model.norm.weight"]["data_offsets"][1] = json!(d.len() as u64 * 4);
            }),
            6,
            "model.safetensors",
        ),
        (
            "shape lies about bytes",
            "llama",
            weights(|h, _| {
                h["model.norm.weight"]["shape"] = json!([257]);
            }),
            6,
            "model.norm.weight",
        ),
        (
            "dtype unknown",
            "llama",
            weights(|h, _| {
                h["model.layers.0.mlp.down_proj.weight"]["dtype"] = json!("I16");
            }),
            8,
            "I16",
        ),
        (
            "safetensors truncated",
            "llama",
            Box::new(|m: &Path| {
                let p = m.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            }),
            6,
            "model.safetensors",
        ),
        (
            "safetensors header length huge",
            "llama",
            Box::new(|m: &Path| {
                let p = m.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
                std::fs::write(&p, &b).unwrap();
            }),
            6,
            "model.safetensors",
        ),
        (
            "safetensors header garbage",
            "llama",
            Box::new(|m: &Path| {
                let p = m.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                for x in &mut b[8..40] {
                    *x = 0xFF;
                }
                std::fs::write(&p, &b).unwrap();
            }),
            6,
            "model.safetensors",
        ),
        (
            "weights missing",
            "llama",
            Box::new(|m: &Path| std::fs::remove_file(m.join("model.safetensors")).unwrap()),
            3,
            "safetensors",
        ),
        (
            "moe top-k above experts",
            "qwen3-moe",
            set("num_experts_per_tok", json!(9)),
            6,
            "num_experts_per_tok",
        ),
        (
            "moe fewer experts than tensors",
            "qwen3-moe",
            set("num_local_experts", json!(4)),
            6,
            "experts",
        ),
        (
            "moe expert counts disagree",
            "qwen3-moe",
            set("num_experts", json!(4)),
            6,
            "num_experts",
        ),
        (
            "moe experts 0",
            "qwen3-moe",
            set("num_local_experts", json!(0)),
            6,
            "experts",
        ),
        (
            "moe dense prefix beyond layers",
            "deepseek-v3",
            set("first_k_dense_replace", json!(99)),
            6,
            "first_k_dense_replace",
        ),
        (
            "moe groups not dividing",
            "deepseek-v3",
            set("n_group", json!(3)),
            6,
            "n_group",
        ),
        (
            "moe expert tensor removed",
            "qwen3-moe",
            drop_tensor("model.layers.1.mlp.experts.3.up_proj.weight"),
            6,
            "expert",
        ),
    ]
}

#[test]
fn hostile_folders() {
    let mut failures = Vec::new();
    let mut n = 0;
    for (name, base, edit, code, needle) in folder_cases() {
        // `info` reads config and headers only; `quantize` must refuse before writing
        for cmd in [
            vec!["info", "{in}"],
            vec!["quantize", "{in}", "gguf", "-q", "Q8_0", "-o", "out"],
        ] {
            let dir = new_dir();
            let input = llama_copy(dir.path(), base);
            edit(&input);
            // NaN/Inf are found reading the weights, which `info` does not
            // (and `info` describes a tensor of a dtype we do not quantize)
            let reads_weights =
                name.starts_with("nan") || name.starts_with("inf") || name == "dtype unknown";
            if reads_weights && cmd[0] == "info" {
                continue;
            }
            n += 1;
            let c = Case {
                name: format!("{name} ({})", cmd[0]),
                code,
                needle,
                args: cmd.iter().map(|s| s.to_string()).collect(),
                input,
                dir,
            };
            if let Err(e) = run_case(&c) {
                failures.push(e);
            }
        }
    }
    assert!(n >= 100, "{n} runs");
    assert!(
        failures.is_empty(),
        "{} of {n} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn hostile_folders_for_calibrated_formats() {
    let mut failures = Vec::new();
    for (fmt, level) in [
        ("gptq", "4bit"),
        ("awq", "4bit"),
        ("compressed-tensors", "W4A16"),
    ] {
        for (name, edit, needle) in [
            (
                "nan",
                weights(|h, d| {
                    let o = offset(h, "model.layers.2.self_attn.v_proj.weight") + 20;
                    d[o] = 0xC0;
                    d[o + 1] = 0x7F;
                }),
                "v_proj",
            ),
            (
                "shape",
                cfg(|c| c["intermediate_size"] = json!(1024)),
                "gate_proj",
            ),
            (
                "missing",
                drop_tensor("model.layers.1.self_attn.o_proj.weight"),
                "o_proj",
            ),
        ] {
            let dir = new_dir();
            let input = llama_copy(dir.path(), "llama");
            edit(&input);
            let c = Case {
                name: format!("{fmt} {name}"),
                code: 6,
                needle,
                args: [
                    "quantize",
                    "{in}",
                    fmt,
                    "-q",
                    level,
                    "-o",
                    "out",
                    "--calibration-samples",
                    "2",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                input,
                dir,
            };
            if let Err(e) = run_case(&c) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
