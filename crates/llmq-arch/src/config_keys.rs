//! Every top-level `config.json` key is accounted for: read by [`crate::config`], on an
//! explicit allow-list of keys that never change a forward pass (training-only settings,
//! generation defaults, bookkeeping), or harmless only at a neutral value. Anything else
//! is refused (exit 8, naming key and value): a key we do not know may change the
//! computation, and a plausible wrong number is worse than a refusal.
//!
//! The lists follow transformers' config classes of the families we implement (their
//! `to_dict()` keys, plus the transformers-4 spellings and the DeepSeek remote-code keys).

use crate::config::Family;
use crate::ArchError;
use serde_json::Value;

/// Keys `ArchConfig::from_json` (or the exporters) read, for every family.
const READ: &[&str] = &[
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "hidden_act",
    "hidden_activation",
    "attention_bias",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "partial_rotary_factor",
    "layer_types",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "bos_token_id",
    "eos_token_id",
    "dtype",
    "torch_dtype",
    "attn_logit_softcapping",
    "quantization_config",
    // MoE
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
    "first_k_dense_replace",
    "mlp_layer_types",
    "n_routed_experts",
    "n_shared_experts",
    "n_group",
    "topk_group",
    "routed_scaling_factor",
    // validated by `check_routing`
    "scoring_func",
    "score_function",
    "score_func",
    "topk_method",
    // checked against num_experts_per_tok
    "experts_per_token",
    // MLA
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "rope_interleave",
    // Phi-3
    "original_max_position_embeddings",
    // Gemma 3
    "query_pre_attn_scalar",
    "final_logit_softcapping",
    "sliding_window_pattern",
    "_sliding_window_pattern",
    "rope_local_base_freq",
    // GPT-OSS
    "swiglu_alpha",
    "swiglu_limit",
];

/// Keys that never change a forward pass: training-only settings (dropout, auxiliary
/// losses, router noise, tensor-parallel slicing), generation defaults, bookkeeping.
const HARMLESS: &[&str] = &[
    "_name_or_path",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "attn_implementation",
    "transformers_version",
    "auto_map",
    "use_cache",
    "initializer_range",
    "attention_dropout",
    "embd_pdrop",
    "resid_pdrop",
    "hidden_dropout",
    "output_router_logits",
    "router_aux_loss_coef",
    "router_jitter_noise",
    "aux_loss_alpha",
    "seq_aux",
    "ep_size",
    "pretraining_tp",
    "num_nextn_predict_layers",
    "pad_token_id",
    "sep_token_id",
    // GPT-OSS's released config: the original context of its YaRN (transformers reads
    // `rope_scaling.original_max_position_embeddings` instead)
    "initial_context_length",
    "decoder_start_token_id",
    "cache_implementation",
    "id2label",
    "label2id",
    "problem_type",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "torchscript",
    "use_return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "add_cross_attention",
    "cross_attention_hidden_size",
    "tie_encoder_decoder",
    "pruned_heads",
    "tokenizer_class",
    "prefix",
    "task_specific_params",
    "finetuning_task",
    "tf_legacy_loss",
    "use_bfloat16",
    // generation defaults (transformers 4 kept them in config.json)
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// Keys harmless only at a neutral value (anything else changes the computation in
/// a way we do not implement).
fn neutral(key: &str, v: &Value) -> Option<bool> {
    let falsy = v.is_null() || v.as_bool() == Some(false);
    Some(match key {
        "mlp_bias" | "use_bidirectional_attention" => falsy,
        "moe_layer_freq" => v.is_null() || v.as_u64() == Some(1),
        // GLM's q/k RMSNorm switch (not implemented for GLM-4.7-Flash)
        "use_qk_norm" => falsy,
        "qk_head_dim" => true, // checked against nope + rope below
        _ => return None,
    })
}

fn refuse(key: &str, v: &Value, why: &str) -> ArchError {
    ArchError::UnsupportedValue {
        key: key.into(),
        value: format!("{v} ({why})"),
    }
}

/// Check every top-level key of `v` (a `config.json` of `family`).
pub fn check_keys(family: Family, v: &Value) -> Result<(), ArchError> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    for (key, value) in obj {
        if READ.contains(&key.as_str()) || HARMLESS.contains(&key.as_str()) {
            continue;
        }
        match neutral(key, value) {
            Some(true) => continue,
            Some(false) => return Err(refuse(key, value, "not implemented at this value")),
            None => {
                return Err(refuse(
                    key,
                    value,
                    "a key this version does not know; it may change the computation, so it is refused rather than ignored",
                ))
            }
        }
    }
    // GPT-OSS's released config repeats the top-k as `experts_per_token`
    if let Some(e) = v.get("experts_per_token").filter(|x| !x.is_null()) {
        if e != v.get("num_experts_per_tok").unwrap_or(&Value::Null) {
            return Err(refuse(
                "experts_per_token",
                e,
                "differs from num_experts_per_tok, which transformers reads",
            ));
        }
    }
    check_routing(family, v)?;
    check_mla_dims(v)?;
    Ok(())
}

/// `scoring_func` / `topk_method` (DeepSeek remote-code spellings): only what the family's
/// router computes.
fn check_routing(family: Family, v: &Value) -> Result<(), ArchError> {
    let sigmoid_family = matches!(family, Family::DeepseekV3 | Family::Glm4MoeLite);
    for key in ["scoring_func", "score_function", "score_func"] {
        if let Some(s) = v.get(key).filter(|x| !x.is_null()) {
            let want = if sigmoid_family { "sigmoid" } else { "softmax" };
            if s.as_str() != Some(want) {
                return Err(refuse(key, s, &format!("this family's router uses {want}")));
            }
        }
    }
    if let Some(m) = v.get("topk_method").filter(|x| !x.is_null()) {
        let groups = v.get("n_group").and_then(Value::as_u64).unwrap_or(1);
        let ok = match m.as_str() {
            // bias-corrected, group-limited top-k: what the sigmoid router computes
            Some("noaux_tc") => sigmoid_family,
            // plain top-k: the same when there are no groups to limit
            Some("greedy") => groups <= 1,
            _ => false,
        };
        if !ok {
            return Err(refuse(
                "topk_method",
                m,
                "only noaux_tc (DeepSeek-V3) and greedy without groups are implemented",
            ));
        }
    }
    Ok(())
}

/// `qk_head_dim`, where given, is `qk_nope_head_dim + qk_rope_head_dim`.
fn check_mla_dims(v: &Value) -> Result<(), ArchError> {
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    if let (Some(qk), Some(nope), Some(rope)) = (
        u("qk_head_dim"),
        u("qk_nope_head_dim"),
        u("qk_rope_head_dim"),
    ) {
        if qk != nope + rope {
            return Err(ArchError::BadValue {
                key: "qk_head_dim".into(),
                why: format!("{qk} is not qk_nope_head_dim {nope} + qk_rope_head_dim {rope}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_keys_and_non_neutral_values_are_refused_by_name() {
        let ok = json!({"architectures": ["LlamaForCausalLM"], "use_cache": true,
            "mlp_bias": false, "pretraining_tp": 2, "temperature": 0.7});
        check_keys(Family::Llama, &ok).unwrap();
        for (k, val) in [
            ("mlp_bias", json!(true)),
            ("use_bidirectional_attention", json!(true)),
            ("layer_norm_type", json!("layernorm")),
            ("moe_layer_freq", json!(2)),
        ] {
            let mut c = ok.clone();
            c[k] = val;
            let e = check_keys(Family::Llama, &c).unwrap_err();
            assert!(
                matches!(&e, ArchError::UnsupportedValue { key, .. } if key == k),
                "{k}: {e}"
            );
        }
    }

    #[test]
    fn gpt_oss_released_keys() {
        let c = json!({"experts_per_token": 4, "num_experts_per_tok": 4,
            "initial_context_length": 4096, "swiglu_limit": 7.0});
        check_keys(Family::GptOss, &c).unwrap();
        let mut bad = c.clone();
        bad["experts_per_token"] = json!(2);
        assert!(check_keys(Family::GptOss, &bad).is_err());
    }

    #[test]
    fn routing_switches_match_the_family() {
        let ds = |extra: Value| {
            let mut c = json!({"n_group": 8});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            check_keys(Family::DeepseekV3, &c)
        };
        ds(json!({"scoring_func": "sigmoid", "topk_method": "noaux_tc"})).unwrap();
        assert!(ds(json!({"scoring_func": "softmax"})).is_err());
        assert!(ds(json!({"topk_method": "group_limited_greedy"})).is_err());
        assert!(ds(json!({"topk_method": "greedy"})).is_err());
        check_keys(
            Family::Qwen3Moe,
            &json!({"scoring_func": "softmax", "topk_method": "greedy"}),
        )
        .unwrap();
        assert!(check_keys(Family::Qwen3Moe, &json!({"scoring_func": "sigmoid"})).is_err());
    }
}
