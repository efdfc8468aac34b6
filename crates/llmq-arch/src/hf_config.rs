//! A Hugging Face `config.json` from GGUF metadata: the reverse of [`crate::gguf_meta`]
//! (and of llama.cpp's converter, `conversion/base.py` `set_gguf_parameters` and the
//! per-model overrides), read key by key as llama.cpp 0.3.36's loaders
//! (`src/llama-model.cpp`, `src/models/*.cpp`) interpret them.
//!
//! Architectures reversed: `llama` (Llama; Mixtral when it has experts), `qwen2`,
//! `qwen3`, `qwen3moe`, `gemma3`, `phi3`. Every `{arch}.*` key and every key outside
//! `general.*` / `tokenizer.*` / `quantize.imatrix.*` must be consumed here (or by
//! [`crate::hf_tokenizer`]); any other key is refused ([`ArchError::NotReversible`])
//! rather than dropped, since it may change what the model computes. What llama.cpp
//! fixes in code rather than in metadata is written as the loader fixes it:
//! * `qwen3moe` and `llama` with experts renormalise the top-k router weights
//!   (`norm_w = true` in their graphs): `norm_topk_prob: true`.
//! * `gemma3` scales queries by `1/sqrt(key_length)` for every size but 27B (62 layers,
//!   refused): `query_pre_attn_scalar = key_length`; without
//!   `attention.sliding_window_pattern` the loader's pattern is "5 sliding, 1 full";
//!   the sliding layers' RoPE base defaults to 10000.

use crate::config::Family;
use crate::ArchError;
use llmq_formats::gguf::GgufValue;
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// GGUF metadata with a record of the keys read, so that unread keys can be refused.
pub struct MetaReader<'a> {
    kv: &'a [(String, GgufValue)],
    used: RefCell<BTreeSet<String>>,
}

fn not_rev(what: impl Into<String>) -> ArchError {
    ArchError::NotReversible(what.into())
}

impl<'a> MetaReader<'a> {
    pub fn new(kv: &'a [(String, GgufValue)]) -> Self {
        MetaReader {
            kv,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// The value of `key`, marking it read.
    pub fn get(&self, key: &str) -> Option<&'a GgufValue> {
        let v = self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)?;
        self.used.borrow_mut().insert(key.to_string());
        Some(v)
    }

    /// An unsigned integer key (any integer type).
    pub fn uint(&self, key: &str) -> Result<Option<u64>, ArchError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_u64()
                .map(Some)
                .ok_or_else(|| not_rev(format!("metadata key {key} is not a scalar integer"))),
        }
    }

    /// A required unsigned integer key.
    pub fn req_uint(&self, key: &str) -> Result<u64, ArchError> {
        self.uint(key)?
            .ok_or_else(|| not_rev(format!("metadata key {key} is missing")))
    }

    /// A float key, as the shortest decimal of its stored value (so that an f32
    /// `1e-6` becomes `1e-6`, not `9.99999997e-7`).
    pub fn float(&self, key: &str) -> Result<Option<f64>, ArchError> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::F32(x)) => Ok(Some(format!("{x}").parse().unwrap_or(*x as f64))),
            Some(GgufValue::F64(x)) => Ok(Some(*x)),
            Some(_) => Err(not_rev(format!("metadata key {key} is not a float"))),
        }
    }

    pub fn string(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// Refuses the first key that nothing read, other than descriptive ones.
    pub fn finish(&self) -> Result<(), ArchError> {
        let used = self.used.borrow();
        for (k, _) in self.kv {
            // general.* describes the file (name, license, alignment ...), and
            // quantize.imatrix.* how it was made; neither changes what the model computes
            let descriptive = k.starts_with("general.") || k.starts_with("quantize.imatrix.");
            if !descriptive && !used.contains(k) {
                return Err(not_rev(format!(
                    "metadata key {k} has no Hugging Face equivalent here (not reversed)"
                )));
            }
        }
        Ok(())
    }
}

/// What the tensor list says about the model, for the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct TensorFacts {
    /// `output.weight` is absent: the head is the embedding
    pub tied: bool,
    /// `blk.0.attn_q.bias` is present
    pub qkv_bias: bool,
    /// rows of `token_embd.weight`
    pub n_vocab: usize,
}

/// The family a GGUF architecture string stands for.
pub fn family_of(arch: &str, n_expert: u64) -> Result<Family, ArchError> {
    Ok(match arch {
        "llama" if n_expert > 0 => Family::Mixtral,
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "qwen3moe" => Family::Qwen3Moe,
        "gemma3" => Family::Gemma3,
        "phi3" => Family::Phi3,
        other => {
            return Err(not_rev(format!(
                "GGUF architecture `{other}` is not reversed to Hugging Face (supported: llama, \
                 qwen2, qwen3, qwen3moe, gemma3, phi3)"
            )))
        }
    })
}

fn rope(theta: f64) -> Value {
    json!({"rope_theta": theta, "rope_type": "default"})
}

/// `config.json` for the GGUF metadata `m` (architecture `arch`), without the token
/// ids (see [`crate::hf_tokenizer`]).
pub fn hf_config(m: &MetaReader, arch: &str, facts: TensorFacts) -> Result<Value, ArchError> {
    let k = |s: &str| format!("{arch}.{s}");
    let n_expert = m.uint(&k("expert_count"))?.unwrap_or(0);
    let family = family_of(arch, n_expert)?;
    let n_layer = m.req_uint(&k("block_count"))?;
    let hidden = m.req_uint(&k("embedding_length"))?;
    let n_head = m.req_uint(&k("attention.head_count"))?;
    let n_kv = m.uint(&k("attention.head_count_kv"))?.unwrap_or(n_head);
    let ff = m.req_uint(&k("feed_forward_length"))?;
    let ctx = m.req_uint(&k("context_length"))?;
    let eps = m
        .float(&k("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            not_rev(format!(
                "metadata key {} is missing",
                k("attention.layer_norm_rms_epsilon")
            ))
        })?;
    let theta = m.float(&k("rope.freq_base"))?.unwrap_or(10000.0);
    let key_len = m.uint(&k("attention.key_length"))?;
    let val_len = m.uint(&k("attention.value_length"))?;
    let head_dim = key_len.unwrap_or(hidden / n_head);
    if val_len.unwrap_or(head_dim) != head_dim {
        return Err(not_rev(format!(
            "{} {} differs from key_length {head_dim}",
            k("attention.value_length"),
            val_len.unwrap_or(0)
        )));
    }
    let vocab = m.uint(&k("vocab_size"))?.unwrap_or(facts.n_vocab as u64);
    let rope_dim = m.uint(&k("rope.dimension_count"))?;
    if family != Family::Phi3 && rope_dim.is_some_and(|d| d != head_dim) {
        return Err(not_rev(format!(
            "{} {} (partial rotary) is not reversed for {arch}",
            k("rope.dimension_count"),
            rope_dim.unwrap_or(0)
        )));
    }
    let mut c = Map::new();
    c.insert("architectures".into(), json!([family.architecture()]));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("num_hidden_layers".into(), json!(n_layer));
    c.insert("num_attention_heads".into(), json!(n_head));
    c.insert("num_key_value_heads".into(), json!(n_kv));
    c.insert("intermediate_size".into(), json!(ff));
    c.insert("max_position_embeddings".into(), json!(ctx));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("tie_word_embeddings".into(), json!(facts.tied));
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("use_cache".into(), json!(true));
    c.insert("dtype".into(), json!("bfloat16"));
    let act = "hidden_act";
    match family {
        Family::Llama | Family::Mixtral => {
            c.insert("head_dim".into(), json!(head_dim));
            c.insert(act.into(), json!("silu"));
            c.insert("rope_parameters".into(), rope(theta));
            if family == Family::Llama {
                c.insert("model_type".into(), json!("llama"));
                c.insert("attention_bias".into(), json!(facts.qkv_bias));
                c.insert("mlp_bias".into(), json!(false));
            } else {
                c.insert("model_type".into(), json!("mixtral"));
                c.insert("num_local_experts".into(), json!(n_expert));
                let used = m.req_uint(&k("expert_used_count"))?;
                c.insert("num_experts_per_tok".into(), json!(used));
                c.insert("sliding_window".into(), Value::Null);
            }
        }
        Family::Qwen2 => {
            if !facts.qkv_bias {
                return Err(not_rev(
                    "qwen2 without q/k/v biases has no Qwen2ForCausalLM equivalent",
                ));
            }
            c.insert("model_type".into(), json!("qwen2"));
            c.insert(act.into(), json!("silu"));
            c.insert("rope_parameters".into(), rope(theta));
            c.insert("use_sliding_window".into(), json!(false));
            c.insert("sliding_window".into(), Value::Null);
        }
        Family::Qwen3 | Family::Qwen3Moe => {
            c.insert("head_dim".into(), json!(head_dim));
            c.insert("attention_bias".into(), json!(facts.qkv_bias));
            c.insert(act.into(), json!("silu"));
            c.insert("rope_parameters".into(), rope(theta));
            c.insert("use_sliding_window".into(), json!(false));
            c.insert("sliding_window".into(), Value::Null);
            if family == Family::Qwen3 {
                c.insert("model_type".into(), json!("qwen3"));
            } else {
                if let Some(s) = m.uint(&k("expert_shared_feed_forward_length"))? {
                    if s > 0 {
                        return Err(not_rev(format!(
                            "{} (shared experts) has no Qwen3MoeForCausalLM equivalent",
                            k("expert_shared_feed_forward_length")
                        )));
                    }
                }
                c.insert("model_type".into(), json!("qwen3_moe"));
                c.insert("num_experts".into(), json!(n_expert));
                c.insert("num_local_experts".into(), json!(n_expert));
                let used = m.req_uint(&k("expert_used_count"))?;
                c.insert("num_experts_per_tok".into(), json!(used));
                let eff = m.req_uint(&k("expert_feed_forward_length"))?;
                c.insert("moe_intermediate_size".into(), json!(eff));
                c.insert("norm_topk_prob".into(), json!(true));
                c.insert("decoder_sparse_step".into(), json!(1));
                c.insert("mlp_only_layers".into(), json!([]));
            }
        }
        Family::Gemma3 => gemma3(m, &k, &mut c, n_layer, head_dim, theta)?,
        Family::Phi3 => {
            c.insert("model_type".into(), json!("phi3"));
            c.insert(act.into(), json!("silu"));
            let orig = m
                .uint(&k("rope.scaling.original_context_length"))?
                .unwrap_or(ctx);
            c.insert("original_max_position_embeddings".into(), json!(orig));
            let dim = rope_dim.unwrap_or(head_dim);
            let factor = (dim * n_head) as f64 / hidden as f64;
            c.insert(
                "rope_parameters".into(),
                json!({"partial_rotary_factor": factor, "rope_theta": theta, "rope_type": "default"}),
            );
            let swa = m.uint(&k("attention.sliding_window"))?.unwrap_or(0);
            c.insert(
                "sliding_window".into(),
                if swa == 0 { Value::Null } else { json!(swa) },
            );
        }
        Family::Mistral | Family::DeepseekV3 | Family::Glm4MoeLite | Family::GptOss => {
            unreachable!("family_of never returns {family:?}")
        }
    }
    Ok(Value::Object(c))
}

fn gemma3(
    m: &MetaReader,
    k: &dyn Fn(&str) -> String,
    c: &mut Map<String, Value>,
    n_layer: u64,
    head_dim: u64,
    theta: f64,
) -> Result<(), ArchError> {
    if n_layer == 62 {
        return Err(not_rev(
            "gemma3 with 62 layers (27B) scales queries by hidden/heads in llama.cpp; not reversed",
        ));
    }
    c.insert("model_type".into(), json!("gemma3_text"));
    c.insert("architectures".into(), json!(["Gemma3ForCausalLM"]));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("query_pre_attn_scalar".into(), json!(head_dim));
    c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("attn_logit_softcapping".into(), Value::Null);
    c.insert("use_bidirectional_attention".into(), json!(false));
    let cap = m.float(&k("final_logit_softcapping"))?;
    c.insert(
        "final_logit_softcapping".into(),
        cap.map_or(Value::Null, |x| json!(x)),
    );
    let swa_theta = m.float(&k("rope.freq_base_swa"))?.unwrap_or(10000.0);
    c.insert(
        "rope_parameters".into(),
        json!({"full_attention": rope(theta), "sliding_attention": rope(swa_theta)}),
    );
    let window = m.uint(&k("attention.sliding_window"))?;
    let pattern: Vec<bool> = match m.get(&k("attention.sliding_window_pattern")) {
        Some(v) => {
            let p = v.as_bool_array().ok_or_else(|| {
                not_rev(format!(
                    "{} is not a per-layer bool array",
                    k("attention.sliding_window_pattern")
                ))
            })?;
            if p.len() as u64 != n_layer {
                return Err(not_rev(format!(
                    "{} has {} entries for {n_layer} layers",
                    k("attention.sliding_window_pattern"),
                    p.len()
                )));
            }
            p.to_vec()
        }
        None => (0..n_layer).map(|i| (i + 1) % 6 != 0).collect(),
    };
    let any_sliding = pattern.iter().any(|s| *s);
    match window {
        Some(w) if w > 0 => {
            c.insert("sliding_window".into(), json!(w));
        }
        _ if any_sliding => {
            return Err(not_rev(format!(
                "gemma3 with sliding layers but no {}",
                k("attention.sliding_window")
            )))
        }
        _ => {
            c.insert("sliding_window".into(), Value::Null);
        }
    }
    let types: Vec<&str> = pattern
        .iter()
        .map(|s| {
            if *s {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    c.insert("layer_types".into(), json!(types));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, GgufValue)]) -> Vec<(String, GgufValue)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn llama_keys_become_a_config_and_unknown_keys_are_refused() {
        let base = [
            ("general.architecture", GgufValue::from("llama")),
            ("general.name", GgufValue::from("x")),
            ("llama.block_count", GgufValue::U32(2)),
            ("llama.context_length", GgufValue::U32(128)),
            ("llama.embedding_length", GgufValue::U32(64)),
            ("llama.feed_forward_length", GgufValue::U32(96)),
            ("llama.attention.head_count", GgufValue::U32(4)),
            ("llama.attention.head_count_kv", GgufValue::U32(2)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                GgufValue::F32(1e-6),
            ),
            ("llama.rope.freq_base", GgufValue::F32(10000.0)),
        ];
        let meta = kv(&base);
        let m = MetaReader::new(&meta);
        let facts = TensorFacts {
            tied: false,
            qkv_bias: false,
            n_vocab: 32,
        };
        let c = hf_config(&m, "llama", facts).unwrap();
        m.finish().unwrap();
        assert_eq!(c["rms_norm_eps"], json!(1e-6));
        assert_eq!(c["head_dim"], json!(16));
        assert_eq!(c["vocab_size"], json!(32));
        let cfg = crate::ArchConfig::from_json(c).unwrap();
        assert_eq!(cfg.family, Family::Llama);
        let mut more = meta.clone();
        more.push(("llama.rope.scaling.type".into(), GgufValue::from("linear")));
        let m = MetaReader::new(&more);
        hf_config(&m, "llama", facts).unwrap();
        let e = m.finish().unwrap_err();
        assert!(e.to_string().contains("llama.rope.scaling.type"), "{e}");
        assert!(family_of("deepseek2", 8).is_err());
    }
}
