//! Model hyper-parameters read from GGUF metadata keys, interpreted as llama.cpp's
//! `llama_model::load_hparams` does for the architectures we run (`src/llama-model.cpp`,
//! keys from `src/llama-arch.cpp`). A safetensors model gets the same keys from
//! `llmq_arch::gguf_meta::arch_metadata`, so both sources go through one reader; a few
//! settings the GGUF keys cannot express are then taken from `config.json`
//! ([`Hparams::apply_hf_config`]).

use crate::error::{EngineError, Result};
use llmq_arch::{ArchConfig, ClampedSwiglu, RopeScaling, Yarn};
use llmq_formats::gguf::GgufValue;
use std::collections::HashMap;
use std::sync::Arc;

/// The decoder variants (GGUF `general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Gemma3,
    Phi3,
    Deepseek2,
    GptOss,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "qwen3moe" => Arch::Qwen3Moe,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            "deepseek2" => Arch::Deepseek2,
            "gpt-oss" => Arch::GptOss,
            _ => return None,
        })
    }
}

/// How RoPE pairs dimensions: `Norm` rotates (2i, 2i+1) (GGUF Llama after the
/// converter's Q/K permutation, and DeepSeek's interleaved rope part); `Neox` rotates
/// (i, i + n/2) (transformers' `rotate_half`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    Norm,
    Neox,
}

/// Router scoring of a MoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    Softmax,
    Sigmoid,
}

/// Mixture-of-experts settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeParams {
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff_exp: usize,
    pub n_shared: usize,
    pub gating: Gating,
    /// renormalize the chosen experts' weights to sum 1
    pub norm_weights: bool,
    /// multiply the chosen experts' weights (DeepSeek `routed_scaling_factor`)
    pub weights_scale: f32,
    /// group-limited routing (DeepSeek-V3): groups and groups kept
    pub n_group: usize,
    pub topk_group: usize,
    /// the first layers that use a dense MLP
    pub leading_dense: usize,
}

/// Multi-head latent attention settings (DeepSeek-V2/V3, GLM-4.7-Flash).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaParams {
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head_dim: usize,
}

/// A layer's RoPE scaling as the backend's `Rope` takes it (`llmq_arch::rope` computes
/// it from the variant).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    /// positions are divided by this (linear scaling)
    pub scale: f32,
    /// per-pair frequency divisors (llama3, YaRN); `None`: all 1
    pub factors: Option<Arc<[f32]>>,
    /// multiplies cos and sin (YaRN)
    pub attn_factor: f32,
}

impl RopeFreqs {
    /// Plain RoPE.
    pub const NONE: RopeFreqs = RopeFreqs {
        scale: 1.0,
        factors: None,
        attn_factor: 1.0,
    };

    /// The settings of `scaling` for RoPE base `base` over `n_rot` dimensions.
    pub fn from_scaling(scaling: &RopeScaling, base: f64, n_rot: usize) -> RopeFreqs {
        RopeFreqs {
            scale: scaling.position_scale() as f32,
            factors: scaling.freq_factors(base, n_rot).map(Arc::from),
            attn_factor: scaling.attention_factor() as f32,
        }
    }
}

/// Per-layer attention settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerParams {
    /// key j is visible from query i when i - window < j <= i
    pub sliding_window: Option<usize>,
    pub rope_base: f32,
    pub rope: RopeFreqs,
    /// the layer's scaling when its rotation depends on the length a forward call
    /// reaches (LongRoPE, dynamic NTK: `RopeScaling::for_length`)
    pub length_dependent: Option<Arc<RopeScaling>>,
    pub moe: bool,
}

/// Everything the decoder needs besides the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub n_ff: usize,
    pub eps: f32,
    pub n_rot: usize,
    pub rope_kind: RopeKind,
    /// the RoPE scaling of full-attention layers (each layer's settings are in `layers`)
    pub rope_scaling: RopeScaling,
    /// the pre-training context the RoPE scaling refers to (`original_context_length`)
    pub n_ctx_orig: usize,
    /// sequences longer than this are refused (LongRoPE's long regime is not implemented)
    pub rope_exact_ctx: Option<usize>,
    pub attn_scale: f32,
    pub embed_scale: Option<f32>,
    pub final_softcap: Option<f32>,
    /// the experts' clamped SwiGLU (GPT-OSS; llama.cpp hard-codes its constants)
    pub clamped_swiglu: Option<ClampedSwiglu>,
    pub moe: Option<MoeParams>,
    pub mla: Option<MlaParams>,
    pub layers: Vec<LayerParams>,
}

/// Typed access to a metadata map.
pub struct Meta<'a> {
    map: &'a HashMap<String, GgufValue>,
    arch: String,
}

impl<'a> Meta<'a> {
    pub fn new(map: &'a HashMap<String, GgufValue>) -> Result<Meta<'a>> {
        let arch = match map.get("general.architecture") {
            Some(GgufValue::String(s)) => s.clone(),
            _ => return Err(EngineError::MissingKey("general.architecture".into())),
        };
        Ok(Meta { map, arch })
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn raw(&self, k: &str) -> Option<&GgufValue> {
        self.map.get(&self.key(k))
    }

    /// An integer key (any integer type; for per-layer arrays the first element).
    pub fn usize_opt(&self, k: &str) -> Result<Option<usize>> {
        let v = match self.raw(k) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = match v {
            GgufValue::U8(x) => Some(*x as i128),
            GgufValue::I8(x) => Some(*x as i128),
            GgufValue::U16(x) => Some(*x as i128),
            GgufValue::I16(x) => Some(*x as i128),
            GgufValue::U32(x) => Some(*x as i128),
            GgufValue::I32(x) => Some(*x as i128),
            GgufValue::U64(x) => Some(*x as i128),
            GgufValue::I64(x) => Some(*x as i128),
            GgufValue::Array(_) => v
                .as_u32_array()
                .and_then(|a| a.first().map(|x| *x as i128))
                .or_else(|| v.as_i32_array().and_then(|a| a.first().map(|x| *x as i128))),
            _ => None,
        };
        match n {
            Some(n) if (0..=(1i128 << 40)).contains(&n) => Ok(Some(n as usize)),
            _ => Err(EngineError::BadValue {
                key: self.key(k),
                why: format!("expected a non-negative integer, found {v:?}"),
            }),
        }
    }

    pub fn usize(&self, k: &str) -> Result<usize> {
        self.usize_opt(k)?
            .ok_or_else(|| EngineError::MissingKey(self.key(k)))
    }

    pub fn f32_opt(&self, k: &str) -> Result<Option<f32>> {
        match self.raw(k) {
            None => Ok(None),
            Some(GgufValue::F32(x)) => Ok(Some(*x)),
            Some(GgufValue::F64(x)) => Ok(Some(*x as f32)),
            Some(v) => Err(EngineError::BadValue {
                key: self.key(k),
                why: format!("expected a float, found {v:?}"),
            }),
        }
    }

    pub fn bool_opt(&self, k: &str) -> Option<bool> {
        self.raw(k).and_then(GgufValue::as_bool)
    }

    pub fn str_opt(&self, k: &str) -> Option<&str> {
        match self.raw(k) {
            Some(GgufValue::String(s)) => Some(s),
            _ => None,
        }
    }
}

fn positive(key: &str, v: usize) -> Result<usize> {
    if v == 0 {
        Err(EngineError::BadValue {
            key: key.into(),
            why: "must be positive".into(),
        })
    } else {
        Ok(v)
    }
}

/// MLA's softmax scale: `1/sqrt(head_dim)` times YaRN's `mscale(factor,
/// mscale_all_dim)²` (transformers' `yarn_apply_mscale`, llama.cpp's `kq_scale`).
fn mla_attn_scale(head_dim_k: usize, scaling: &RopeScaling) -> f32 {
    ((1.0 / (head_dim_k as f64).sqrt()) * scaling.mla_softmax_factor()) as f32
}

/// The RoPE scaling the `rope.scaling.*` keys describe, with the defaults llama.cpp
/// uses (`llama_model::load_hparams`, `llama_context`): `original_context_length`
/// defaults to the training context, YaRN's betas to 32 and 1; DeepSeek-2's
/// `yarn_log_multiplier` is `0.1 · mscale_all_dim` with `mscale` 1. A type we do not
/// implement (`longrope`, anything unknown) is refused.
fn rope_scaling_of(m: &Meta<'_>, n_ctx_train: usize) -> Result<RopeScaling> {
    let ty = m.str_opt("rope.scaling.type");
    let factor = m.f32_opt("rope.scaling.factor")?.map(f64::from);
    let positive = |f: Option<f64>| -> Result<f64> {
        match f {
            Some(f) if f > 0.0 => Ok(f),
            _ => Err(EngineError::BadValue {
                key: m.key("rope.scaling.factor"),
                why: format!("{f:?} is not a positive scaling factor"),
            }),
        }
    };
    Ok(match ty {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => match factor {
            // llama.cpp's default type is linear, factor 1 when absent
            None => RopeScaling::Default,
            f => RopeScaling::Linear {
                factor: positive(f)?,
            },
        },
        Some("yarn") => {
            let log_mul = m.f32_opt("rope.scaling.yarn_log_multiplier")?;
            let f = |k: &str| -> Result<Option<f64>> { Ok(m.f32_opt(k)?.map(f64::from)) };
            RopeScaling::Yarn(Yarn {
                factor: positive(factor)?,
                original_max_position_embeddings: m
                    .usize_opt("rope.scaling.original_context_length")?
                    .unwrap_or(n_ctx_train)
                    as f64,
                beta_fast: f("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: f("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                attention_factor: f("rope.scaling.yarn_attn_factor")?,
                mscale: log_mul.map(|_| 1.0),
                mscale_all_dim: log_mul.map(|x| f64::from(x) / 0.1),
                truncate: true,
            })
        }
        Some(t) => {
            return Err(EngineError::UnsupportedValue {
                key: m.key("rope.scaling.type"),
                value: format!("\"{t}\""),
            })
        }
    })
}

impl Hparams {
    /// Read the hyper-parameters from GGUF metadata. `n_vocab` is the embedding's row
    /// count (the caller knows it from the tensor).
    pub fn from_metadata(map: &HashMap<String, GgufValue>, n_vocab: usize) -> Result<Hparams> {
        let m = Meta::new(map)?;
        let arch =
            Arch::from_name(&m.arch).ok_or_else(|| EngineError::UnsupportedArch(m.arch.clone()))?;
        let n_embd = positive("embedding_length", m.usize("embedding_length")?)?;
        let n_layer = positive("block_count", m.usize("block_count")?)?;
        let n_head = positive("attention.head_count", m.usize("attention.head_count")?)?;
        let n_head_kv = m.usize_opt("attention.head_count_kv")?.unwrap_or(n_head);
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(EngineError::BadValue {
                key: m.key("attention.head_count_kv"),
                why: format!("{n_head_kv} does not divide {n_head} query heads"),
            });
        }
        let head_dim_k = m
            .usize_opt("attention.key_length")?
            .unwrap_or(n_embd / n_head);
        let head_dim_v = m.usize_opt("attention.value_length")?.unwrap_or(head_dim_k);
        let n_ff = m.usize_opt("feed_forward_length")?.unwrap_or(0);
        let eps = m
            .f32_opt("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| EngineError::MissingKey(m.key("attention.layer_norm_rms_epsilon")))?;
        let n_ctx_train = m.usize_opt("context_length")?.unwrap_or(4096);
        let rope_base = m.f32_opt("rope.freq_base")?.unwrap_or(10000.0);
        let rope_scaling = rope_scaling_of(&m, n_ctx_train)?;
        let n_ctx_orig = m
            .usize_opt("rope.scaling.original_context_length")?
            .unwrap_or(n_ctx_train);
        // llama.cpp multiplies every rotation's cos/sin by `rope.scaling.attn_factor`
        let attn_factor_key = m.f32_opt("rope.scaling.attn_factor")?.unwrap_or(1.0);

        let mla = if arch == Arch::Deepseek2 {
            let kv_lora_rank = m.usize("attention.kv_lora_rank")?;
            let qk_rope = m.usize("rope.dimension_count")?;
            let k_mla = m
                .usize_opt("attention.key_length_mla")?
                .unwrap_or(head_dim_k);
            let v_mla = m
                .usize_opt("attention.value_length_mla")?
                .unwrap_or(head_dim_v);
            if k_mla <= qk_rope {
                return Err(EngineError::BadValue {
                    key: m.key("attention.key_length_mla"),
                    why: format!("{k_mla} is not larger than the rope part {qk_rope}"),
                });
            }
            Some(MlaParams {
                q_lora_rank: m.usize_opt("attention.q_lora_rank")?.filter(|r| *r > 0),
                kv_lora_rank,
                qk_nope: k_mla - qk_rope,
                qk_rope,
                v_head_dim: v_mla,
            })
        } else {
            None
        };

        let (head_dim_k, head_dim_v) = match &mla {
            Some(p) => (p.qk_nope + p.qk_rope, p.v_head_dim),
            None => (head_dim_k, head_dim_v),
        };
        let n_rot = m.usize_opt("rope.dimension_count")?.unwrap_or(head_dim_k);
        if mla.is_none() && (n_rot > head_dim_k || n_rot % 2 != 0) {
            return Err(EngineError::BadValue {
                key: m.key("rope.dimension_count"),
                why: format!("{n_rot} rotary dims do not fit a head of {head_dim_k}"),
            });
        }

        let moe = match m.usize_opt("expert_count")? {
            Some(n_expert) if n_expert > 0 => {
                let gating = match m.usize_opt("expert_gating_func")? {
                    Some(2) => Gating::Sigmoid,
                    Some(1) | None => Gating::Softmax,
                    Some(g) => {
                        return Err(EngineError::BadValue {
                            key: m.key("expert_gating_func"),
                            why: format!("unknown gating function {g}"),
                        })
                    }
                };
                let n_expert_used = m.usize("expert_used_count")?;
                if n_expert_used == 0 || n_expert_used > n_expert {
                    return Err(EngineError::BadValue {
                        key: m.key("expert_used_count"),
                        why: format!("{n_expert_used} of {n_expert} experts"),
                    });
                }
                // llama.cpp: Llama (Mixtral) and Qwen3-MoE always renormalize; DeepSeek2
                // reads `expert_weights_norm`.
                let norm_default = arch != Arch::Deepseek2;
                let n_group = m.usize_opt("expert_group_count")?.unwrap_or(1).max(1);
                let topk_group = m.usize_opt("expert_group_used_count")?.unwrap_or(n_group);
                if n_expert % n_group != 0 || topk_group == 0 || topk_group > n_group {
                    return Err(EngineError::BadValue {
                        key: m.key("expert_group_count"),
                        why: format!("{n_expert} experts in {n_group} groups, {topk_group} kept"),
                    });
                }
                Some(MoeParams {
                    n_expert,
                    n_expert_used,
                    n_ff_exp: m.usize_opt("expert_feed_forward_length")?.unwrap_or(n_ff),
                    n_shared: m.usize_opt("expert_shared_count")?.unwrap_or(0),
                    gating,
                    norm_weights: m.bool_opt("expert_weights_norm").unwrap_or(norm_default),
                    weights_scale: m.f32_opt("expert_weights_scale")?.unwrap_or(1.0),
                    n_group,
                    topk_group,
                    leading_dense: m.usize_opt("leading_dense_block_count")?.unwrap_or(0),
                })
            }
            _ => None,
        };

        // every size in the range `llmq_arch::validate` allows a config.json, before
        // anything is allocated from it
        let moe_sizes = moe.as_ref().map_or([0; 4], |p| {
            [p.n_expert, p.n_ff_exp, p.n_shared, p.leading_dense]
        });
        for (key, arch_key, v) in [
            ("embedding_length", "hidden_size", n_embd),
            ("block_count", "num_hidden_layers", n_layer),
            ("attention.head_count", "num_attention_heads", n_head),
            ("attention.head_count_kv", "num_key_value_heads", n_head_kv),
            ("attention.key_length", "head_dim", head_dim_k),
            ("attention.value_length", "head_dim", head_dim_v),
            ("vocab_size", "vocab_size", n_vocab),
            ("feed_forward_length", "moe_intermediate_size", n_ff),
            ("context_length", "max_position_embeddings", n_ctx_train),
            ("expert_count", "num_local_experts", moe_sizes[0]),
            (
                "expert_feed_forward_length",
                "moe_intermediate_size",
                moe_sizes[1],
            ),
            ("expert_shared_count", "n_shared_experts", moe_sizes[2]),
            (
                "leading_dense_block_count",
                "first_k_dense_replace",
                moe_sizes[3].min(n_layer + 1),
            ),
        ] {
            llmq_arch::validate::check_size(arch_key, v as u64).map_err(|e| {
                EngineError::BadValue {
                    key: m.key(key),
                    why: match e {
                        llmq_arch::ArchError::BadValue { why, .. } => why,
                        e => e.to_string(),
                    },
                }
            })?;
        }
        if moe_sizes[3] > n_layer {
            return Err(EngineError::BadValue {
                key: m.key("leading_dense_block_count"),
                why: format!("{} is beyond the {n_layer} blocks", moe_sizes[3]),
            });
        }

        // Sliding-window attention, as llama.cpp sets it per architecture.
        let window = m.usize_opt("attention.sliding_window")?.filter(|w| *w > 0);
        // llama.cpp's default periods: Gemma 3 five sliding layers then one full,
        // gpt-oss alternating (`load_swa_pattern`)
        let swa_period = match arch {
            Arch::Gemma3 => Some(6),
            Arch::GptOss => Some(2),
            _ => None,
        };
        let swa_layers: Vec<bool> = match swa_period {
            Some(default) => match m.raw("attention.sliding_window_pattern") {
                Some(v) if v.as_bool_array().is_some() => {
                    let p = v.as_bool_array().unwrap();
                    (0..n_layer).map(|i| p[i % p.len().max(1)]).collect()
                }
                Some(_) => {
                    let period = m.usize("attention.sliding_window_pattern")?.max(1);
                    (0..n_layer).map(|i| (i % period) < period - 1).collect()
                }
                None => (0..n_layer).map(|i| i % default < default - 1).collect(),
            },
            None => match arch {
                Arch::Phi3 => vec![window.is_some(); n_layer],
                _ => vec![false; n_layer],
            },
        };
        let rope_base_swa = match arch {
            // llama.cpp hard-codes 10000 for Gemma 3's local layers when the key is absent
            Arch::Gemma3 => m.f32_opt("rope.freq_base_swa")?.unwrap_or(10000.0),
            _ => m.f32_opt("rope.freq_base_swa")?.unwrap_or(rope_base),
        };
        let leading_dense = moe.as_ref().map(|p| p.leading_dense).unwrap_or(0);
        let n_rot_eff = mla.as_ref().map(|p| p.qk_rope).unwrap_or(n_rot);
        let layers = (0..n_layer)
            .map(|i| {
                let swa = swa_layers[i] && window.is_some();
                let base = if swa { rope_base_swa } else { rope_base };
                // llama.cpp scales no sliding layer's frequencies (`rope_freq_scale_train_swa`
                // is 1) except gpt-oss's, which take the full layers' scaling
                let scaled = !swa || arch == Arch::GptOss;
                LayerParams {
                    sliding_window: if swa { window } else { None },
                    rope_base: base,
                    rope: {
                        let mut r = if scaled {
                            RopeFreqs::from_scaling(&rope_scaling, base as f64, n_rot_eff)
                        } else {
                            RopeFreqs::NONE
                        };
                        r.attn_factor *= attn_factor_key;
                        r
                    },
                    length_dependent: None,
                    moe: moe.is_some() && i >= leading_dense,
                }
            })
            .collect();

        let rope_kind = match arch {
            Arch::Llama | Arch::Deepseek2 => RopeKind::Norm,
            _ => RopeKind::Neox,
        };
        let attn_scale = match (arch, &mla) {
            (Arch::Gemma3, _) if n_layer == 62 => 1.0 / ((n_embd / n_head) as f32).sqrt(),
            (_, Some(_)) => mla_attn_scale(head_dim_k, &rope_scaling),
            _ => 1.0 / (head_dim_k as f32).sqrt(),
        };
        Ok(Hparams {
            arch,
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_ff,
            eps,
            n_rot: mla.as_ref().map(|p| p.qk_rope).unwrap_or(n_rot),
            rope_kind,
            rope_scaling,
            n_ctx_orig,
            rope_exact_ctx: None,
            attn_scale,
            embed_scale: (arch == Arch::Gemma3).then(|| (n_embd as f32).sqrt()),
            final_softcap: m.f32_opt("final_logit_softcapping")?.filter(|c| *c > 0.0),
            clamped_swiglu: (arch == Arch::GptOss).then_some(ClampedSwiglu::GPT_OSS),
            moe,
            mla,
            layers,
        })
    }

    /// Settings a safetensors model states in `config.json` that its GGUF metadata
    /// cannot carry: sliding windows on every layer type (Mistral), RoPE scaling per
    /// layer type (with every parameter, e.g. YaRN's `truncate` and `mscale`), Gemma 3's
    /// `query_pre_attn_scalar`.
    pub fn apply_hf_config(&mut self, cfg: &ArchConfig) {
        for (lp, spec) in self.layers.iter_mut().zip(&cfg.layers) {
            lp.sliding_window = spec.sliding_window;
            lp.rope_base = spec.rope_theta as f32;
            lp.rope = RopeFreqs::from_scaling(&spec.rope_scaling, spec.rope_theta, self.n_rot);
            lp.length_dependent = spec
                .rope_scaling
                .exact_positions()
                .map(|_| Arc::new(spec.rope_scaling.clone()));
        }
        if let Some(full) = cfg
            .layers
            .iter()
            .find(|l| l.sliding_window.is_none())
            .or(cfg.layers.first())
        {
            self.rope_scaling = full.rope_scaling.clone();
            // standard attention follows the length (`length_dependent`); MLA's
            // rotation is fixed, so it refuses where the length would matter
            self.rope_exact_ctx = match self.mla {
                Some(_) => full.rope_scaling.exact_positions(),
                None => None,
            };
        }
        if self.mla.is_some() {
            self.attn_scale = mla_attn_scale(self.head_dim_k, &self.rope_scaling);
        }
        self.clamped_swiglu = cfg.clamped_swiglu;
        if let Some(q) = cfg.query_pre_attn_scalar {
            if self.arch == Arch::Gemma3 && q > 0.0 {
                self.attn_scale = (q as f32).powf(-0.5);
            }
        }
    }

    /// Query heads per KV head.
    pub fn gqa(&self) -> usize {
        self.n_head / self.n_head_kv
    }
}
