//! GGUF architecture metadata, key for key and in the order llama.cpp's converter writes
//! them (`conversion/base.py` `TextModel.set_gguf_parameters`, plus the overrides in
//! `LlamaModel`, `Qwen2MoeModel`, `Gemma3Model`, `Phi3MiniModel`, `DeepseekV2Model`),
//! checked against the loaders in `src/models/*.cpp` of llama.cpp 0.3.36.
//!
//! Where the converter's output would make llama.cpp compute something else than the HF
//! model for configs written by transformers 5, we write what the loader needs instead
//! ([`Deviation`] lists them):
//! * Gemma3: the converter writes no `attention.sliding_window_pattern`, so the loader
//!   assumes "5 sliding, 1 full"; we write the per-layer pattern as a bool array.
//! * DeepSeek-V3 / GLM-4.7-Flash: transformers 5 configs have no `scoring_func`, so no
//!   `expert_gating_func` is written and the loader falls back to softmax; we write
//!   sigmoid (2).
//! * GLM-4.7-Flash: its config gives the dense layers as `mlp_layer_types`, not
//!   `first_k_dense_replace`, so the converter writes `leading_dense_block_count` 0; we
//!   count the leading dense layers.
//! * Qwen3-MoE / Mixtral with `norm_topk_prob: false`: the converter writes no
//!   `expert_weights_norm` and llama.cpp always renormalises for these architectures; we
//!   write `false` so that our reader computes what transformers does.
//! * Phi-3 LongRoPE: the converter derives `rope.scaling.attn_factor` from the max and
//!   original positions only; when the config's `factor` / `attention_factor` give
//!   transformers another value, we write that one.
//! * RoPE scaling keys and tensors: see `gguf_rope`.
//! * `general.name` containing `phi3` breaks llama.cpp's vocab loader for vocabularies
//!   without SentencePiece's special tokens: see [`llama_cpp_safe_name`].

use crate::config::{ArchConfig, Family, RouterScoring};
use crate::gguf_names::gguf_arch;
use crate::gguf_rope::{rope_scaling_keys, rope_scaling_params};
use crate::meta::{MetaList, MetaValue};
use crate::ArchError;
use serde_json::Value;

/// `general.quantization_version` (ggml's `GGML_QNT_VERSION`).
pub const GGML_QUANT_VERSION: u32 = 2;

/// llama.cpp's `llama_expert_gating_func_type` values.
pub const GATING_SOFTMAX: u32 = 1;
pub const GATING_SIGMOID: u32 = 2;

/// A key where we knowingly differ from the converter's output, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Deviation {
    pub key: String,
    pub converter: Option<MetaValue>,
    pub ours: MetaValue,
    pub why: &'static str,
}

fn u32v(x: usize) -> MetaValue {
    MetaValue::U32(x as u32)
}

/// The RoPE parameters of full-attention layers: `rope_parameters.full_attention`, else
/// `rope_parameters`, else the legacy top-level keys.
fn rope_params(raw: &Value) -> Option<&Value> {
    let p = raw.get("rope_parameters").filter(|v| v.is_object())?;
    Some(
        p.get("full_attention")
            .filter(|v| v.is_object())
            .unwrap_or(p),
    )
}

fn rope_theta_full(cfg: &ArchConfig) -> Option<f64> {
    rope_params(&cfg.raw)
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| cfg.raw.get("rope_theta"))
        .and_then(Value::as_f64)
}

fn rope_theta_swa(cfg: &ArchConfig) -> Option<f64> {
    cfg.raw
        .get("rope_parameters")
        .and_then(|p| p.get("sliding_attention"))
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
}

fn raw_usize(cfg: &ArchConfig, key: &str) -> Option<usize> {
    cfg.raw.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

/// `expert_weights_norm = false` for softmax-routed MoE configs with
/// `norm_topk_prob: false` (see the module notes: a deviation from the converter).
fn no_renormalisation(
    cfg: &ArchConfig,
    k: &dyn Fn(&str) -> String,
    m: &mut MetaList,
    dev: &mut Vec<Deviation>,
) {
    if cfg.moe.as_ref().is_some_and(|moe| !moe.norm_topk_prob) {
        let ours = MetaValue::Bool(false);
        dev.push(Deviation {
            key: k("expert_weights_norm"),
            converter: None,
            ours: ours.clone(),
            why: "norm_topk_prob is false; llama.cpp renormalises the chosen experts' weights for this architecture regardless",
        });
        m.set(k("expert_weights_norm"), ours);
    }
}

/// Number of dense layers before the first MoE layer, if the MoE layers form a suffix
/// (what `leading_dense_block_count` can express).
pub fn leading_dense_blocks(cfg: &ArchConfig) -> Result<usize, ArchError> {
    let lead = cfg.layers.iter().take_while(|l| !l.moe).count();
    if cfg.layers[lead..].iter().any(|l| !l.moe) {
        return Err(ArchError::Unrepresentable(format!(
            "dense layers {:?} do not form a leading block; deepseek2 GGUF cannot express this",
            cfg.layers
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.moe)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        )));
    }
    Ok(lead)
}

/// A `general.name` llama.cpp can load with this vocabulary. Its vocab loader matches the
/// lower-cased name against `phi3`/`phi-3` and then looks up `</s>`, `<unk>`, `<s>` and
/// `<|endoftext|>` by text, failing when one is missing (`llama-vocab.cpp`, per-token
/// attributes). When that would happen the trigger is split (`Phi3` becomes `Phi 3`).
pub fn llama_cpp_safe_name(name: &str, tokens: &[String]) -> String {
    let needed = ["</s>", "<unk>", "<s>", "<|endoftext|>"];
    if needed.iter().all(|t| tokens.iter().any(|x| x == t)) {
        return name.to_string();
    }
    let mut out = name.to_string();
    for trigger in ["phi-3", "phi3"] {
        while let Some(at) = out.to_ascii_lowercase().find(trigger) {
            let end = at + trigger.len();
            out = format!("{} 3{}", &out[..at + 3], &out[end..]);
        }
    }
    out
}

/// The architecture metadata for `general.file_type` = `file_type`, with `general.name`
/// = `name`. Returns the list and the keys where we deliberately differ from the converter.
pub fn arch_metadata(
    cfg: &ArchConfig,
    name: &str,
    file_type: u32,
) -> Result<(MetaList, Vec<Deviation>), ArchError> {
    let arch = gguf_arch(cfg.family);
    let k = |s: &str| format!("{arch}.{s}");
    let mut m = MetaList::default();
    let mut dev = Vec::new();
    m.set("general.architecture", MetaValue::Str(arch.into()));
    m.set("general.type", MetaValue::Str("model".into()));
    m.set("general.name", MetaValue::Str(name.into()));

    let eps = MetaValue::F32(cfg.rms_norm_eps as f32);
    let theta = rope_theta_full(cfg).unwrap_or(10000.0);
    let is_mla = cfg.mla.is_some();

    if cfg.family == Family::Phi3 {
        let orig_ctx = rope_params(&cfg.raw)
            .and_then(|p| p.get("original_max_position_embeddings"))
            .or_else(|| cfg.raw.get("original_max_position_embeddings"))
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(cfg.max_position_embeddings);
        m.set(k("context_length"), u32v(cfg.max_position_embeddings));
        m.set(k("rope.scaling.original_context_length"), u32v(orig_ctx));
        m.set(k("embedding_length"), u32v(cfg.hidden_size));
        m.set(k("feed_forward_length"), u32v(cfg.intermediate_size));
        m.set(k("block_count"), u32v(cfg.num_layers));
        m.set(k("attention.head_count"), u32v(cfg.num_heads));
        m.set(k("attention.head_count_kv"), u32v(cfg.num_kv_heads));
        m.set(k("attention.layer_norm_rms_epsilon"), eps);
        let rope_dims =
            (cfg.partial_rotary_factor * cfg.hidden_size as f64) as usize / cfg.num_heads;
        m.set(k("rope.dimension_count"), u32v(rope_dims));
        m.set(k("rope.freq_base"), MetaValue::F32(theta as f32));
        m.set("general.file_type", MetaValue::U32(file_type));
        m.set(
            k("attention.sliding_window"),
            u32v(raw_usize(cfg, "sliding_window").unwrap_or(0)),
        );
        if let Some(crate::RopeScaling::LongRope {
            attention_factor, ..
        }) = cfg.layers.first().map(|l| &l.rope_scaling)
        {
            // `Phi3MiniModel.generate_extra_tensors`: from max/original positions only
            let scale = cfg.max_position_embeddings as f64 / orig_ctx as f64;
            let conv = if scale > 1.0 {
                (1.0 + scale.ln() / (orig_ctx as f64).ln()).sqrt()
            } else {
                1.0
            };
            let ours = MetaValue::F32(*attention_factor as f32);
            if (conv as f32) != (*attention_factor as f32) {
                dev.push(Deviation {
                    key: k("rope.scaling.attn_factor"),
                    converter: Some(MetaValue::F32(conv as f32)),
                    ours: ours.clone(),
                    why: "the config's factor / attention_factor give transformers another cos/sin factor than max/original positions",
                });
            }
            m.set(k("rope.scaling.attn_factor"), ours);
        }
        m.set(
            "general.quantization_version",
            MetaValue::U32(GGML_QUANT_VERSION),
        );
        return Ok((m, dev));
    }

    // TextModel.set_gguf_parameters
    m.set(k("block_count"), u32v(cfg.num_layers));
    m.set(k("context_length"), u32v(cfg.max_position_embeddings));
    m.set(k("embedding_length"), u32v(cfg.hidden_size));
    m.set(k("feed_forward_length"), u32v(cfg.intermediate_size));
    m.set(k("attention.head_count"), u32v(cfg.num_heads));
    // MLA is written as MQA over the compressed latent: one kv head.
    m.set(
        k("attention.head_count_kv"),
        u32v(if is_mla { 1 } else { cfg.num_kv_heads }),
    );
    rope_scaling_keys(cfg, &k, &mut m);
    m.set(k("rope.freq_base"), MetaValue::F32(theta as f32));
    if let Some(t) = rope_theta_swa(cfg) {
        m.set(k("rope.freq_base_swa"), MetaValue::F32(t as f32));
    }
    m.set(k("attention.layer_norm_rms_epsilon"), eps.clone());
    if let Some(moe) = &cfg.moe {
        m.set(k("expert_count"), u32v(moe.n_experts));
        m.set(k("expert_used_count"), u32v(moe.top_k));
        // llama.cpp's llama / qwen3moe / gpt-oss graphs make every layer MoE
        // (`decoder_sparse_step` / `mlp_only_layers` have no GGUF key there)
        if !is_mla {
            if let Some(dense) = cfg.layers.iter().position(|l| !l.moe) {
                return Err(ArchError::Unrepresentable(format!(
                    "layer {dense} has a dense MLP (decoder_sparse_step / mlp_only_layers); {arch} GGUF makes every layer a mixture of experts"
                )));
            }
        }
    }
    if let Some(g) = raw_usize(cfg, "n_group") {
        m.set(k("expert_group_count"), u32v(g));
    }
    if let Some(g) = raw_usize(cfg, "topk_group") {
        m.set(k("expert_group_used_count"), u32v(g));
    }
    let scoring_key = ["score_function", "scoring_func", "score_func"]
        .iter()
        .find_map(|s| cfg.raw.get(*s).and_then(Value::as_str));
    if let Some(s) = scoring_key {
        m.set(
            k("expert_gating_func"),
            MetaValue::U32(if s == "sigmoid" {
                GATING_SIGMOID
            } else {
                GATING_SOFTMAX
            }),
        );
    }
    if let Some(hd) = raw_usize(cfg, "head_dim") {
        m.set(k("attention.key_length"), u32v(hd));
        m.set(k("attention.value_length"), u32v(hd));
    }
    m.set("general.file_type", MetaValue::U32(file_type));

    match cfg.family {
        Family::Llama | Family::Mistral | Family::Mixtral => {
            m.set(k("vocab_size"), u32v(cfg.vocab_size));
            let rope_dim = raw_usize(cfg, "head_dim").unwrap_or(cfg.hidden_size / cfg.num_heads);
            m.set(k("rope.dimension_count"), u32v(rope_dim));
            no_renormalisation(cfg, &k, &mut m, &mut dev);
        }
        Family::Qwen3Moe => {
            if let Some(x) = raw_usize(cfg, "moe_intermediate_size") {
                m.set(k("expert_feed_forward_length"), u32v(x));
            }
            if let Some(x) = raw_usize(cfg, "shared_expert_intermediate_size") {
                m.set(k("expert_shared_feed_forward_length"), u32v(x));
            }
            no_renormalisation(cfg, &k, &mut m, &mut dev);
        }
        Family::Gemma3 => {
            m.set(k("context_length"), u32v(cfg.max_position_embeddings));
            m.set(k("attention.head_count"), u32v(cfg.num_heads));
            m.set(k("attention.layer_norm_rms_epsilon"), eps);
            m.set(k("attention.key_length"), u32v(cfg.head_dim));
            m.set(k("attention.value_length"), u32v(cfg.head_dim));
            m.set(k("rope.freq_base"), MetaValue::F32(theta as f32));
            if let Some(c) = cfg
                .raw
                .get("final_logit_softcapping")
                .and_then(Value::as_f64)
                .filter(|c| *c != 0.0)
            {
                m.set(k("final_logit_softcapping"), MetaValue::F32(c as f32));
            }
            if cfg
                .raw
                .get("sliding_window_pattern")
                .and_then(Value::as_u64)
                != Some(1)
            {
                if let Some(w) = raw_usize(cfg, "sliding_window") {
                    m.set(k("attention.sliding_window"), u32v(w));
                }
            }
            m.set(k("attention.head_count_kv"), u32v(cfg.num_kv_heads));
            let pattern: Vec<bool> = cfg
                .layers
                .iter()
                .map(|l| l.sliding_window.is_some())
                .collect();
            if pattern.iter().any(|s| *s) {
                let ours = MetaValue::ArrBool(pattern);
                dev.push(Deviation {
                    key: k("attention.sliding_window_pattern"),
                    converter: None,
                    ours: ours.clone(),
                    why: "without it llama.cpp assumes 5 sliding layers then 1 full; the config's layer_types say otherwise",
                });
                m.set(k("attention.sliding_window_pattern"), ours);
            }
        }
        Family::DeepseekV3 | Family::Glm4MoeLite => {
            let mla = cfg.mla.as_ref().expect("MLA family has an MLA config");
            let moe = cfg.moe.as_ref().expect("MLA family has a MoE config");
            let conv_lead = raw_usize(cfg, "first_k_dense_replace").unwrap_or(0);
            let lead = leading_dense_blocks(cfg)?;
            if lead != conv_lead {
                dev.push(Deviation {
                    key: k("leading_dense_block_count"),
                    converter: Some(u32v(conv_lead)),
                    ours: u32v(lead),
                    why: "the converter reads only first_k_dense_replace; this config marks dense layers otherwise",
                });
            }
            m.set(k("leading_dense_block_count"), u32v(lead));
            m.set(k("vocab_size"), u32v(cfg.vocab_size));
            if let Some(q) = mla.q_lora_rank {
                m.set(k("attention.q_lora_rank"), u32v(q));
            }
            m.set(k("attention.kv_lora_rank"), u32v(mla.kv_lora_rank));
            m.set(
                k("attention.key_length"),
                u32v(mla.kv_lora_rank + mla.qk_rope_head_dim),
            );
            m.set(k("attention.value_length"), u32v(mla.kv_lora_rank));
            m.set(
                k("attention.key_length_mla"),
                u32v(mla.qk_nope_head_dim + mla.qk_rope_head_dim),
            );
            m.set(k("attention.value_length_mla"), u32v(mla.v_head_dim));
            m.set(
                k("expert_feed_forward_length"),
                u32v(moe.expert_intermediate_size),
            );
            m.set(k("expert_count"), u32v(moe.n_experts));
            m.set(k("expert_shared_count"), u32v(moe.n_shared_experts));
            if cfg
                .raw
                .get("routed_scaling_factor")
                .is_some_and(|v| !v.is_null())
            {
                m.set(
                    k("expert_weights_scale"),
                    MetaValue::F32(moe.routed_scaling_factor as f32),
                );
            }
            if cfg.raw.get("norm_topk_prob").and_then(Value::as_bool) == Some(true) {
                m.set(k("expert_weights_norm"), MetaValue::Bool(true));
            }
            m.set(k("rope.dimension_count"), u32v(mla.qk_rope_head_dim));
            if let Some(all) = rope_scaling_params(&cfg.raw)
                .and_then(|p| p.get("mscale_all_dim"))
                .and_then(Value::as_f64)
            {
                // the converter's deepseek2 convention: 0.1 * mscale_all_dim
                m.set(
                    k("rope.scaling.yarn_log_multiplier"),
                    MetaValue::F32((0.1 * all) as f32),
                );
            }
            if scoring_key.is_none() && moe.scoring == RouterScoring::Sigmoid {
                let ours = MetaValue::U32(GATING_SIGMOID);
                dev.push(Deviation {
                    key: k("expert_gating_func"),
                    converter: None,
                    ours: ours.clone(),
                    why: "without it llama.cpp's deepseek2 loader falls back to softmax routing",
                });
                m.set(k("expert_gating_func"), ours);
            }
        }
        Family::GptOss => {
            // `GptOssModel.set_gguf_parameters`
            let window = raw_usize(cfg, "sliding_window").unwrap_or(0);
            m.set(k("attention.sliding_window"), u32v(window));
            m.set(k("expert_feed_forward_length"), u32v(cfg.intermediate_size));
            if cfg.clamped_swiglu != Some(crate::ClampedSwiglu::GPT_OSS) {
                return Err(ArchError::Unrepresentable(format!(
                    "swiglu_alpha/swiglu_limit {:?} differ from the 1.702/7 llama.cpp hard-codes for gpt-oss",
                    cfg.clamped_swiglu
                )));
            }
            // llama.cpp's default: even layers sliding, odd layers full
            let pattern: Vec<bool> = cfg
                .layers
                .iter()
                .map(|l| l.sliding_window.is_some())
                .collect();
            let default = pattern.iter().enumerate().all(|(i, s)| *s == (i % 2 == 0));
            if !default && window > 0 {
                let ours = MetaValue::ArrBool(pattern);
                dev.push(Deviation {
                    key: k("attention.sliding_window_pattern"),
                    converter: None,
                    ours: ours.clone(),
                    why: "without it llama.cpp assumes alternating sliding/full layers; the config's layer_types say otherwise",
                });
                m.set(k("attention.sliding_window_pattern"), ours);
            }
        }
        Family::Qwen2 | Family::Qwen3 | Family::Phi3 => {}
    }
    m.set(
        "general.quantization_version",
        MetaValue::U32(GGML_QUANT_VERSION),
    );
    Ok((m, dev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_rope::check_gguf_rope;

    #[test]
    fn phi3_name_is_defused_only_when_needed() {
        let ours: Vec<String> = vec!["<|endoftext|>".into(), "a".into()];
        assert_eq!(llama_cpp_safe_name("Phi3", &ours), "Phi 3");
        assert_eq!(llama_cpp_safe_name("my-PHI-3-mini", &ours), "my-PHI 3-mini");
        assert_eq!(llama_cpp_safe_name("Llama", &ours), "Llama");
        let sp: Vec<String> = ["</s>", "<unk>", "<s>", "<|endoftext|>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(llama_cpp_safe_name("Phi3", &sp), "Phi3");
    }

    #[test]
    fn dense_layers_in_a_softmax_moe_are_unrepresentable() {
        let cfg = |extra: &str| {
            ArchConfig::from_json_str(&format!(
                r#"{{"architectures":["Qwen3MoeForCausalLM"],"hidden_size":8,"num_hidden_layers":2,
                "num_attention_heads":2,"vocab_size":4,"intermediate_size":8,"num_experts":4,
                "num_experts_per_tok":2{extra}}}"#
            ))
            .unwrap()
        };
        assert!(arch_metadata(&cfg(""), "m", 1).is_ok());
        for extra in [r#","mlp_only_layers":[0]"#, r#","decoder_sparse_step":2"#] {
            let e = arch_metadata(&cfg(extra), "m", 1).unwrap_err();
            assert!(matches!(e, ArchError::Unrepresentable(_)), "{extra}: {e}");
        }
    }

    fn llama_with(extra: &str) -> ArchConfig {
        ArchConfig::from_json_str(&format!(
            r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":8,"num_hidden_layers":2,
            "num_attention_heads":2,"vocab_size":4,"intermediate_size":8,
            "max_position_embeddings":256{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn rope_scaling_keys_as_the_converter_writes_them() {
        let yarn = llama_with(
            r#","rope_parameters":{"rope_type":"yarn","factor":4.0,"rope_theta":10000.0,
            "original_max_position_embeddings":64,"beta_fast":16.0}"#,
        );
        let (m, _) = arch_metadata(&yarn, "t", 1).unwrap();
        assert_eq!(
            m.get("llama.rope.scaling.type"),
            Some(&MetaValue::Str("yarn".into()))
        );
        assert_eq!(
            m.get("llama.rope.scaling.original_context_length"),
            Some(&MetaValue::U32(64))
        );
        assert_eq!(
            m.get("llama.rope.scaling.yarn_beta_fast"),
            Some(&MetaValue::F32(16.0))
        );
        assert_eq!(m.get("llama.rope.scaling.yarn_beta_slow"), None);
        check_gguf_rope(&yarn).unwrap();
        // legacy spelling, linear
        let lin = llama_with(r#","rope_scaling":{"type":"linear","factor":2.0}"#);
        let (m, _) = arch_metadata(&lin, "t", 1).unwrap();
        assert_eq!(
            m.get("llama.rope.scaling.factor"),
            Some(&MetaValue::F32(2.0))
        );
        // llama3 goes into rope_freqs.weight, not keys
        let l3 = llama_with(
            r#","rope_parameters":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":64}"#,
        );
        let (m, _) = arch_metadata(&l3, "t", 1).unwrap();
        assert_eq!(m.get("llama.rope.scaling.type"), None);
        let no_truncate = llama_with(
            r#","rope_parameters":{"rope_type":"yarn","factor":4.0,"truncate":false,
            "original_max_position_embeddings":64}"#,
        );
        assert!(matches!(
            check_gguf_rope(&no_truncate),
            Err(ArchError::Unrepresentable(_))
        ));
    }

    #[test]
    fn non_leading_dense_layers_are_rejected() {
        let mut cfg = ArchConfig::from_json_str(
            r#"{"architectures":["DeepseekV3ForCausalLM"],"hidden_size":8,"num_hidden_layers":3,
            "num_attention_heads":2,"vocab_size":4,"intermediate_size":8,"kv_lora_rank":4,
            "qk_nope_head_dim":2,"qk_rope_head_dim":2,"v_head_dim":2,"n_routed_experts":4,
            "num_experts_per_tok":2,"moe_intermediate_size":4,"first_k_dense_replace":1}"#,
        )
        .unwrap();
        assert_eq!(leading_dense_blocks(&cfg).unwrap(), 1);
        let (m, dev) = arch_metadata(&cfg, "t", 1).unwrap();
        assert_eq!(
            m.get("deepseek2.expert_gating_func"),
            Some(&MetaValue::U32(GATING_SIGMOID))
        );
        assert_eq!(
            m.get("deepseek2.attention.head_count_kv"),
            Some(&MetaValue::U32(1))
        );
        assert_eq!(dev.len(), 1, "{dev:?}");
        cfg.layers[2].moe = false;
        assert!(leading_dense_blocks(&cfg).is_err());
    }
}
