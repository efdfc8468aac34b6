//! One validation of a model against its `config.json`, shared by every command that
//! reads a model (quantize, convert, info, eval, generate, serve, bench):
//!
//! - [`check_raw`]: every size key in a sane range before anything is allocated from it
//!   (a zero, negative or absurd count is refused, not divided by or allocated);
//! - [`check_config`]: the parsed configuration is consistent (heads divide, MoE top-k
//!   within the experts, dense-layer prefix within the stack) and its implied parameter
//!   count, computed with checked arithmetic, is finite;
//! - [`check_plan`]: the checkpoint's tensors (as the GGUF plan names them) are exactly
//!   those the configuration implies, each with the shape it implies; tied embeddings
//!   only where the configuration says so.
//!
//! Errors are [`ArchError::BadValue`] (a config value), [`ArchError::Shape`] (a tensor
//! that is missing, unexplained or of the wrong shape), exit 6 at the command line.

use crate::config::{ArchConfig, Family, RouterScoring};
use crate::gguf_names::{GgufPlan, TensorRole};
use crate::ArchError;
use serde_json::Value;
use std::collections::HashMap;

/// Upper bounds on sizes (inclusive). Far above every released model, far below what
/// would overflow a `u32` GGUF field or exhaust memory before a tensor is read.
pub const LIMITS: &[(&str, u64)] = &[
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("moe_intermediate_size", 1 << 20),
    ("num_hidden_layers", 1 << 12),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 14),
    ("vocab_size", 1 << 24),
    ("max_position_embeddings", 1 << 30),
    ("num_local_experts", 1 << 16),
    ("num_experts", 1 << 16),
    ("n_routed_experts", 1 << 16),
    ("num_experts_per_tok", 1 << 16),
    ("n_shared_experts", 1 << 10),
    ("kv_lora_rank", 1 << 16),
    ("q_lora_rank", 1 << 16),
    ("qk_nope_head_dim", 1 << 14),
    ("qk_rope_head_dim", 1 << 14),
    ("v_head_dim", 1 << 14),
    ("sliding_window", 1 << 30),
    ("first_k_dense_replace", 1 << 12),
    ("decoder_sparse_step", 1 << 12),
    ("n_group", 1 << 16),
    ("topk_group", 1 << 16),
];

/// Keys that must be at least 1 when present (0 would divide by zero or mean nothing).
const POSITIVE: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "num_experts_per_tok",
    "kv_lora_rank",
    "decoder_sparse_step",
    "n_group",
    "topk_group",
];

/// The largest parameter count a configuration may imply (about 17.6 trillion).
pub const MAX_PARAMS: u64 = 1 << 44;

fn bad(key: &str, why: String) -> ArchError {
    ArchError::BadValue {
        key: key.into(),
        why,
    }
}

/// The bound of `key` in [`LIMITS`].
pub fn limit(key: &str) -> Option<u64> {
    LIMITS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// `value` of `key` checked against [`LIMITS`] (and positivity where required).
pub fn check_size(key: &str, value: u64) -> Result<(), ArchError> {
    if value == 0 && POSITIVE.contains(&key) {
        return Err(bad(key, "0, expected a positive integer".into()));
    }
    if let Some(max) = limit(key) {
        if value > max {
            return Err(bad(
                key,
                format!("{value} is out of the sane range (at most {max})"),
            ));
        }
    }
    Ok(())
}

/// Size keys of a raw `config.json` (and of its `text_config`), checked before the
/// configuration is parsed: integers in range, positive where 0 is meaningless,
/// `sliding_window` not 0 where it would apply, norms' epsilon and RoPE theta positive
/// and finite.
pub fn check_raw(v: &Value) -> Result<(), ArchError> {
    for (key, _) in LIMITS {
        let Some(x) = v.get(*key).filter(|x| !x.is_null()) else {
            continue;
        };
        match x.as_u64() {
            Some(n) => {
                // a window of 0 is refused by `check_config` where the family applies it
                if *key == "sliding_window" && n == 0 {
                    continue;
                }
                check_size(key, n)?
            }
            None if x.is_number() || x.is_string() || x.is_boolean() => {
                return Err(bad(
                    key,
                    format!("expected a non-negative integer, found {x}"),
                ))
            }
            None => {}
        }
    }
    // two spellings of the expert count that disagree: which one a reader takes decides
    // the model, so neither is taken
    if let (Some(a), Some(b)) = (v.get("num_local_experts"), v.get("num_experts")) {
        if !a.is_null() && !b.is_null() && a != b {
            return Err(bad(
                "num_experts",
                format!("{b} disagrees with num_local_experts {a}"),
            ));
        }
    }
    let nested_theta = v.get("rope_parameters").and_then(|p| p.get("rope_theta"));
    for (key, x) in [
        ("rms_norm_eps", v.get("rms_norm_eps")),
        ("rope_theta", v.get("rope_theta")),
        ("rope_parameters.rope_theta", nested_theta),
    ] {
        if let Some(x) = x.filter(|x| !x.is_null()) {
            match x.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => {}
                _ => return Err(bad(key, format!("{x} is not a positive finite number"))),
            }
        }
    }
    Ok(())
}

/// Consistency of a parsed configuration.
pub fn check_config(cfg: &ArchConfig) -> Result<(), ArchError> {
    check_size("num_key_value_heads", cfg.num_kv_heads as u64)?;
    check_size("head_dim", cfg.head_dim as u64)?;
    if cfg.num_kv_heads > cfg.num_heads {
        return Err(bad(
            "num_key_value_heads",
            format!(
                "{} is more than num_attention_heads {}",
                cfg.num_kv_heads, cfg.num_heads
            ),
        ));
    }
    if let Some(m) = &cfg.moe {
        check_size("num_local_experts", m.n_experts as u64)?;
        if m.n_experts == 0 {
            return Err(bad("num_local_experts", "0 experts".into()));
        }
        if m.top_k > m.n_experts {
            return Err(bad(
                "num_experts_per_tok",
                format!("{} is more than the {} experts", m.top_k, m.n_experts),
            ));
        }
        if m.scoring == RouterScoring::Sigmoid {
            if m.n_group == 0 || !m.n_experts.is_multiple_of(m.n_group) {
                return Err(bad(
                    "n_group",
                    format!("{} does not divide the {} experts", m.n_group, m.n_experts),
                ));
            }
            if m.topk_group == 0 || m.topk_group > m.n_group {
                return Err(bad(
                    "topk_group",
                    format!("{} is not within 1..={} groups", m.topk_group, m.n_group),
                ));
            }
            if m.top_k > m.topk_group * (m.n_experts / m.n_group) {
                return Err(bad(
                    "num_experts_per_tok",
                    format!(
                        "{} is more than the {} experts of the {} chosen groups",
                        m.top_k,
                        m.topk_group * (m.n_experts / m.n_group),
                        m.topk_group
                    ),
                ));
            }
        }
        if !cfg.layers.iter().any(|l| l.moe) {
            return Err(bad(
                "first_k_dense_replace",
                "the configuration has experts but no layer uses them".into(),
            ));
        }
    }
    if let Some(k) = cfg.raw.get("first_k_dense_replace").and_then(Value::as_u64) {
        if k > cfg.num_layers as u64 {
            return Err(bad(
                "first_k_dense_replace",
                format!("{k} is beyond the {} layers", cfg.num_layers),
            ));
        }
    }
    if let Some(only) = cfg.raw.get("mlp_only_layers").and_then(Value::as_array) {
        if let Some(x) = only
            .iter()
            .find(|x| x.as_u64().is_none_or(|i| i >= cfg.num_layers as u64))
        {
            return Err(bad(
                "mlp_only_layers",
                format!("{x} is not a layer of the {} layers", cfg.num_layers),
            ));
        }
    }
    // refused even where the family ignores the window (Llama): a window of no tokens
    // is a broken config, not a setting
    let zero_window = cfg.raw.get("sliding_window").and_then(Value::as_u64) == Some(0);
    if zero_window || cfg.layers.iter().any(|l| l.sliding_window == Some(0)) {
        return Err(bad(
            "sliding_window",
            "0 (a window of no tokens); use null for no sliding window".into(),
        ));
    }
    let n = implied_params(cfg).ok_or_else(|| {
        bad(
            "hidden_size",
            "the implied parameter count overflows".into(),
        )
    })?;
    if n > MAX_PARAMS {
        return Err(bad(
            "num_hidden_layers",
            format!("the configuration implies {n} parameters, more than {MAX_PARAMS}"),
        ));
    }
    Ok(())
}

/// The parameter count the configuration implies (embeddings, attention and MLP
/// projections), with checked arithmetic; `None` on overflow.
pub fn implied_params(cfg: &ArchConfig) -> Option<u64> {
    let u = |x: usize| x as u64;
    let d = u(cfg.hidden_size);
    let embd = u(cfg.vocab_size).checked_mul(d)?.checked_mul(2)?;
    let q = u(cfg.num_heads).checked_mul(u(cfg.head_dim))?;
    let kv = u(cfg.num_kv_heads).checked_mul(u(cfg.head_dim))?;
    let attn = d.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?;
    let dense = d.checked_mul(u(cfg.intermediate_size))?.checked_mul(3)?;
    let moe = match &cfg.moe {
        Some(m) => d
            .checked_mul(u(m.expert_intermediate_size))?
            .checked_mul(3)?
            .checked_mul(u(m.n_experts).checked_add(u(m.n_shared_experts))?)?,
        None => 0,
    };
    let per_layer = attn.checked_add(dense.max(moe))?;
    embd.checked_add(per_layer.checked_mul(u(cfg.num_layers))?)
}

/// The families whose tensor set [`expected`] describes; a family added later is
/// checked for sizes only until its rules are written here.
fn tensor_rules_known(f: Family) -> bool {
    matches!(
        f,
        Family::Llama
            | Family::Mistral
            | Family::Qwen2
            | Family::Qwen3
            | Family::Gemma3
            | Family::Phi3
            | Family::Mixtral
            | Family::Qwen3Moe
            | Family::DeepseekV3
            | Family::Glm4MoeLite
            | Family::GptOss
    )
}

/// What a planned tensor is, in words and in its Hugging Face spelling, for messages.
fn describe(role: TensorRole) -> &'static str {
    use TensorRole as R;
    match role {
        R::TokenEmbd => "model.embed_tokens.weight",
        R::Output => "lm_head.weight",
        R::OutputNorm => "model.norm.weight",
        R::AttnNorm => "input_layernorm.weight",
        R::AttnQ => "self_attn.q_proj.weight",
        R::AttnK => "self_attn.k_proj.weight",
        R::AttnV => "self_attn.v_proj.weight",
        R::AttnQBias => "self_attn.q_proj.bias",
        R::AttnKBias => "self_attn.k_proj.bias",
        R::AttnVBias => "self_attn.v_proj.bias",
        R::AttnQkv => "self_attn.qkv_proj.weight",
        R::AttnOutput => "self_attn.o_proj.weight",
        R::AttnOutputBias => "self_attn.o_proj.bias",
        R::AttnSinks => "self_attn.sinks",
        R::FfnGateInpBias => "mlp.router.bias",
        R::FfnGateExpsBias | R::FfnUpExpsBias => "mlp.experts.gate_up_proj_bias",
        R::FfnDownExpsBias => "mlp.experts.down_proj_bias",
        R::AttnQNorm => "self_attn.q_norm.weight",
        R::AttnKNorm => "self_attn.k_norm.weight",
        R::AttnPostNorm => "post_attention_layernorm.weight",
        R::AttnQA => "self_attn.q_a_proj.weight",
        R::AttnQANorm => "self_attn.q_a_layernorm.weight",
        R::AttnQB => "self_attn.q_b_proj.weight",
        R::AttnKvAMqa => "self_attn.kv_a_proj_with_mqa.weight",
        R::AttnKvANorm => "self_attn.kv_a_layernorm.weight",
        R::AttnKvB | R::AttnKB | R::AttnVB => "self_attn.kv_b_proj.weight",
        R::FfnNorm => "post_attention_layernorm.weight (pre-MLP norm)",
        R::FfnPostNorm => "post_feedforward_layernorm.weight",
        R::FfnGate => "mlp.gate_proj.weight",
        R::FfnUp => "mlp.up_proj.weight",
        R::FfnDown => "mlp.down_proj.weight",
        R::FfnGateInp => "mlp.gate.weight (router)",
        R::FfnExpProbsB => "mlp.gate.e_score_correction_bias",
        R::FfnGateExps => "mlp.experts.*.gate_proj.weight",
        R::FfnUpExps => "mlp.experts.*.up_proj.weight",
        R::FfnDownExps => "mlp.experts.*.down_proj.weight",
        R::FfnGateShexp => "mlp.shared_experts.gate_proj.weight",
        R::FfnUpShexp => "mlp.shared_experts.up_proj.weight",
        R::FfnDownShexp => "mlp.shared_experts.down_proj.weight",
        R::RopeFreqs => "rope frequency factors",
    }
}

/// Expected `ne` shapes of the tensors of one layer (or of the globals when `layer` is
/// `None`): required ones and optional ones.
struct Expected {
    required: Vec<(TensorRole, Vec<usize>)>,
    optional: Vec<(TensorRole, Vec<usize>)>,
}

fn expected(cfg: &ArchConfig, layer: Option<usize>) -> Expected {
    use TensorRole as R;
    let d = cfg.hidden_size;
    let mut required = Vec::new();
    let mut optional = Vec::new();
    let Some(i) = layer else {
        required.push((R::TokenEmbd, vec![d, cfg.vocab_size]));
        required.push((R::OutputNorm, vec![d]));
        if cfg.tie_word_embeddings {
            optional.push((R::Output, vec![d, cfg.vocab_size]));
        } else {
            required.push((R::Output, vec![d, cfg.vocab_size]));
        }
        return Expected { required, optional };
    };
    let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    required.push((R::AttnNorm, vec![d]));
    required.push((R::FfnNorm, vec![d]));
    if cfg.family == Family::Gemma3 {
        required.push((R::AttnPostNorm, vec![d]));
        required.push((R::FfnPostNorm, vec![d]));
    }
    match &cfg.mla {
        Some(m) => {
            let qk = m.qk_nope_head_dim + m.qk_rope_head_dim;
            match m.q_lora_rank {
                Some(r) => {
                    required.push((R::AttnQA, vec![d, r]));
                    required.push((R::AttnQANorm, vec![r]));
                    required.push((R::AttnQB, vec![r, nh * qk]));
                }
                None => required.push((R::AttnQ, vec![d, nh * qk])),
            }
            required.push((R::AttnKvAMqa, vec![d, m.kv_lora_rank + m.qk_rope_head_dim]));
            required.push((R::AttnKvANorm, vec![m.kv_lora_rank]));
            required.push((R::AttnKB, vec![m.qk_nope_head_dim, m.kv_lora_rank, nkv]));
            required.push((R::AttnVB, vec![m.kv_lora_rank, m.v_head_dim, nkv]));
            required.push((R::AttnOutput, vec![nh * m.v_head_dim, d]));
        }
        None if cfg.family == Family::Phi3 => {
            required.push((R::AttnQkv, vec![d, (nh + 2 * nkv) * hd]));
            required.push((R::AttnOutput, vec![nh * hd, d]));
        }
        None => {
            required.push((R::AttnQ, vec![d, nh * hd]));
            required.push((R::AttnK, vec![d, nkv * hd]));
            required.push((R::AttnV, vec![d, nkv * hd]));
            required.push((R::AttnOutput, vec![nh * hd, d]));
            if cfg.attention_bias {
                required.push((R::AttnQBias, vec![nh * hd]));
                required.push((R::AttnKBias, vec![nkv * hd]));
                required.push((R::AttnVBias, vec![nkv * hd]));
                // transformers gives o_proj a bias with the same switch (Llama, GPT-OSS);
                // Qwen2 has none
                if cfg.family == Family::GptOss {
                    required.push((R::AttnOutputBias, vec![d]));
                } else {
                    optional.push((R::AttnOutputBias, vec![d]));
                }
            }
            if cfg.attention_sinks {
                required.push((R::AttnSinks, vec![nh]));
            }
        }
    }
    if cfg.qk_norm {
        required.push((R::AttnQNorm, vec![hd]));
        required.push((R::AttnKNorm, vec![hd]));
    }
    match (&cfg.moe, cfg.layers.get(i).is_some_and(|l| l.moe)) {
        (Some(m), true) => {
            let (n, f) = (m.n_experts, m.expert_intermediate_size);
            required.push((R::FfnGateInp, vec![d, n]));
            required.push((R::FfnGateExps, vec![d, f, n]));
            required.push((R::FfnUpExps, vec![d, f, n]));
            required.push((R::FfnDownExps, vec![f, d, n]));
            if m.scoring == RouterScoring::Sigmoid {
                optional.push((R::FfnExpProbsB, vec![n]));
            }
            if cfg.family == Family::GptOss {
                required.push((R::FfnGateInpBias, vec![n]));
                required.push((R::FfnGateExpsBias, vec![f, n]));
                required.push((R::FfnUpExpsBias, vec![f, n]));
                required.push((R::FfnDownExpsBias, vec![d, n]));
            }
            if m.n_shared_experts > 0 {
                let s = f * m.n_shared_experts;
                required.push((R::FfnGateShexp, vec![d, s]));
                required.push((R::FfnUpShexp, vec![d, s]));
                required.push((R::FfnDownShexp, vec![s, d]));
            }
        }
        _ if cfg.family == Family::Phi3 => {
            required.push((R::FfnUp, vec![d, 2 * cfg.intermediate_size]));
            required.push((R::FfnDown, vec![cfg.intermediate_size, d]));
        }
        _ => {
            required.push((R::FfnGate, vec![d, cfg.intermediate_size]));
            required.push((R::FfnUp, vec![d, cfg.intermediate_size]));
            required.push((R::FfnDown, vec![cfg.intermediate_size, d]));
        }
    }
    Expected { required, optional }
}

/// The tensors of `plan` against what `cfg` implies: none missing, none unexplained,
/// every shape as the configuration says.
pub fn check_plan(cfg: &ArchConfig, plan: &GgufPlan) -> Result<(), ArchError> {
    check_config(cfg)?;
    if !tensor_rules_known(cfg.family) {
        return Ok(());
    }
    // (layer, role) -> (gguf name, hf source, shape)
    type Seen<'a> = HashMap<(Option<usize>, TensorRole), (&'a str, &'a str, &'a [usize])>;
    let mut have: Seen = HashMap::new();
    for t in &plan.tensors {
        if t.role == TensorRole::RopeFreqs {
            continue;
        }
        let src = t.sources.first().map_or("", String::as_str);
        have.insert((t.layer, t.role), (&t.gguf_name, src, &t.shape_ne));
    }
    let where_ = |layer: Option<usize>| match layer {
        Some(i) => format!("model.layers.{i}."),
        None => String::new(),
    };
    let layers = std::iter::once(None).chain((0..cfg.num_layers).map(Some));
    for layer in layers {
        let e = expected(cfg, layer);
        for (role, shape, needed) in e
            .required
            .iter()
            .map(|(r, s)| (r, s, true))
            .chain(e.optional.iter().map(|(r, s)| (r, s, false)))
        {
            match have.remove(&(layer, *role)) {
                None if needed => {
                    let why = if *role == TensorRole::Output {
                        "missing, and config.json has tie_word_embeddings false (an untied \
                         model needs its own output head)"
                            .to_string()
                    } else {
                        format!(
                            "missing (config.json: {} layers, {})",
                            cfg.num_layers,
                            if layer.is_some_and(|i| cfg.layers[i].moe) {
                                "a mixture-of-experts layer"
                            } else {
                                "a dense layer"
                            }
                        )
                    };
                    return Err(ArchError::Shape {
                        name: format!("{}{}", where_(layer), describe(*role)),
                        why,
                    });
                }
                None => {}
                Some((gguf, src, got)) if got != shape.as_slice() => {
                    let rev = |s: &[usize]| s.iter().rev().copied().collect::<Vec<_>>();
                    return Err(ArchError::Shape {
                        name: if src.is_empty() {
                            gguf.into()
                        } else {
                            src.into()
                        },
                        why: format!(
                            "shape {:?} does not match the {:?} that config.json implies \
                             (hidden_size {}, intermediate_size {}, heads {}/{} of {}, vocab {})",
                            rev(got),
                            rev(shape),
                            cfg.hidden_size,
                            cfg.intermediate_size,
                            cfg.num_heads,
                            cfg.num_kv_heads,
                            cfg.head_dim,
                            cfg.vocab_size
                        ),
                    });
                }
                Some(_) => {}
            }
        }
    }
    if let Some(((layer, _), (gguf, src, _))) = have.into_iter().min_by_key(|(_, v)| v.0) {
        return Err(ArchError::Shape {
            name: if src.is_empty() {
                gguf.into()
            } else {
                src.into()
            },
            why: format!(
                "not explained by config.json ({}): a tensor this configuration does not use",
                match layer {
                    Some(i) if cfg.layers.get(i).is_some_and(|l| l.moe) =>
                        format!("layer {i} is a mixture-of-experts layer"),
                    Some(i) => format!("layer {i} is a dense layer"),
                    None => cfg.architecture.clone(),
                }
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
