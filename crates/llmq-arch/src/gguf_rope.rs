//! RoPE scaling in GGUF form, as llama.cpp's converter writes it and its loader reads
//! it: the `{arch}.rope.scaling.*` keys (`TextModel.set_gguf_parameters`), the generated
//! factor tensors (`LlamaModel` and `Phi3MiniModel.generate_extra_tensors`), and the
//! refusal of settings neither can carry. The variants' math is in [`crate::rope`].

use crate::config::{ArchConfig, Family};
use crate::meta::{MetaList, MetaValue};
use crate::ArchError;
use serde_json::Value;

/// The RoPE parameter dict the converter reads for the scaling keys:
/// `rope_parameters` (its `full_attention` entry when per layer type), else legacy
/// `rope_scaling`.
pub(crate) fn rope_scaling_params(raw: &Value) -> Option<&Value> {
    let p = raw
        .get("rope_parameters")
        .filter(|v| v.is_object())
        .or_else(|| raw.get("rope_scaling").filter(|v| v.is_object()))?;
    Some(
        p.get("full_attention")
            .filter(|v| v.is_object())
            .unwrap_or(p),
    )
}

/// `{arch}.rope.scaling.*` as `TextModel.set_gguf_parameters` writes them: type and
/// factor for `linear`; for `yarn` also the original context and the optional YaRN keys.
/// `llama3` is carried by the `rope_freqs.weight` tensor instead.
pub(crate) fn rope_scaling_keys(cfg: &ArchConfig, k: &dyn Fn(&str) -> String, m: &mut MetaList) {
    let Some(p) = rope_scaling_params(&cfg.raw) else {
        return;
    };
    let ty = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str);
    let f = |key: &str| p.get(key).and_then(Value::as_f64);
    let Some(factor) = f("factor") else {
        return;
    };
    match ty {
        Some("linear") => {
            m.set(k("rope.scaling.type"), MetaValue::Str("linear".into()));
            m.set(k("rope.scaling.factor"), MetaValue::F32(factor as f32));
        }
        Some("yarn") => {
            m.set(k("rope.scaling.type"), MetaValue::Str("yarn".into()));
            m.set(k("rope.scaling.factor"), MetaValue::F32(factor as f32));
            let orig = p
                .get("original_max_position_embeddings")
                .or_else(|| cfg.raw.get("original_max_position_embeddings"))
                .and_then(Value::as_u64)
                .unwrap_or(cfg.max_position_embeddings as u64);
            m.set(
                k("rope.scaling.original_context_length"),
                MetaValue::U32(orig as u32),
            );
            let optional = [
                ("extrapolation_factor", "rope.scaling.yarn_ext_factor"),
                ("attention_factor", "rope.scaling.yarn_attn_factor"),
                ("beta_fast", "rope.scaling.yarn_beta_fast"),
                ("beta_slow", "rope.scaling.yarn_beta_slow"),
            ];
            for (hf, gguf) in optional {
                let v = match hf {
                    "attention_factor" => f("attention_factor").or_else(|| f("attn_factor")),
                    _ => f(hf),
                };
                if let Some(v) = v {
                    m.set(k(gguf), MetaValue::F32(v as f32));
                }
            }
        }
        _ => {}
    }
}

/// Refuse RoPE settings our GGUF keys cannot carry (the engine computes them from
/// `config.json`, but a GGUF reader, ours or llama.cpp's, would silently compute
/// something else): scaling on Phi-3 (its converter writes no scaling keys), a
/// scaling on sliding layers other than the full layers' (one set of keys per file,
/// except Gemma 3 whose local layers llama.cpp never scales), YaRN without `truncate`
/// (llama.cpp always truncates), and YaRN `mscale` values the keys cannot express.
pub fn check_gguf_rope(cfg: &ArchConfig) -> Result<(), ArchError> {
    use crate::rope::{RopeScaling, Yarn};
    let refuse = |why: String| Err(ArchError::Unrepresentable(why));
    let full = cfg
        .layers
        .iter()
        .find(|l| l.sliding_window.is_none())
        .or(cfg.layers.first());
    let Some(full) = full else { return Ok(()) };
    for l in &cfg.layers {
        let want = if cfg.family == Family::Gemma3 && l.sliding_window.is_some() {
            &RopeScaling::Default
        } else {
            &full.rope_scaling
        };
        if &l.rope_scaling != want {
            return refuse(format!(
                "RoPE scaling differs between layer types ({} and {}); GGUF carries one",
                full.rope_scaling.name(),
                l.rope_scaling.name()
            ));
        }
    }
    match &full.rope_scaling {
        RopeScaling::Default => Ok(()),
        RopeScaling::Dynamic { .. } => refuse(
            "dynamic NTK RoPE cannot be written to GGUF (llama.cpp has no such scaling)".into(),
        ),
        RopeScaling::LongRope { .. } => Ok(()),
        s if cfg.family == Family::Phi3 => refuse(format!(
            "{} RoPE scaling on Phi-3 cannot be written to GGUF",
            s.name()
        )),
        // GPT-OSS's released config has truncate=false and its converter writes it as
        // YaRN all the same; llama.cpp (and our GGUF reader) then round the ramp's
        // bounds, which transformers does not: the ramp moves by less than one pair
        RopeScaling::Yarn(Yarn {
            truncate: false, ..
        }) if cfg.family != Family::GptOss => refuse(
            "YaRN with truncate=false cannot be written to GGUF (llama.cpp truncates)".into(),
        ),
        RopeScaling::Yarn(y) if y.attention_factor.is_none() => {
            let mla = cfg.mla.is_some();
            match (y.mscale, y.mscale_all_dim) {
                // deepseek2 writes mscale_all_dim; llama.cpp takes mscale as 1
                (Some(m), Some(_)) if mla && m != 1.0 => {
                    refuse(format!("YaRN mscale {m} (not 1) cannot be written to GGUF"))
                }
                (Some(m), Some(a)) if !mla && m != 0.0 && a != 0.0 => refuse(format!(
                    "YaRN mscale {m} / mscale_all_dim {a} cannot be written to GGUF for {}",
                    cfg.architecture
                )),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// The RoPE tensors (name, values) the converter generates from the config: `rope_freqs.weight` for
/// llama3 scaling (`LlamaModel.generate_extra_tensors`: per-pair factors of the
/// full-attention layers), `rope_factors_long/short.weight` for Phi-3 LongRoPE
/// (`Phi3MiniModel`). Other families' converters write none, so their GGUF could not
/// carry the scaling: refused.
pub(crate) fn rope_tensors(cfg: &ArchConfig) -> Result<Vec<(&'static str, Vec<f32>)>, ArchError> {
    use crate::RopeScaling;
    let Some(layer) = cfg
        .layers
        .iter()
        .find(|l| l.sliding_window.is_none())
        .or(cfg.layers.first())
    else {
        return Ok(vec![]);
    };
    let unrepresentable = || {
        Err(ArchError::Unrepresentable(format!(
            "{} RoPE scaling on {} cannot be written to GGUF (llama.cpp's converter writes no factors for it)",
            layer.rope_scaling.name(),
            cfg.architecture
        )))
    };
    match &layer.rope_scaling {
        RopeScaling::Llama3 { .. } => {
            if !matches!(
                cfg.family,
                Family::Llama | Family::Mistral | Family::Mixtral
            ) {
                return unrepresentable();
            }
            let dim = cfg
                .raw
                .get("head_dim")
                .and_then(serde_json::Value::as_u64)
                .map(|d| d as usize)
                .unwrap_or(cfg.hidden_size / cfg.num_heads);
            let factors = layer
                .rope_scaling
                .freq_factors(layer.rope_theta, dim)
                .expect("llama3 scaling has factors");
            Ok(vec![("rope_freqs.weight", factors)])
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        } => {
            if cfg.family != Family::Phi3 {
                return unrepresentable();
            }
            let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<_>>();
            Ok(vec![
                ("rope_factors_long.weight", f32s(long_factor)),
                ("rope_factors_short.weight", f32s(short_factor)),
            ])
        }
        _ => Ok(vec![]),
    }
}
