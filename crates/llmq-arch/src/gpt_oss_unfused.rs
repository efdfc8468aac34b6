//! GPT-OSS's experts as per-expert Linear modules, the layout its GPTQ, AWQ and
//! compressed-tensors checkpoints use: `model.layers.N.mlp.experts.E.gate_proj`,
//! `.up_proj` (`[intermediate, hidden]`) and `.down_proj` (`[hidden, intermediate]`),
//! each with its `.bias`; gate and up de-interleaved (the fused `gate_up_proj` holds
//! gate in its even and up in its odd columns); the router `mlp.router` unchanged and
//! kept in full precision; `architectures` stays `GptOssForCausalLM`.
//!
//! Why this layout: transformers has no per-expert GPT-OSS module, so every quantized
//! GPT-OSS checkpoint is written by a tool that first replaces the fused
//! `GptOssExperts` with Linear modules. llm-compressor (the writer of the
//! compressed-tensors checkpoints vLLM serves; `modeling/moe/gpt_oss.py`) does it with
//! a `ModuleList` of per-expert MLPs directly at `mlp.experts` holding `gate_proj` /
//! `up_proj` / `down_proj` with biases, gate and up taken from the even / odd columns.
//! These are the per-expert names vLLM's generic fused-MoE mapping
//! (`make_expert_params_mapping`: `experts.E.gate_proj.` / `up_proj.` → `w13`,
//! `down_proj.` → `w2`) matches for the other MoE families, and the names a vLLM change
//! for GPT-OSS (PR 29315, compressed-tensors W4A8) maps, biases included, into its fused
//! `w13` / `w2`; Quark's GPT-OSS export (onnxruntime-genai) also has separate per-expert
//! `gate_proj` / `up_proj` / `down_proj`. GPTQModel's own definition instead keeps
//! gate|up fused and interleaved (`experts.gate_up.E`, `experts.down.E`), a layout only
//! its patched model class reads. We write the llm-compressor layout for all three
//! formats, so one naming serves every format; whether a released vLLM serves a W4A16
//! GPT-OSS in it was not run here (no GPU runtime in the tests). Our engine reads it back
//! through the ordinary per-expert stacking of [`crate::gguf_plan`] (plus [`BiasGroups`]
//! for the biases).
//!
//! [`unfuse_gpt_oss_experts`] rewrites a plan of the fused checkpoint (bf16
//! `gate_up_proj` / `down_proj` or the released MXFP4 `*_blocks` / `*_scales`) so that
//! each expert tensor is stacked from per-expert views; a view's values are its
//! expert's slice of the fused tensor after the fused spec's transform (which
//! de-interleaves, transposes and decodes MXFP4), see [`ExpertView::slice`].

use crate::gguf_names::{GgufPlan, GgufTensorSpec, TensorRole, Transform};
use crate::ArchError;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One expert's 2-D weight (`[out, in]`, a Linear's layout) or 1-D bias, cut out of
/// a fused GPT-OSS expert tensor.
#[derive(Debug, Clone)]
pub struct ExpertView {
    /// the per-expert Hugging Face name it is written under
    pub name: String,
    /// its Hugging Face shape
    pub shape: Vec<usize>,
    /// the GGUF name of the fused tensor it is cut from (a key of
    /// [`UnfusedExperts::fused`])
    pub fused: String,
    pub expert: usize,
}

impl ExpertView {
    /// This expert's values, out of the fused tensor's values (the fused spec's
    /// [`crate::apply_transform`] output: experts outermost).
    pub fn slice<'a>(&self, fused_values: &'a [f32]) -> Option<&'a [f32]> {
        let n: usize = self.shape.iter().product();
        fused_values.get(self.expert * n..(self.expert + 1) * n)
    }
}

/// What [`unfuse_gpt_oss_experts`] changed.
#[derive(Debug, Default)]
pub struct UnfusedExperts {
    /// per-expert HF name → view
    pub views: BTreeMap<String, ExpertView>,
    /// GGUF name → the fused spec the views of that tensor are cut from
    pub fused: HashMap<String, GgufTensorSpec>,
    /// the checkpoint's fused tensors, no longer in the plan
    pub consumed: BTreeSet<String>,
}

fn proj_of(role: TensorRole) -> Option<(&'static str, bool)> {
    Some(match role {
        TensorRole::FfnGateExps => ("gate_proj", false),
        TensorRole::FfnUpExps => ("up_proj", false),
        TensorRole::FfnDownExps => ("down_proj", false),
        TensorRole::FfnGateExpsBias => ("gate_proj", true),
        TensorRole::FfnUpExpsBias => ("up_proj", true),
        TensorRole::FfnDownExpsBias => ("down_proj", true),
        _ => return None,
    })
}

/// Replace every fused expert tensor of a GPT-OSS plan by a [`Transform::Stack`] of
/// per-expert views (names as the module doc gives them). Specs already stacked from
/// per-expert tensors (an unfused checkpoint) are left alone.
pub fn unfuse_gpt_oss_experts(plan: &mut GgufPlan) -> UnfusedExperts {
    let mut out = UnfusedExperts::default();
    for spec in &mut plan.tensors {
        let Some((proj, bias)) = proj_of(spec.role) else {
            continue;
        };
        let (Some(layer), false) = (spec.layer, spec.transform == Transform::Stack) else {
            continue;
        };
        let n_experts = *spec.shape_ne.last().unwrap_or(&0);
        // ne [in, out, E] → [out, in]; ne [len, E] → [len]
        let shape: Vec<usize> = spec.shape_ne[..spec.shape_ne.len() - 1]
            .iter()
            .rev()
            .copied()
            .collect();
        let kind = if bias { "bias" } else { "weight" };
        let names: Vec<String> = (0..n_experts)
            .map(|e| format!("model.layers.{layer}.mlp.experts.{e}.{proj}.{kind}"))
            .collect();
        for (e, name) in names.iter().enumerate() {
            out.views.insert(
                name.clone(),
                ExpertView {
                    name: name.clone(),
                    shape: shape.clone(),
                    fused: spec.gguf_name.clone(),
                    expert: e,
                },
            );
        }
        out.consumed.extend(spec.sources.iter().cloned());
        let fused = std::mem::replace(
            spec,
            GgufTensorSpec {
                gguf_name: spec.gguf_name.clone(),
                role: spec.role,
                layer: spec.layer,
                source_shapes: vec![shape; names.len()],
                sources: names,
                shape_ne: spec.shape_ne.clone(),
                transform: Transform::Stack,
            },
        );
        out.fused.insert(fused.gguf_name.clone(), fused);
    }
    out
}

/// Per-expert GPT-OSS biases (`mlp.experts.E.{gate,up,down}_proj.bias`) of an
/// unfused checkpoint, gathered per layer and stacked into `ffn_*_exps.bias` once
/// every expert's three are seen.
#[derive(Default)]
pub(crate) struct BiasGroups(BTreeMap<usize, LayerBiases>);

/// (projection, expert) → (HF name, shape)
type LayerBiases = BTreeMap<(usize, usize), (String, Vec<usize>)>;

const PROJS: [(&str, &str, TensorRole); 3] = [
    (
        "down_proj",
        "ffn_down_exps.bias",
        TensorRole::FfnDownExpsBias,
    ),
    (
        "gate_proj",
        "ffn_gate_exps.bias",
        TensorRole::FfnGateExpsBias,
    ),
    ("up_proj", "ffn_up_exps.bias", TensorRole::FfnUpExpsBias),
];

impl BiasGroups {
    /// `None`: `tail` is no per-expert bias. Else the stacked specs, once the layer is
    /// complete (empty until then).
    pub(crate) fn add(
        &mut self,
        layer: usize,
        tail: &str,
        name: &str,
        shape: &[usize],
        n_experts: usize,
    ) -> Option<Result<Vec<GgufTensorSpec>, ArchError>> {
        let rest = tail.strip_prefix("mlp.experts.")?;
        let (e, rest) = rest.split_once('.')?;
        let proj = rest.strip_suffix(".bias")?;
        let p = PROJS.iter().position(|(n, _, _)| *n == proj)?;
        let e: usize = e.parse().ok()?;
        if e >= n_experts || shape.len() != 1 {
            return Some(Err(ArchError::Shape {
                name: name.to_string(),
                why: format!("expected a 1-D bias of one of {n_experts} experts, got {shape:?}"),
            }));
        }
        let group = self.0.entry(layer).or_default();
        group.insert((p, e), (name.to_string(), shape.to_vec()));
        if group.len() < 3 * n_experts {
            return Some(Ok(vec![]));
        }
        let group = self.0.remove(&layer).unwrap_or_default();
        let mut specs = Vec::new();
        for (p, (_, gguf, role)) in PROJS.iter().enumerate() {
            let members: Vec<&(String, Vec<usize>)> =
                (0..n_experts).map(|e| &group[&(p, e)]).collect();
            let s0 = &members[0].1;
            if members.iter().any(|m| &m.1 != s0) {
                return Some(Err(ArchError::Shape {
                    name: members[0].0.clone(),
                    why: "expert biases of one layer must have equal lengths".into(),
                }));
            }
            specs.push(GgufTensorSpec {
                gguf_name: format!("blk.{layer}.{gguf}"),
                role: *role,
                layer: Some(layer),
                sources: members.iter().map(|m| m.0.clone()).collect(),
                source_shapes: members.iter().map(|m| m.1.clone()).collect(),
                shape_ne: vec![s0[0], n_experts],
                transform: Transform::Stack,
            });
        }
        Some(Ok(specs))
    }

    /// An error naming a layer whose expert biases are incomplete.
    pub(crate) fn finish(self, n_experts: usize) -> Result<(), ArchError> {
        match self.0.into_iter().next() {
            None => Ok(()),
            Some((layer, group)) => Err(ArchError::IncompleteExperts {
                layer,
                have: group.len(),
                want: 3 * n_experts,
                example: group
                    .values()
                    .next()
                    .map(|v| v.0.clone())
                    .unwrap_or_default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{apply_transform, gguf_plan, ArchConfig};

    /// A 1-layer GPT-OSS config with `e` experts, hidden 8, intermediate 6.
    fn cfg(e: usize) -> ArchConfig {
        let j = serde_json::json!({
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
            "hidden_size": 8, "intermediate_size": 6, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
            "num_local_experts": e, "num_experts_per_tok": 2, "vocab_size": 16,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "sliding_window": 8,
            "layer_types": ["sliding_attention"], "attention_bias": true,
            "hidden_act": "silu", "swiglu_limit": 7.0, "tie_word_embeddings": false,
            "rope_theta": 10000.0
        });
        ArchConfig::from_json(j).unwrap()
    }

    fn fused_list(e: usize) -> Vec<(String, Vec<usize>)> {
        let p = "model.layers.0.";
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![16, 8]),
            ("model.norm.weight".into(), vec![8]),
            ("lm_head.weight".into(), vec![16, 8]),
        ];
        for (t, s) in [
            ("input_layernorm.weight", vec![8]),
            ("post_attention_layernorm.weight", vec![8]),
            ("self_attn.q_proj.weight", vec![8, 8]),
            ("self_attn.q_proj.bias", vec![8]),
            ("self_attn.k_proj.weight", vec![4, 8]),
            ("self_attn.k_proj.bias", vec![4]),
            ("self_attn.v_proj.weight", vec![4, 8]),
            ("self_attn.v_proj.bias", vec![4]),
            ("self_attn.o_proj.weight", vec![8, 8]),
            ("self_attn.o_proj.bias", vec![8]),
            ("self_attn.sinks", vec![2]),
            ("mlp.router.weight", vec![e, 8]),
            ("mlp.router.bias", vec![e]),
        ] {
            v.push((format!("{p}{t}"), s));
        }
        v
    }

    #[test]
    fn views_cut_the_fused_tensors_and_the_unfused_names_plan_back_the_same() {
        let e = 3;
        let mut list = fused_list(e);
        let p = "model.layers.0.mlp.experts.";
        list.push((format!("{p}gate_up_proj"), vec![e, 8, 12]));
        list.push((format!("{p}gate_up_proj_bias"), vec![e, 12]));
        list.push((format!("{p}down_proj"), vec![e, 6, 8]));
        list.push((format!("{p}down_proj_bias"), vec![e, 8]));
        let c = cfg(e);
        let fused = gguf_plan(&c, &list).unwrap();
        let mut plan = gguf_plan(&c, &list).unwrap();
        let u = super::unfuse_gpt_oss_experts(&mut plan);
        assert_eq!(u.views.len(), 6 * e);
        assert_eq!(u.consumed.len(), 4);
        let gate = &u.views[&format!("{p}1.gate_proj.weight")];
        assert_eq!(gate.shape, vec![6, 8]);
        let down = &u.views[&format!("{p}2.down_proj.weight")];
        assert_eq!(down.shape, vec![8, 6]);
        assert_eq!(u.views[&format!("{p}0.up_proj.bias")].shape, vec![6]);

        // values: expert 1's gate row r, column c is gate_up_proj[1][c][2r]
        let gu: Vec<f32> = (0..e * 8 * 12).map(|i| i as f32).collect();
        let spec = &u.fused[&gate.fused];
        let all = apply_transform(spec, std::slice::from_ref(&gu)).unwrap();
        let g1 = gate.slice(&all).unwrap();
        for r in 0..6 {
            for col in 0..8 {
                assert_eq!(g1[r * 8 + col], gu[8 * 12 + col * 12 + 2 * r]);
            }
        }
        let up = &u.views[&format!("{p}1.up_proj.weight")];
        let all_up = apply_transform(&u.fused[&up.fused], std::slice::from_ref(&gu)).unwrap();
        assert_eq!(
            up.slice(&all_up).unwrap()[8 + 3],
            gu[8 * 12 + 3 * 12 + 2 + 1]
        );

        // the per-expert names plan to the same GGUF tensors, stacked
        let mut unfused = fused_list(e);
        for v in u.views.values() {
            unfused.push((v.name.clone(), v.shape.clone()));
        }
        let back = gguf_plan(&c, &unfused).unwrap();
        for t in &fused.tensors {
            let b = back
                .tensors
                .iter()
                .find(|b| b.gguf_name == t.gguf_name)
                .unwrap();
            assert_eq!(b.shape_ne, t.shape_ne, "{}", t.gguf_name);
            let rebuilt = plan
                .tensors
                .iter()
                .find(|b| b.gguf_name == t.gguf_name)
                .unwrap();
            assert_eq!(b.sources, rebuilt.sources, "{}", t.gguf_name);
        }
        assert_eq!(back.tensors.len(), fused.tensors.len());

        // an expert bias missing is named
        unfused.retain(|(n, _)| n != &format!("{p}2.up_proj.bias"));
        let err = gguf_plan(&c, &unfused).unwrap_err().to_string();
        assert!(err.contains("layer 0") || err.contains("experts"), "{err}");
    }
}
