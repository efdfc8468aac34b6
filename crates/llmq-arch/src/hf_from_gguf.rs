//! A GGUF model as a Hugging Face model: the reverse of [`crate::gguf_export`].
//! [`gguf_to_hf`] reads the metadata into `config.json` ([`crate::hf_config`]) and the
//! tokenizer files ([`crate::hf_tokenizer`]), names every GGUF tensor's Hugging Face
//! sources (reversing `gguf_names`: `blk.N.*` → `model.layers.N.*`, stacked
//! `ffn_*_exps` → one tensor per expert), and then runs the forward plan
//! ([`crate::gguf_plan`]) over those names, so that the transform each tensor went
//! through (Q/K row permutation for `llama`, expert stacking, Gemma's `1 + w` norms) is
//! the exporter's own; [`inverse_of`] undoes it. A GGUF tensor the forward plan does not
//! produce, or that comes out with another shape, is refused.

use crate::config::Family;
use crate::gguf_names::{gguf_plan, map_layer_tensor, GgufPlan, GgufTensorSpec, Transform};
use crate::hf_config::{family_of, hf_config, MetaReader, TensorFacts};
use crate::hf_tokenizer::{hf_tokenizer, HfTokenizer};
use crate::{ArchConfig, ArchError};
use llmq_formats::gguf::GgufValue;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// A GGUF model's Hugging Face form.
#[derive(Debug, Clone)]
pub struct HfModel {
    /// `config.json` (no `quantization_config`)
    pub config: Value,
    pub arch: ArchConfig,
    pub tokenizer: HfTokenizer,
    /// the forward plan over the reversed names: one spec per GGUF tensor
    pub plan: GgufPlan,
}

fn not_rev(what: impl Into<String>) -> ArchError {
    ArchError::NotReversible(what.into())
}

/// Per-layer HF tensor tails `map_layer_tensor` knows, family-specific spellings first.
fn layer_tails(family: Family) -> Vec<&'static str> {
    let mut t = vec![
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "pre_feedforward_layernorm.weight",
        "post_feedforward_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
        "self_attn.o_proj.weight",
        "self_attn.q_norm.weight",
        "self_attn.k_norm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "mlp.gate.weight",
        "block_sparse_moe.gate.weight",
    ];
    match family {
        Family::Phi3 => {
            t.insert(0, "self_attn.qkv_proj.weight");
            t.insert(0, "mlp.gate_up_proj.weight");
        }
        Family::Mixtral => t.insert(0, "block_sparse_moe.gate.weight"),
        _ => {}
    }
    t
}

/// Expert projection spellings: (GGUF stacked name, HF name of expert `{e}`).
fn expert_names(family: Family) -> [(&'static str, &'static str); 3] {
    if family == Family::Mixtral {
        [
            ("ffn_gate_exps", "block_sparse_moe.experts.{e}.w1.weight"),
            ("ffn_up_exps", "block_sparse_moe.experts.{e}.w3.weight"),
            ("ffn_down_exps", "block_sparse_moe.experts.{e}.w2.weight"),
        ]
    } else {
        [
            ("ffn_gate_exps", "mlp.experts.{e}.gate_proj.weight"),
            ("ffn_up_exps", "mlp.experts.{e}.up_proj.weight"),
            ("ffn_down_exps", "mlp.experts.{e}.down_proj.weight"),
        ]
    }
}

/// The HF tensors (name, PyTorch shape) behind the GGUF tensors (name, `ne`).
fn hf_tensors(
    family: Family,
    gguf: &[(String, Vec<u64>)],
) -> Result<Vec<(String, Vec<usize>)>, ArchError> {
    let mut rev: HashMap<&str, &str> = HashMap::new();
    for tail in layer_tails(family) {
        if let Some((base, _)) = map_layer_tensor(family, tail) {
            rev.entry(base).or_insert(tail);
        }
    }
    let mut out = Vec::new();
    for (name, ne) in gguf {
        let shape: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
        let top = match name.as_str() {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(hf) = top {
            out.push((hf.to_string(), shape));
            continue;
        }
        let unknown = || not_rev(format!("GGUF tensor {name} has no Hugging Face name here"));
        let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
        let (layer, base) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        let prefix = format!("model.layers.{layer}.");
        if let Some((_, hf)) = expert_names(family)
            .iter()
            .find(|(g, _)| base == format!("{g}.weight"))
        {
            if shape.len() != 3 {
                return Err(not_rev(format!("{name} is not a stack of matrices")));
            }
            for e in 0..shape[0] {
                let n = hf.replace("{e}", &e.to_string());
                out.push((format!("{prefix}{n}"), shape[1..].to_vec()));
            }
            continue;
        }
        let tail = rev.get(base).ok_or_else(unknown)?;
        out.push((format!("{prefix}{tail}"), shape));
    }
    Ok(out)
}

/// Reads a GGUF's metadata `kv` and tensor list (name, `ne`) into its HF form.
pub fn gguf_to_hf(
    kv: &[(String, GgufValue)],
    tensors: &[(String, Vec<u64>)],
) -> Result<HfModel, ArchError> {
    let m = MetaReader::new(kv);
    let arch = m
        .string("general.architecture")
        .ok_or_else(|| not_rev("general.architecture is missing"))?
        .to_string();
    let n_expert = m.uint(&format!("{arch}.expert_count"))?.unwrap_or(0);
    let family = family_of(&arch, n_expert)?;
    let has = |n: &str| tensors.iter().any(|(t, _)| t == n);
    let n_vocab = tensors
        .iter()
        .find(|(t, _)| t == "token_embd.weight")
        .and_then(|(_, ne)| ne.get(1))
        .copied()
        .ok_or_else(|| not_rev("token_embd.weight is missing"))? as usize;
    let facts = TensorFacts {
        tied: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias"),
        n_vocab,
    };
    let mut config = hf_config(&m, &arch, facts)?;
    let ctx = config["max_position_embeddings"].as_u64().unwrap_or(0);
    let tokenizer = hf_tokenizer(&m, ctx)?;
    m.finish()?;
    let c = config.as_object_mut().expect("config is an object");
    for (k, v) in [
        ("bos_token_id", tokenizer.bos_token_id),
        ("eos_token_id", tokenizer.eos_token_id),
        ("pad_token_id", tokenizer.pad_token_id),
    ] {
        c.insert(k.into(), v.map_or(Value::Null, |x| json!(x)));
    }
    let arch_cfg = ArchConfig::from_json(config.clone())?;
    let hf = hf_tensors(family, tensors)?;
    let plan = gguf_plan(&arch_cfg, &hf)?;
    let by_name: BTreeMap<&str, &GgufTensorSpec> = plan
        .tensors
        .iter()
        .map(|s| (s.gguf_name.as_str(), s))
        .collect();
    for (name, ne) in tensors {
        let spec = by_name.get(name.as_str()).ok_or_else(|| {
            not_rev(format!(
                "GGUF tensor {name} does not come out of the reversed model"
            ))
        })?;
        let want: Vec<u64> = spec.shape_ne.iter().map(|&d| d as u64).collect();
        if &want != ne {
            return Err(not_rev(format!(
                "GGUF tensor {name} has shape {ne:?}, the reversed model gives {want:?}"
            )));
        }
    }
    if plan.tensors.len() != tensors.len() {
        return Err(not_rev("the reversed model has tensors the GGUF lacks"));
    }
    Ok(HfModel {
        config,
        arch: arch_cfg,
        tokenizer,
        plan,
    })
}

/// How to get each HF source back from its GGUF tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Inverse {
    /// source `i` is rows `rows[i]` of the GGUF tensor (viewed as rows of `ne[0]`),
    /// in that order; exact for integer groups too, which lie within rows
    Rows(Vec<Vec<usize>>),
    /// every element minus one (Gemma norms; the GGUF holds `1 + w`)
    SubOne,
}

/// The inverse of `spec`'s transform.
pub fn inverse_of(spec: &GgufTensorSpec) -> Result<Inverse, ArchError> {
    let rows_of = |shape: &[usize]| -> usize {
        if shape.len() <= 1 {
            shape.first().copied().unwrap_or(1)
        } else {
            shape[0]
        }
    };
    Ok(match &spec.transform {
        Transform::None => {
            let n: usize = spec.shape_ne.iter().skip(1).product();
            Inverse::Rows(vec![(0..n).collect()])
        }
        Transform::AddOne => Inverse::SubOne,
        Transform::Stack => {
            let r = rows_of(&spec.source_shapes[0]);
            Inverse::Rows(
                (0..spec.sources.len())
                    .map(|e| (e * r..(e + 1) * r).collect())
                    .collect(),
            )
        }
        Transform::PermuteQK { n_head } => {
            let rows = rows_of(&spec.source_shapes[0]);
            let hd = rows / n_head;
            let half = hd / 2;
            // HF row h*hd + s*half + j sits at GGUF row h*hd + 2j + s
            let map: Vec<usize> = (0..rows)
                .map(|r| {
                    let (h, w) = (r / hd, r % hd);
                    let (s, j) = (w / half, w % half);
                    h * hd + 2 * j + s
                })
                .collect();
            Inverse::Rows(vec![map])
        }
        Transform::Deinterleave { .. } | Transform::TransposeExperts | Transform::Mxfp4 { .. } => {
            return Err(not_rev(format!(
                "{}: GPT-OSS's fused experts are not reversed",
                spec.gguf_name
            )))
        }
        Transform::KvBSplitK { .. } | Transform::KvBSplitV { .. } => {
            return Err(not_rev(format!(
                "{}: the MLA kv_b split is not reversed",
                spec.gguf_name
            )))
        }
        Transform::Generated(_) => {
            return Err(not_rev(format!(
                "{}: RoPE frequency factors (llama3 / LongRoPE scaling) are not reversed into config.json",
                spec.gguf_name
            )))
        }
    })
}

/// The HF sources of a GGUF tensor from its values (row-major, rows of `ne[0]`).
pub fn invert_values(spec: &GgufTensorSpec, inv: &Inverse, values: &[f32]) -> Vec<Vec<f32>> {
    match inv {
        Inverse::SubOne => vec![values.iter().map(|x| x - 1.0).collect()],
        Inverse::Rows(sources) => {
            let row = if spec.shape_ne.len() == 1 && sources[0].len() > 1 {
                1
            } else {
                spec.shape_ne[0]
            };
            sources
                .iter()
                .map(|rows| {
                    let mut v = Vec::with_capacity(rows.len() * row);
                    for &r in rows {
                        v.extend_from_slice(&values[r * row..(r + 1) * row]);
                    }
                    v
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_names::apply_transform;

    #[test]
    fn inverses_undo_the_forward_transforms() {
        let mk = |t: Transform, shapes: Vec<Vec<usize>>, ne: Vec<usize>| GgufTensorSpec {
            gguf_name: "x".into(),
            role: crate::TensorRole::AttnQ,
            layer: Some(0),
            sources: (0..shapes.len()).map(|i| format!("s{i}")).collect(),
            source_shapes: shapes,
            shape_ne: ne,
            transform: t,
        };
        let cases = [
            mk(
                Transform::PermuteQK { n_head: 2 },
                vec![vec![8, 3]],
                vec![3, 8],
            ),
            mk(Transform::PermuteQK { n_head: 2 }, vec![vec![8]], vec![8]),
            mk(Transform::Stack, vec![vec![2, 3]; 4], vec![3, 2, 4]),
            mk(Transform::AddOne, vec![vec![5]], vec![5]),
            mk(Transform::None, vec![vec![4, 2]], vec![2, 4]),
        ];
        for spec in cases {
            let sources: Vec<Vec<f32>> = spec
                .source_shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let n: usize = s.iter().product();
                    (0..n).map(|x| (x + 100 * i) as f32 * 0.25).collect()
                })
                .collect();
            let g = apply_transform(&spec, &sources).unwrap();
            let inv = inverse_of(&spec).unwrap();
            assert_eq!(
                invert_values(&spec, &inv, &g),
                sources,
                "{:?}",
                spec.transform
            );
        }
    }
}
