//! The typed model configuration, read from a Hugging Face `config.json` (transformers
//! 4 and 5 spellings: `rope_theta` or `rope_parameters`, `torch_dtype` or `dtype`).
//! Every behaviour is read from the config, never assumed from a fixture.

use crate::rope::RopeScaling;
use crate::ArchError;
use serde_json::Value;
use std::path::Path;

/// The name callers of [`ArchConfig::from_path`] have used for its errors: the crate's
/// one error type.
pub type ConfigError = crate::ArchError;

/// The architecture families this project implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
    Mixtral,
    Qwen3Moe,
    DeepseekV3,
    Glm4MoeLite,
    GptOss,
}

impl Family {
    const TABLE: &'static [(&'static str, Family)] = &[
        ("LlamaForCausalLM", Family::Llama),
        ("MistralForCausalLM", Family::Mistral),
        ("Qwen2ForCausalLM", Family::Qwen2),
        ("Qwen3ForCausalLM", Family::Qwen3),
        ("Gemma3ForCausalLM", Family::Gemma3),
        ("Phi3ForCausalLM", Family::Phi3),
        ("MixtralForCausalLM", Family::Mixtral),
        ("Qwen3MoeForCausalLM", Family::Qwen3Moe),
        ("DeepseekV3ForCausalLM", Family::DeepseekV3),
        ("Glm4MoeLiteForCausalLM", Family::Glm4MoeLite),
        ("GptOssForCausalLM", Family::GptOss),
    ];

    /// The family of a transformers architecture class name.
    pub fn from_architecture(name: &str) -> Option<Family> {
        Self::TABLE
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    /// The transformers class name of this family.
    pub fn architecture(self) -> &'static str {
        Self::TABLE
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap()
    }

    pub(crate) fn supported_list() -> String {
        Self::TABLE
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How a router turns logits into expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterScoring {
    /// softmax over all experts, then top-k (Mixtral, Qwen3-MoE)
    Softmax,
    /// sigmoid per expert, bias-corrected group-limited choice (DeepSeek-V3, GLM-4.7-Flash)
    Sigmoid,
}

/// Mixture-of-experts settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_experts: usize,
    pub top_k: usize,
    /// intermediate size of each routed expert
    pub expert_intermediate_size: usize,
    /// number of always-on shared experts (each of `expert_intermediate_size`)
    pub n_shared_experts: usize,
    pub norm_topk_prob: bool,
    pub scoring: RouterScoring,
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f64,
}

/// GPT-OSS's clamped SwiGLU of its experts: `g = min(gate, limit)`,
/// `u = clamp(up, -limit, limit)`, output `(u + 1) · g · σ(alpha · g)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClampedSwiglu {
    pub alpha: f64,
    pub limit: f64,
}

impl ClampedSwiglu {
    /// The constants llama.cpp hard-codes for `gpt-oss` (`LLM_FFN_SWIGLU_OAI_MOE`).
    pub const GPT_OSS: ClampedSwiglu = ClampedSwiglu {
        alpha: 1.702,
        limit: 7.0,
    };
}

/// Multi-head latent attention settings (DeepSeek-V2/V3 style).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// `None` when q is projected directly (no q LoRA)
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// pairs (2i, 2i+1) rotate together (else rotate-half)
    pub rope_interleave: bool,
}

/// Per-layer settings that vary along the stack.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// `Some(w)`: key j visible from query i when i - w < j <= i
    pub sliding_window: Option<usize>,
    pub rope_theta: f64,
    /// how this layer's RoPE frequencies are scaled
    pub rope_scaling: RopeScaling,
    /// whether the MLP of this layer is a mixture of experts
    pub moe: bool,
}

/// A decoder-only model's configuration.
#[derive(Debug, Clone)]
pub struct ArchConfig {
    pub family: Family,
    /// transformers class name, e.g. `LlamaForCausalLM`
    pub architecture: String,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// dense MLP intermediate size
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// `silu`, `gelu_pytorch_tanh`, ...
    pub hidden_act: String,
    /// bias on q/k/v projections
    pub attention_bias: bool,
    /// per-head RMSNorm on q and k before RoPE
    pub qk_norm: bool,
    /// fraction of head_dim that is rotated
    pub partial_rotary_factor: f64,
    /// attention scale override: scores are multiplied by `query_pre_attn_scalar^-0.5`
    pub query_pre_attn_scalar: Option<f64>,
    /// a learned logit per head joins each softmax (GPT-OSS's attention sinks)
    pub attention_sinks: bool,
    /// the experts' activation when it is GPT-OSS's clamped SwiGLU
    pub clamped_swiglu: Option<ClampedSwiglu>,
    pub moe: Option<MoeConfig>,
    pub mla: Option<MlaConfig>,
    pub layers: Vec<LayerSpec>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `bfloat16`, `float16`, `float32` as written in the config
    pub dtype: String,
    /// the parsed JSON, for keys not modelled here
    pub raw: Value,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn req_usize(v: &Value, key: &str) -> Result<usize, ArchError> {
    let x = get(v, key).ok_or_else(|| ArchError::MissingKey(key.into()))?;
    x.as_u64()
        .map(|u| u as usize)
        .filter(|u| *u > 0)
        .ok_or_else(|| ArchError::BadValue {
            key: key.into(),
            why: format!("expected a positive integer, found {x}"),
        })
}

fn opt_usize(v: &Value, key: &str) -> Result<Option<usize>, ArchError> {
    match get(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_u64()
            .map(|u| Some(u as usize))
            .ok_or_else(|| ArchError::BadValue {
                key: key.into(),
                why: format!("expected an integer, found {x}"),
            }),
    }
}

fn opt_f64(v: &Value, key: &str) -> Result<Option<f64>, ArchError> {
    match get(v, key) {
        None => Ok(None),
        Some(x) => x.as_f64().map(Some).ok_or_else(|| ArchError::BadValue {
            key: key.into(),
            why: format!("expected a number, found {x}"),
        }),
    }
}

fn opt_bool(v: &Value, key: &str) -> Option<bool> {
    get(v, key).and_then(Value::as_bool)
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// RoPE theta for a layer type (`full_attention`, `sliding_attention`), or the global one.
fn rope_theta(v: &Value, layer_type: Option<&str>) -> Result<Option<f64>, ArchError> {
    if let Some(p) = get(v, "rope_parameters") {
        if let Some(lt) = layer_type {
            if let Some(per) = get(p, lt) {
                return opt_f64(per, "rope_theta");
            }
        }
        if let Some(t) = opt_f64(p, "rope_theta")? {
            return Ok(Some(t));
        }
    }
    opt_f64(v, "rope_theta")
}

/// The RoPE parameter dict of a layer type: `rope_parameters[layer_type]` when the
/// config has one per layer type, else `rope_parameters`, else legacy `rope_scaling`.
/// Gemma 3's legacy `rope_scaling` concerns its global layers only.
fn rope_scaling(
    v: &Value,
    family: Family,
    layer_type: Option<&str>,
) -> Result<RopeScaling, ArchError> {
    let params = get(v, "rope_parameters")
        .filter(|p| p.is_object())
        .or_else(|| get(v, "rope_scaling").filter(|p| p.is_object()));
    let Some(p) = params else {
        return Ok(RopeScaling::Default);
    };
    let per_type = ["full_attention", "sliding_attention"]
        .iter()
        .any(|k| get(p, k).is_some());
    let p = if per_type {
        match get(p, layer_type.unwrap_or("full_attention")) {
            Some(one) => one,
            None => return Ok(RopeScaling::Default),
        }
    } else if family == Family::Gemma3 && layer_type == Some("sliding_attention") {
        return Ok(RopeScaling::Default);
    } else {
        p
    };
    RopeScaling::from_params(p, v)
}

/// The gated MLP activations the engine computes, per family; anything else is refused.
fn check_hidden_act(family: Family, act: &str) -> Result<(), ArchError> {
    let ok = match family {
        Family::Gemma3 => matches!(act, "gelu_pytorch_tanh" | "gelu_new"),
        _ => matches!(act, "silu" | "swish"),
    };
    if ok {
        Ok(())
    } else {
        Err(ArchError::UnsupportedValue {
            key: "hidden_act".into(),
            value: format!("\"{act}\""),
        })
    }
}

impl ArchConfig {
    /// Read `config.json` from a model folder (or the file itself).
    pub fn from_path(path: &Path) -> Result<ArchConfig, ArchError> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ArchError::Io {
            path: file.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Parse the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<ArchConfig, ArchError> {
        Self::from_json(serde_json::from_str(text)?)
    }

    /// Parse an already-decoded `config.json`.
    pub fn from_json(v: Value) -> Result<ArchConfig, ArchError> {
        crate::validate::check_raw(&v)?;
        // Multimodal wrappers keep the language model under `text_config`.
        let architecture = get(&v, "architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .ok_or_else(|| ArchError::MissingKey("architectures".into()))?
            .to_string();
        let family = Family::from_architecture(&architecture)
            .ok_or_else(|| ArchError::Unsupported(architecture.clone()))?;
        crate::config_keys::check_keys(family, &v)?;
        let model_type = get(&v, "model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();

        let hidden_size = req_usize(&v, "hidden_size")?;
        let num_layers = req_usize(&v, "num_hidden_layers")?;
        let num_heads = req_usize(&v, "num_attention_heads")?;
        let num_kv_heads = opt_usize(&v, "num_key_value_heads")?.unwrap_or(num_heads);
        let vocab_size = req_usize(&v, "vocab_size")?;
        let intermediate_size = req_usize(&v, "intermediate_size")?;
        let rms_norm_eps = opt_f64(&v, "rms_norm_eps")?.unwrap_or(1e-6);
        if num_heads % num_kv_heads != 0 {
            return Err(ArchError::BadValue {
                key: "num_key_value_heads".into(),
                why: format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            });
        }

        let mla = match family {
            Family::DeepseekV3 | Family::Glm4MoeLite => Some(MlaConfig {
                q_lora_rank: opt_usize(&v, "q_lora_rank")?,
                kv_lora_rank: req_usize(&v, "kv_lora_rank")?,
                qk_nope_head_dim: req_usize(&v, "qk_nope_head_dim")?,
                qk_rope_head_dim: req_usize(&v, "qk_rope_head_dim")?,
                v_head_dim: req_usize(&v, "v_head_dim")?,
                rope_interleave: opt_bool(&v, "rope_interleave").unwrap_or(true),
            }),
            _ => None,
        };
        // For MLA, `head_dim` is HF's alias of qk_rope_head_dim; the q/k head is nope+rope.
        let head_dim = match &mla {
            Some(m) => m.qk_nope_head_dim + m.qk_rope_head_dim,
            None => opt_usize(&v, "head_dim")?.unwrap_or(hidden_size / num_heads),
        };

        let moe = match family {
            Family::Mixtral | Family::Qwen3Moe => Some(MoeConfig {
                n_experts: opt_usize(&v, "num_local_experts")?
                    .or(opt_usize(&v, "num_experts")?)
                    .ok_or_else(|| ArchError::MissingKey("num_local_experts".into()))?,
                top_k: req_usize(&v, "num_experts_per_tok")?,
                expert_intermediate_size: opt_usize(&v, "moe_intermediate_size")?
                    .unwrap_or(intermediate_size),
                n_shared_experts: 0,
                // transformers' Mixtral always renormalises (it has no such switch);
                // Qwen3-MoE reads it, default false
                norm_topk_prob: family == Family::Mixtral
                    || opt_bool(&v, "norm_topk_prob").unwrap_or(false),
                scoring: RouterScoring::Softmax,
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 1.0,
            }),
            Family::DeepseekV3 | Family::Glm4MoeLite => Some(MoeConfig {
                n_experts: req_usize(&v, "n_routed_experts")?,
                top_k: req_usize(&v, "num_experts_per_tok")?,
                expert_intermediate_size: req_usize(&v, "moe_intermediate_size")?,
                n_shared_experts: opt_usize(&v, "n_shared_experts")?.unwrap_or(0),
                norm_topk_prob: opt_bool(&v, "norm_topk_prob").unwrap_or(true),
                scoring: RouterScoring::Sigmoid,
                n_group: opt_usize(&v, "n_group")?.unwrap_or(1),
                topk_group: opt_usize(&v, "topk_group")?.unwrap_or(1),
                routed_scaling_factor: opt_f64(&v, "routed_scaling_factor")?.unwrap_or(1.0),
            }),
            Family::GptOss => Some(MoeConfig {
                n_experts: opt_usize(&v, "num_local_experts")?
                    .or(opt_usize(&v, "num_experts")?)
                    .ok_or_else(|| ArchError::MissingKey("num_local_experts".into()))?,
                top_k: req_usize(&v, "num_experts_per_tok")?,
                expert_intermediate_size: intermediate_size,
                n_shared_experts: 0,
                // top-k of the (biased) logits, softmax over those k: the same weights as
                // a softmax over all experts renormalised over the chosen
                norm_topk_prob: true,
                scoring: RouterScoring::Softmax,
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 1.0,
            }),
            _ => None,
        };

        // Which layers are MoE.
        let moe_layer = |i: usize| -> Result<bool, ArchError> {
            if moe.is_none() {
                return Ok(false);
            }
            if let Some(types) = get(&v, "mlp_layer_types").and_then(Value::as_array) {
                return Ok(types.get(i).and_then(Value::as_str) == Some("sparse"));
            }
            if let Some(k) = opt_usize(&v, "first_k_dense_replace")? {
                if i < k {
                    return Ok(false);
                }
            }
            if let Some(only) = get(&v, "mlp_only_layers").and_then(Value::as_array) {
                if only.iter().any(|x| x.as_u64() == Some(i as u64)) {
                    return Ok(false);
                }
            }
            let step = opt_usize(&v, "decoder_sparse_step")?.unwrap_or(1);
            Ok((i + 1).is_multiple_of(step))
        };

        // Sliding window per layer: `layer_types` when present (Gemma3), else the global
        // `sliding_window` (Mistral/Mixtral/Qwen with use_sliding_window).
        let sliding = opt_usize(&v, "sliding_window")?;
        let layer_types: Option<Vec<String>> =
            get(&v, "layer_types").and_then(Value::as_array).map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or("full_attention").to_string())
                    .collect()
            });
        if let Some(lt) = &layer_types {
            if lt.len() != num_layers {
                return Err(ArchError::BadValue {
                    key: "layer_types".into(),
                    why: format!("{} entries for {num_layers} layers", lt.len()),
                });
            }
        }
        let use_sliding_flag = opt_bool(&v, "use_sliding_window");
        // transformers-4 configs without `layer_types`: Qwen slides from
        // `max_window_layers` on, Gemma 3 every layer but each `sliding_window_pattern`-th
        let max_window_layers = opt_usize(&v, "max_window_layers")?.unwrap_or(0);
        let gemma_pattern = opt_usize(&v, "sliding_window_pattern")?
            .or(opt_usize(&v, "_sliding_window_pattern")?)
            .unwrap_or(6)
            .max(1);
        let global_theta = rope_theta(&v, None)?.unwrap_or(10000.0);
        // Gemma 3's transformers-4 spelling of its local layers' base
        let local_theta = match family {
            Family::Gemma3 => Some(opt_f64(&v, "rope_local_base_freq")?.unwrap_or(10000.0)),
            _ => None,
        };
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let lt = layer_types.as_ref().map(|t| t[i].as_str());
            let window = match lt {
                Some("sliding_attention") => {
                    Some(sliding.ok_or_else(|| ArchError::MissingKey("sliding_window".into()))?)
                }
                Some(_) => None,
                None => match (family, use_sliding_flag) {
                    (_, Some(false)) => None,
                    (Family::Gemma3, _) => sliding.filter(|_| (i + 1) % gemma_pattern != 0),
                    // Qwen's `use_sliding_window` defaults to false; Qwen2/Qwen3 slide
                    // from `max_window_layers` on, Qwen3-MoE everywhere
                    (Family::Qwen2 | Family::Qwen3, Some(true)) => {
                        sliding.filter(|_| i >= max_window_layers)
                    }
                    (Family::Qwen3Moe, Some(true)) => sliding,
                    (Family::Qwen2 | Family::Qwen3 | Family::Qwen3Moe, None) => None,
                    // transformers' Llama and DeepSeek attention have no sliding window
                    (Family::Llama | Family::DeepseekV3 | Family::Glm4MoeLite, _) => None,
                    _ => sliding,
                },
            };
            let legacy_local = layer_types.is_none() && window.is_some();
            let theta = match (local_theta, legacy_local) {
                (Some(t), true) if get(&v, "rope_parameters").is_none() => t,
                _ => rope_theta(&v, lt)?.unwrap_or(global_theta),
            };
            layers.push(LayerSpec {
                sliding_window: window,
                rope_theta: theta,
                rope_scaling: rope_scaling(&v, family, lt)?,
                moe: moe_layer(i)?,
            });
        }

        let partial_rotary_factor = get(&v, "rope_parameters")
            .and_then(|p| opt_f64(p, "partial_rotary_factor").ok().flatten())
            .or(opt_f64(&v, "partial_rotary_factor")?)
            .unwrap_or(1.0);
        // only Phi-3 (of our families) rotates part of the head in transformers
        if partial_rotary_factor != 1.0 && family != Family::Phi3 {
            return Err(ArchError::UnsupportedValue {
                key: "partial_rotary_factor".into(),
                value: partial_rotary_factor.to_string(),
            });
        }
        let rot_dims = match &mla {
            Some(m) => m.qk_rope_head_dim,
            None => (head_dim as f64 * partial_rotary_factor) as usize,
        };
        for l in &layers {
            if let RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } = &l.rope_scaling
            {
                for (k, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if f.len() != rot_dims / 2 {
                        return Err(ArchError::BadValue {
                            key: k.into(),
                            why: format!("{} values for {} rotary pairs", f.len(), rot_dims / 2),
                        });
                    }
                }
            }
        }

        let hidden_act = get(&v, "hidden_act")
            .or(get(&v, "hidden_activation"))
            .and_then(Value::as_str)
            .unwrap_or(if family == Family::Gemma3 {
                "gelu_pytorch_tanh"
            } else {
                "silu"
            })
            .to_string();
        check_hidden_act(family, &hidden_act)?;
        // attention-score soft-capping (Gemma 2 style) is not computed by the engine
        if let Some(cap) = get(&v, "attn_logit_softcapping").filter(|c| c.as_f64() != Some(0.0)) {
            return Err(ArchError::UnsupportedValue {
                key: "attn_logit_softcapping".into(),
                value: cap.to_string(),
            });
        }
        let clamped_swiglu = match family {
            Family::GptOss => Some(ClampedSwiglu {
                alpha: opt_f64(&v, "swiglu_alpha")?.unwrap_or(ClampedSwiglu::GPT_OSS.alpha),
                limit: opt_f64(&v, "swiglu_limit")?.unwrap_or(ClampedSwiglu::GPT_OSS.limit),
            }),
            _ => None,
        };
        let attention_bias = match family {
            Family::Qwen2 => true,
            Family::GptOss => opt_bool(&v, "attention_bias").unwrap_or(true),
            _ => opt_bool(&v, "attention_bias").unwrap_or(false),
        };
        let qk_norm = matches!(family, Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3);
        let dtype = get(&v, "dtype")
            .or(get(&v, "torch_dtype"))
            .and_then(Value::as_str)
            .unwrap_or("float32")
            .to_string();
        let tie_word_embeddings =
            opt_bool(&v, "tie_word_embeddings").unwrap_or(family == Family::Gemma3);

        let cfg = ArchConfig {
            family,
            architecture,
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            max_position_embeddings: opt_usize(&v, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings,
            hidden_act,
            attention_bias,
            qk_norm,
            partial_rotary_factor,
            query_pre_attn_scalar: opt_f64(&v, "query_pre_attn_scalar")?,
            attention_sinks: family == Family::GptOss,
            clamped_swiglu,
            moe,
            mla,
            layers,
            bos_token_id: get(&v, "bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_ids: token_ids(get(&v, "eos_token_id")),
            dtype,
            raw: v,
        };
        crate::validate::check_config(&cfg)?;
        Ok(cfg)
    }

    /// Query heads per key/value head.
    pub fn gqa_ratio(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOE: &str = r#""hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,
        "vocab_size":4,"intermediate_size":8,"num_experts_per_tok":2"#;

    #[test]
    fn norm_topk_prob_as_transformers_reads_it() {
        let cfg = |arch: &str, extra: &str| {
            ArchConfig::from_json_str(&format!(
                r#"{{"architectures":["{arch}"],{MOE},"num_local_experts":4{extra}}}"#
            ))
            .unwrap()
            .moe
            .unwrap()
            .norm_topk_prob
        };
        assert!(cfg("MixtralForCausalLM", r#","norm_topk_prob":false"#));
        assert!(!cfg("Qwen3MoeForCausalLM", ""));
        assert!(!cfg("Qwen3MoeForCausalLM", r#","norm_topk_prob":false"#));
        assert!(cfg("Qwen3MoeForCausalLM", r#","norm_topk_prob":true"#));
    }

    #[test]
    fn rope_scaling_per_layer_type_and_refused_activations() {
        let c = ArchConfig::from_json_str(
            r#"{"architectures":["Gemma3ForCausalLM"],"hidden_size":8,"num_hidden_layers":2,
            "num_attention_heads":2,"vocab_size":4,"intermediate_size":8,"sliding_window":4,
            "layer_types":["sliding_attention","full_attention"],
            "rope_parameters":{"sliding_attention":{"rope_type":"default","rope_theta":10000.0},
              "full_attention":{"rope_type":"linear","factor":8.0,"rope_theta":1000000.0}}}"#,
        )
        .unwrap();
        assert_eq!(c.layers[0].rope_scaling, RopeScaling::Default);
        assert_eq!(
            c.layers[1].rope_scaling,
            RopeScaling::Linear { factor: 8.0 }
        );
        assert_eq!(c.layers[1].rope_theta, 1e6);
        let e = ArchConfig::from_json_str(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":8,"num_hidden_layers":2,
            "num_attention_heads":2,"vocab_size":4,"intermediate_size":8,"hidden_act":"relu"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ArchError::UnsupportedValue { key, .. } if key == "hidden_act"),
            "{e}"
        );
    }

    #[test]
    fn missing_keys_and_unknown_architectures_are_clear_errors() {
        let e =
            ArchConfig::from_json_str(r#"{"architectures":["GPTNeoXForCausalLM"]}"#).unwrap_err();
        assert!(matches!(e, ArchError::Unsupported(_)), "{e}");
        let e =
            ArchConfig::from_json_str(r#"{"architectures":["LlamaForCausalLM"],"hidden_size":8}"#)
                .unwrap_err();
        assert!(e.to_string().contains("num_hidden_layers"), "{e}");
        let e = ArchConfig::from_json_str(r#"{"hidden_size":8}"#).unwrap_err();
        assert!(e.to_string().contains("architectures"), "{e}");
    }
}
