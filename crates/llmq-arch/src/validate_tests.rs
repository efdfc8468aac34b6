//! Tests of `validate`: the shared models pass; each kind of inconsistency is refused
//! naming the key or tensor.

use super::*;
use crate::gguf_plan;
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models");
    assert!(p.is_dir(), "shared models not found at {}", p.display());
    p
}

/// Tensor names and shapes from a safetensors header.
fn st_tensors(dir: &std::path::Path) -> Vec<(String, Vec<usize>)> {
    let b = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    h.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), shape)
        })
        .collect()
}

fn model(name: &str) -> (Value, Vec<(String, Vec<usize>)>) {
    let dir = models_dir().join(name);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    (cfg, st_tensors(&dir))
}

fn plan(cfg: &Value, t: &[(String, Vec<usize>)]) -> Result<(), ArchError> {
    let c = ArchConfig::from_json(cfg.clone())?;
    gguf_plan(&c, t).map(|_| ())
}

const ALL: &[&str] = &[
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma3",
    "phi3",
    "mixtral",
    "qwen3-moe",
    "deepseek-v3",
    "glm4-moe-lite",
];

#[test]
fn every_shared_model_passes() {
    for m in ALL {
        let (c, t) = model(m);
        plan(&c, &t).unwrap_or_else(|e| panic!("{m}: {e}"));
    }
}

fn refused(cfg: &Value, t: &[(String, Vec<usize>)], needle: &str) {
    let e = plan(cfg, t).expect_err("accepted");
    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
}

#[test]
fn sizes_out_of_range_are_refused_before_parsing() {
    let (cfg, t) = model("llama");
    for (key, value) in [
        ("num_key_value_heads", serde_json::json!(0)),
        ("hidden_size", serde_json::json!(1_000_000_000_000u64)),
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
        ("vocab_size", serde_json::json!(1_000_000_000_000u64)),
        ("intermediate_size", serde_json::json!(-5)),
        ("num_attention_heads", serde_json::json!(0)),
        ("sliding_window", serde_json::json!(0)),
        ("rms_norm_eps", serde_json::json!(-1.0)),
        ("head_dim", serde_json::json!(1.5)),
    ] {
        let mut c = cfg.clone();
        c[key] = value;
        refused(&c, &t, key);
    }
}

#[test]
fn config_disagreeing_with_weights_is_refused() {
    let (cfg, t) = model("llama");
    for (key, value, needle) in [
        ("hidden_size", 512, "shape"),
        ("intermediate_size", 1024, "mlp.gate_proj"),
        ("num_hidden_layers", 5, "model.layers.4"),
        ("num_hidden_layers", 3, "model.layers.3"),
        ("vocab_size", 4000, "embed_tokens"),
        ("num_key_value_heads", 4, "k_proj"),
    ] {
        let mut c = cfg.clone();
        c[key] = serde_json::json!(value);
        refused(&c, &t, needle);
    }
    // untied model without its head
    let no_head: Vec<_> = t
        .iter()
        .filter(|x| x.0 != "lm_head.weight")
        .cloned()
        .collect();
    refused(&cfg, &no_head, "lm_head");
    let mut tied = cfg.clone();
    tied["tie_word_embeddings"] = serde_json::json!(true);
    plan(&tied, &no_head).unwrap();
    // a removed and a transposed tensor
    let gone: Vec<_> = t
        .iter()
        .filter(|x| x.0 != "model.layers.1.mlp.down_proj.weight")
        .cloned()
        .collect();
    refused(&cfg, &gone, "down_proj");
    let mut tr = t.clone();
    for x in &mut tr {
        if x.0 == "model.layers.0.mlp.up_proj.weight" {
            x.1.reverse();
        }
    }
    refused(&cfg, &tr, "up_proj");
    // an unexplained extra of a known role
    let mut extra = t.clone();
    extra.push(("model.layers.0.self_attn.q_norm.weight".into(), vec![64]));
    refused(&cfg, &extra, "q_norm");
}

#[test]
fn moe_settings_are_checked() {
    let (cfg, t) = model("qwen3-moe");
    let mut c = cfg.clone();
    c["num_experts_per_tok"] = serde_json::json!(9);
    refused(&c, &t, "num_experts_per_tok");
    let (cfg, t) = model("deepseek-v3");
    let mut c = cfg.clone();
    c["first_k_dense_replace"] = serde_json::json!(99);
    refused(&c, &t, "first_k_dense_replace");
    let mut c = cfg.clone();
    c["n_group"] = serde_json::json!(3);
    refused(&c, &t, "n_group");
}

#[test]
fn implied_parameters_use_checked_arithmetic() {
    let (mut cfg, _) = model("llama");
    cfg["hidden_size"] = serde_json::json!(1 << 17);
    cfg["vocab_size"] = serde_json::json!(1 << 24);
    cfg["num_hidden_layers"] = serde_json::json!(1 << 12);
    cfg["intermediate_size"] = serde_json::json!(1 << 20);
    cfg["head_dim"] = serde_json::json!(1 << 14);
    let e = ArchConfig::from_json(cfg).unwrap_err();
    assert!(e.to_string().contains("parameters"), "{e}");
}
