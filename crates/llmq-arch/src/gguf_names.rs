//! Hugging Face tensor names to GGUF tensor names, roles and data transforms, following
//! llama.cpp's converter as pinned by llama-cpp-python 0.3.36 (`conversion/llama.py`
//! `LlamaModel.modify_tensors`/`permute`, `conversion/qwen.py` `Qwen2MoeModel`,
//! `conversion/gemma.py` `Gemma3Model`, `conversion/phi.py` `Phi3MiniModel`,
//! `conversion/deepseek.py` `DeepseekV2Model`, `conversion/glm.py` `Glm4MoeLiteModel`,
//! and `gguf-py/gguf/tensor_mapping.py` / `constants.py`).
//!
//! GGUF architecture per family: Llama, Mistral and Mixtral → `llama` (Mixtral's experts
//! become `ffn_*_exps`); Qwen2 → `qwen2`; Qwen3 → `qwen3`; Qwen3-MoE → `qwen3moe`;
//! Gemma3 → `gemma3`; Phi3 → `phi3`; DeepSeek-V3 and GLM-4.7-Flash (`Glm4MoeLite`) →
//! `deepseek2`; GPT-OSS → `gpt-oss` (`conversion/gpt_oss.py`: fused interleaved
//! gate|up experts split, `down_proj` transposed, released MXFP4 packing decoded).
//! llama.cpp 0.3.36 loads all ten shared fixtures from our plan and metadata
//! and reproduces transformers' perplexity to 5 digits. With the converter's own
//! metadata it does not: GLM-4.7-Flash fails to load (layer 0 expected to be MoE), and
//! `general.name` "Phi3" makes the vocab loader throw for non-SentencePiece vocabularies;
//! Gemma3 and DeepSeek-V3 load but compute differently (see `gguf_meta`).
//! Phi3's fused `qkv_proj` and `gate_up_proj` stay fused (`attn_qkv`, `ffn_up` with
//! 2 x n_ff rows), as the converter keeps them. Not handled: MTP/nextn layers (skipped),
//! the converter's optional `--fuse-*` modes, and Gemma3's trimming of embedding rows
//! past the tokenizer's size (a no-op for our fixtures).
//!
//! The converter visits HF tensors in sorted name order (Python `safetensors` lists keys
//! sorted) and emits a stacked expert tensor when the last expert of its layer arrives;
//! [`gguf_plan`] reproduces that order, which matters to `mix` (its counters follow file
//! order).

use crate::config::{ArchConfig, Family};
use crate::gguf_gpt_oss::{decode_mxfp4, gpt_oss_experts};
use crate::gguf_rope::rope_tensors;
use crate::mix::MixTensor;
use crate::ArchError;
use std::collections::BTreeMap;

/// What a GGUF tensor is, independent of the architecture's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorRole {
    TokenEmbd,
    Output,
    OutputNorm,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnQBias,
    AttnKBias,
    AttnVBias,
    /// fused q|k|v rows (Phi3)
    AttnQkv,
    AttnOutput,
    AttnOutputBias,
    /// a learned logit per head that joins the attention softmax (GPT-OSS)
    AttnSinks,
    AttnQNorm,
    AttnKNorm,
    /// Gemma3 norm after attention
    AttnPostNorm,
    AttnQA,
    AttnQANorm,
    AttnQB,
    AttnKvAMqa,
    AttnKvANorm,
    AttnKvB,
    AttnKB,
    AttnVB,
    FfnNorm,
    /// Gemma3 norm after the MLP
    FfnPostNorm,
    FfnGate,
    /// up projection; for Phi3 the fused gate|up rows
    FfnUp,
    FfnDown,
    /// router
    FfnGateInp,
    /// router bias (GPT-OSS)
    FfnGateInpBias,
    /// router score correction bias (sigmoid routing)
    FfnExpProbsB,
    FfnGateExps,
    FfnUpExps,
    FfnDownExps,
    /// per-expert biases, `[n_ff or n_embd, n_expert]` (GPT-OSS)
    FfnGateExpsBias,
    FfnUpExpsBias,
    FfnDownExpsBias,
    FfnGateShexp,
    FfnUpShexp,
    FfnDownShexp,
    /// per-pair RoPE frequency factors (llama3 scaling), generated from the config
    RopeFreqs,
}

/// How the GGUF tensor is built from its HF sources.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// copied as is
    None,
    /// llama.cpp's `LlamaModel.permute`: inside each of `n_head` row groups, rows are
    /// reordered from rotate-half (first half, second half) to interleaved pairs
    PermuteQK { n_head: usize },
    /// sources (one `[rows, cols]` matrix per expert) stacked into `[n, rows, cols]`
    Stack,
    /// the `k` part of MLA `kv_b_proj` (`[n_head, nope + v, lora]`), transposed per head
    /// to `[n_head, lora, nope]`
    KvBSplitK {
        n_head: usize,
        nope: usize,
        v_dim: usize,
    },
    /// the `v` part of MLA `kv_b_proj`: `[n_head, v, lora]`
    KvBSplitV {
        n_head: usize,
        nope: usize,
        v_dim: usize,
    },
    /// every element plus one (Gemma3 RMSNorm weights are stored as `w`, used as `1 + w`)
    AddOne,
    /// no sources: these values, computed from the config (`rope_freqs.weight`)
    Generated(Vec<f32>),
    /// GPT-OSS's fused experts: entries `part`, `part + 2`, … of the last dimension of
    /// a `[.., 2n]` source (gate = 0, up = 1 of the interleaved gate|up columns), then
    /// the last two dimensions swapped when `transpose` (the `[E, in, out]` parameter
    /// becomes `[E, out, in]` matrices)
    Deinterleave { part: usize, transpose: bool },
    /// the last two dimensions of a 3-D `[E, a, b]` source swapped (GPT-OSS's
    /// `down_proj`, stored `[E, in, out]`)
    TransposeExperts,
    /// transformers' MXFP4 expert packing (GPT-OSS's released checkpoints): sources
    /// `*_blocks` `[E, rows, G, 16]` (two E2M1 codes per byte, low nibble first) and
    /// `*_scales` `[E, rows, G]` (E8M0 exponents, bias 127), read as byte values; decoded
    /// to `[E, rows, 32·G]`, then rows `part`, `part + 2`, … when `part` is given (the
    /// interleaved gate|up rows)
    Mxfp4 { part: Option<usize> },
}

impl Transform {
    /// Whether the sources are packed bytes (U8) rather than floats.
    pub fn reads_bytes(&self) -> bool {
        matches!(self, Transform::Mxfp4 { .. })
    }
}

/// One GGUF tensor of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorSpec {
    pub gguf_name: String,
    pub role: TensorRole,
    pub layer: Option<usize>,
    /// HF tensor names, in stacking order
    pub sources: Vec<String>,
    /// HF (row-major, PyTorch order) shape of each source
    pub source_shapes: Vec<Vec<usize>>,
    /// GGUF shape in ggml `ne` order (ne[0] is the contiguous dimension)
    pub shape_ne: Vec<usize>,
    pub transform: Transform,
}

impl GgufTensorSpec {
    pub fn n_elements(&self) -> usize {
        self.shape_ne.iter().product()
    }
}

/// The GGUF tensors of a model, in the converter's order.
#[derive(Debug, Clone)]
pub struct GgufPlan {
    /// `general.architecture`
    pub arch: &'static str,
    pub tensors: Vec<GgufTensorSpec>,
    /// HF tensors the converter deliberately leaves out, with the reason
    pub skipped: Vec<(String, String)>,
}

impl GgufPlan {
    /// The planned tensors as the mix rules see them (name and shape), in plan order.
    pub fn mix_tensors(&self) -> Vec<MixTensor> {
        self.tensors
            .iter()
            .map(|t| MixTensor {
                name: t.gguf_name.clone(),
                shape_ne: t.shape_ne.clone(),
            })
            .collect()
    }
}

/// The `general.architecture` string llama.cpp uses for a family.
pub fn gguf_arch(family: Family) -> &'static str {
    match family {
        Family::Llama | Family::Mistral | Family::Mixtral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Qwen3Moe => "qwen3moe",
        Family::Gemma3 => "gemma3",
        Family::Phi3 => "phi3",
        Family::DeepseekV3 | Family::Glm4MoeLite => "deepseek2",
        Family::GptOss => "gpt-oss",
    }
}

/// Whether the converter undoes HF's rotate-half q/k layout (`LlamaModel.undo_permute`).
pub fn needs_qk_permute(family: Family) -> bool {
    matches!(family, Family::Llama | Family::Mistral | Family::Mixtral)
}

/// Expert projection kinds, in the order the converter emits the stacked tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ExpertProj {
    Gate,
    Up,
    Down,
}

impl ExpertProj {
    /// HF spelling → kind (`w1`/`w3`/`w2` for Mixtral).
    fn parse(s: &str) -> Option<ExpertProj> {
        match s {
            "gate_proj" | "w1" => Some(ExpertProj::Gate),
            "up_proj" | "w3" => Some(ExpertProj::Up),
            "down_proj" | "w2" => Some(ExpertProj::Down),
            _ => None,
        }
    }

    /// Emission order: Mixtral's converter loops w1, w2, w3; Qwen/DeepSeek loop down, gate, up.
    fn emit_order(family: Family) -> [ExpertProj; 3] {
        if family == Family::Mixtral {
            [ExpertProj::Gate, ExpertProj::Down, ExpertProj::Up]
        } else {
            [ExpertProj::Down, ExpertProj::Gate, ExpertProj::Up]
        }
    }

    fn gguf(self) -> (&'static str, TensorRole) {
        match self {
            ExpertProj::Gate => ("ffn_gate_exps", TensorRole::FfnGateExps),
            ExpertProj::Up => ("ffn_up_exps", TensorRole::FfnUpExps),
            ExpertProj::Down => ("ffn_down_exps", TensorRole::FfnDownExps),
        }
    }
}

/// One layer's expert tensors seen so far: (proj, expert) -> (HF name, shape).
type ExpertGroup = BTreeMap<(ExpertProj, usize), (String, Vec<usize>)>;

/// Split `model.layers.N.rest` into (N, rest).
fn layer_split(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    Some((idx.parse().ok()?, tail))
}

/// Parse `...experts.E.proj.weight` into (expert, proj).
fn expert_split(tail: &str) -> Option<(usize, ExpertProj)> {
    let rest = tail
        .strip_prefix("mlp.experts.")
        .or_else(|| tail.strip_prefix("block_sparse_moe.experts."))?;
    let (e, rest) = rest.split_once('.')?;
    let proj = rest.strip_suffix(".weight")?;
    Some((e.parse().ok()?, ExpertProj::parse(proj)?))
}

/// Map a per-layer HF tensor (without the `model.layers.N.` prefix) to (GGUF base name
/// with suffix, role).
pub(crate) fn map_layer_tensor(family: Family, tail: &str) -> Option<(&'static str, TensorRole)> {
    use TensorRole as R;
    let gemma = family == Family::Gemma3;
    Some(match tail {
        "input_layernorm.weight" => ("attn_norm.weight", R::AttnNorm),
        // GPT-OSS's norm before the MoE is `attn_post_norm` in llama.cpp's naming
        "post_attention_layernorm.weight" if family == Family::GptOss => {
            ("post_attention_norm.weight", R::FfnNorm)
        }
        "post_attention_layernorm.weight" if gemma => {
            ("post_attention_norm.weight", R::AttnPostNorm)
        }
        "post_attention_layernorm.weight" => ("ffn_norm.weight", R::FfnNorm),
        "pre_feedforward_layernorm.weight" if gemma => ("ffn_norm.weight", R::FfnNorm),
        "post_feedforward_layernorm.weight" if gemma => ("post_ffw_norm.weight", R::FfnPostNorm),
        "self_attn.q_proj.weight" => ("attn_q.weight", R::AttnQ),
        "self_attn.k_proj.weight" => ("attn_k.weight", R::AttnK),
        "self_attn.v_proj.weight" => ("attn_v.weight", R::AttnV),
        "self_attn.q_proj.bias" => ("attn_q.bias", R::AttnQBias),
        "self_attn.k_proj.bias" => ("attn_k.bias", R::AttnKBias),
        "self_attn.v_proj.bias" => ("attn_v.bias", R::AttnVBias),
        "self_attn.o_proj.weight" => ("attn_output.weight", R::AttnOutput),
        "self_attn.o_proj.bias" => ("attn_output.bias", R::AttnOutputBias),
        "self_attn.sinks" if family == Family::GptOss => ("attn_sinks.weight", R::AttnSinks),
        "mlp.router.weight" if family == Family::GptOss => ("ffn_gate_inp.weight", R::FfnGateInp),
        "mlp.router.bias" if family == Family::GptOss => ("ffn_gate_inp.bias", R::FfnGateInpBias),
        "self_attn.q_norm.weight" => ("attn_q_norm.weight", R::AttnQNorm),
        "self_attn.k_norm.weight" => ("attn_k_norm.weight", R::AttnKNorm),
        "self_attn.qkv_proj.weight" if family == Family::Phi3 => ("attn_qkv.weight", R::AttnQkv),
        "self_attn.q_a_proj.weight" => ("attn_q_a.weight", R::AttnQA),
        "self_attn.q_a_layernorm.weight" => ("attn_q_a_norm.weight", R::AttnQANorm),
        "self_attn.q_b_proj.weight" => ("attn_q_b.weight", R::AttnQB),
        "self_attn.kv_a_proj_with_mqa.weight" => ("attn_kv_a_mqa.weight", R::AttnKvAMqa),
        "self_attn.kv_a_layernorm.weight" => ("attn_kv_a_norm.weight", R::AttnKvANorm),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", R::FfnGate),
        "mlp.up_proj.weight" => ("ffn_up.weight", R::FfnUp),
        "mlp.down_proj.weight" => ("ffn_down.weight", R::FfnDown),
        "mlp.gate_up_proj.weight" if family == Family::Phi3 => ("ffn_up.weight", R::FfnUp),
        "mlp.gate.weight" | "block_sparse_moe.gate.weight" => {
            ("ffn_gate_inp.weight", R::FfnGateInp)
        }
        "mlp.gate.e_score_correction_bias" => ("exp_probs_b.bias", R::FfnExpProbsB),
        "mlp.shared_experts.gate_proj.weight" => ("ffn_gate_shexp.weight", R::FfnGateShexp),
        "mlp.shared_experts.up_proj.weight" => ("ffn_up_shexp.weight", R::FfnUpShexp),
        "mlp.shared_experts.down_proj.weight" => ("ffn_down_shexp.weight", R::FfnDownShexp),
        _ => return None,
    })
}

fn reversed(shape: &[usize]) -> Vec<usize> {
    shape.iter().rev().copied().collect()
}

fn single(
    gguf_name: String,
    role: TensorRole,
    layer: Option<usize>,
    hf: &str,
    shape: &[usize],
    transform: Transform,
) -> GgufTensorSpec {
    GgufTensorSpec {
        gguf_name,
        role,
        layer,
        sources: vec![hf.to_string()],
        source_shapes: vec![shape.to_vec()],
        shape_ne: reversed(shape),
        transform,
    }
}

/// Build the GGUF tensor plan for a model from its HF tensor names and shapes (any order;
/// they are visited sorted, as the converter does).
pub fn gguf_plan(
    cfg: &ArchConfig,
    hf_tensors: &[(String, Vec<usize>)],
) -> Result<GgufPlan, ArchError> {
    let family = cfg.family;
    let mut sorted: Vec<&(String, Vec<usize>)> = hf_tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let shapes: std::collections::HashMap<&str, &Vec<usize>> =
        hf_tensors.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut unmapped = Vec::new();
    let n_experts = cfg.moe.as_ref().map(|m| m.n_experts).unwrap_or(0);
    let mut experts: BTreeMap<usize, ExpertGroup> = BTreeMap::new();
    let mut expert_biases = crate::gpt_oss_unfused::BiasGroups::default();
    let is_mla = cfg.mla.is_some();
    let tied_skip_head = is_mla && cfg.tie_word_embeddings;

    for (name, shape) in sorted {
        let name = name.as_str();
        let shift = family == Family::Gemma3 && name.ends_with("norm.weight");
        let plain = if shift {
            Transform::AddOne
        } else {
            Transform::None
        };
        if name.ends_with("rotary_emb.inv_freq") {
            skipped.push((
                name.to_string(),
                "rotary inv_freq buffer (the converter drops it)".into(),
            ));
            continue;
        }
        match name {
            "model.embed_tokens.weight" => {
                out.push(single(
                    "token_embd.weight".into(),
                    TensorRole::TokenEmbd,
                    None,
                    name,
                    shape,
                    plain,
                ));
                continue;
            }
            "model.norm.weight" => {
                out.push(single(
                    "output_norm.weight".into(),
                    TensorRole::OutputNorm,
                    None,
                    name,
                    shape,
                    plain,
                ));
                continue;
            }
            "lm_head.weight" => {
                if tied_skip_head {
                    skipped.push((
                        name.to_string(),
                        "tied embeddings: output uses token_embd".into(),
                    ));
                } else {
                    out.push(single(
                        "output.weight".into(),
                        TensorRole::Output,
                        None,
                        name,
                        shape,
                        Transform::None,
                    ));
                }
                continue;
            }
            _ => {}
        }
        let Some((layer, tail)) = layer_split(name) else {
            unmapped.push(name.to_string());
            continue;
        };
        if layer >= cfg.num_layers {
            // DeepSeek/GLM multi-token-prediction layers sit after the main stack.
            if is_mla {
                skipped.push((
                    name.to_string(),
                    "multi-token-prediction layer (not exported)".into(),
                ));
            } else {
                unmapped.push(name.to_string());
            }
            continue;
        }
        if family == Family::GptOss {
            if let Some(specs) = gpt_oss_experts(layer, tail, name, shape, n_experts, &shapes) {
                out.extend(specs?);
                continue;
            }
            // an unfused checkpoint's per-expert biases (`gpt_oss_unfused`)
            if let Some(specs) = expert_biases.add(layer, tail, name, shape, n_experts) {
                out.extend(specs?);
                continue;
            }
        }
        if let Some((e, proj)) = expert_split(tail) {
            if n_experts == 0 || e >= n_experts {
                unmapped.push(name.to_string());
                continue;
            }
            let group = experts.entry(layer).or_default();
            group.insert((proj, e), (name.to_string(), shape.clone()));
            if group.len() == 3 * n_experts {
                let group = experts.remove(&layer).unwrap_or_default();
                for proj in ExpertProj::emit_order(family) {
                    let members: Vec<&(String, Vec<usize>)> =
                        (0..n_experts).map(|e| &group[&(proj, e)]).collect();
                    let s0 = &members[0].1;
                    if s0.len() != 2 || members.iter().any(|m| &m.1 != s0) {
                        return Err(ArchError::Shape {
                            name: members[0].0.clone(),
                            why: "experts of one layer must be 2-D matrices of equal shape".into(),
                        });
                    }
                    let (base, role) = proj.gguf();
                    out.push(GgufTensorSpec {
                        gguf_name: format!("blk.{layer}.{base}.weight"),
                        role,
                        layer: Some(layer),
                        sources: members.iter().map(|m| m.0.clone()).collect(),
                        source_shapes: members.iter().map(|m| m.1.clone()).collect(),
                        shape_ne: vec![s0[1], s0[0], n_experts],
                        transform: Transform::Stack,
                    });
                }
            }
            continue;
        }
        if tail == "self_attn.kv_b_proj.weight" {
            if let Some(mla) = &cfg.mla {
                let n_head = cfg.num_kv_heads;
                let (nope, v_dim) = (mla.qk_nope_head_dim, mla.v_head_dim);
                if shape.len() != 2 || shape[0] != n_head * (nope + v_dim) {
                    return Err(ArchError::Shape {
                        name: name.to_string(),
                        why: format!(
                            "expected [{} x (nope {nope} + v {v_dim}), lora], got {shape:?}",
                            n_head
                        ),
                    });
                }
                let lora = shape[1];
                let mut k = single(
                    format!("blk.{layer}.attn_k_b.weight"),
                    TensorRole::AttnKB,
                    Some(layer),
                    name,
                    shape,
                    Transform::KvBSplitK {
                        n_head,
                        nope,
                        v_dim,
                    },
                );
                k.shape_ne = vec![nope, lora, n_head];
                let mut v = single(
                    format!("blk.{layer}.attn_v_b.weight"),
                    TensorRole::AttnVB,
                    Some(layer),
                    name,
                    shape,
                    Transform::KvBSplitV {
                        n_head,
                        nope,
                        v_dim,
                    },
                );
                v.shape_ne = vec![lora, v_dim, n_head];
                out.push(k);
                out.push(v);
                continue;
            }
        }
        let Some((base, role)) = map_layer_tensor(family, tail) else {
            unmapped.push(name.to_string());
            continue;
        };
        let transform = if needs_qk_permute(family)
            && matches!(role, TensorRole::AttnQ | TensorRole::AttnQBias)
        {
            Transform::PermuteQK {
                n_head: cfg.num_heads,
            }
        } else if needs_qk_permute(family)
            && matches!(role, TensorRole::AttnK | TensorRole::AttnKBias)
        {
            Transform::PermuteQK {
                n_head: cfg.num_kv_heads,
            }
        } else {
            plain
        };
        out.push(single(
            format!("blk.{layer}.{base}"),
            role,
            Some(layer),
            name,
            shape,
            transform,
        ));
    }

    if !unmapped.is_empty() {
        return Err(ArchError::Unmapped {
            family,
            names: unmapped,
        });
    }
    if let Some((layer, group)) = experts.into_iter().next() {
        let example = group
            .values()
            .next()
            .map(|v| v.0.clone())
            .unwrap_or_default();
        return Err(ArchError::IncompleteExperts {
            layer,
            have: group.len(),
            want: 3 * n_experts,
            example,
        });
    }
    expert_biases.finish(n_experts)?;
    // the converter yields its generated tensors before the checkpoint's
    for (i, (name, values)) in rope_tensors(cfg)?.into_iter().enumerate() {
        out.insert(
            i,
            GgufTensorSpec {
                gguf_name: name.into(),
                role: TensorRole::RopeFreqs,
                layer: None,
                sources: vec![],
                source_shapes: vec![],
                shape_ne: vec![values.len()],
                transform: Transform::Generated(values),
            },
        );
    }
    let mut seen = std::collections::HashSet::new();
    for t in &out {
        if !seen.insert(t.gguf_name.as_str()) {
            return Err(ArchError::Duplicate(t.gguf_name.clone()));
        }
    }
    let plan = GgufPlan {
        arch: gguf_arch(family),
        tensors: out,
        skipped,
    };
    crate::validate::check_plan(cfg, &plan)?;
    Ok(plan)
}

/// Build a GGUF tensor's data (row-major in PyTorch order, i.e. ggml `ne[0]` contiguous)
/// from its sources converted to f32, in `spec.sources` order.
pub fn apply_transform(spec: &GgufTensorSpec, sources: &[Vec<f32>]) -> Result<Vec<f32>, ArchError> {
    let err = |why: String| ArchError::Shape {
        name: spec.gguf_name.clone(),
        why,
    };
    if sources.len() != spec.sources.len() {
        return Err(err(format!(
            "{} sources given, {} expected",
            sources.len(),
            spec.sources.len()
        )));
    }
    for (i, (s, shape)) in sources.iter().zip(&spec.source_shapes).enumerate() {
        let n: usize = shape.iter().product();
        if s.len() != n {
            return Err(err(format!(
                "source {i} has {} elements, shape {shape:?} needs {n}",
                s.len()
            )));
        }
    }
    let shape0 = match (&spec.transform, spec.source_shapes.first()) {
        (Transform::Generated(values), _) => return Ok(values.clone()),
        (_, Some(s)) => s,
        (_, None) => return Err(err("no sources".into())),
    };
    Ok(match &spec.transform {
        Transform::None => sources[0].clone(),
        Transform::AddOne => sources[0].iter().map(|x| x + 1.0).collect(),
        Transform::Generated(values) => values.clone(),
        Transform::Stack => sources.concat(),
        Transform::Deinterleave { part, transpose } => {
            let last = *shape0.last().unwrap_or(&0);
            let half = last / 2;
            let outer = if *transpose {
                shape0[0]
            } else {
                sources[0].len() / last.max(1)
            };
            let mid = if *transpose { shape0[1] } else { 1 };
            let src = &sources[0];
            let mut out = Vec::with_capacity(src.len() / 2);
            for o in 0..outer {
                let base = o * mid * last;
                if *transpose {
                    for i in 0..half {
                        for m in 0..mid {
                            out.push(src[base + m * last + 2 * i + part]);
                        }
                    }
                } else {
                    out.extend((0..half).map(|i| src[base + 2 * i + part]));
                }
            }
            out
        }
        Transform::Mxfp4 { part } => decode_mxfp4(&sources[0], &sources[1], shape0[2], *part),
        Transform::TransposeExperts => {
            let (e, a, b) = (shape0[0], shape0[1], shape0[2]);
            let src = &sources[0];
            let mut out = Vec::with_capacity(src.len());
            for x in 0..e {
                let m = &src[x * a * b..(x + 1) * a * b];
                for j in 0..b {
                    out.extend((0..a).map(|i| m[i * b + j]));
                }
            }
            out
        }
        Transform::PermuteQK { n_head } => {
            let rows = shape0[0];
            let cols: usize = shape0[1..].iter().product();
            if *n_head == 0 || !rows.is_multiple_of(2 * n_head) {
                return Err(err(format!(
                    "{rows} rows do not split into {n_head} heads of pairs"
                )));
            }
            permute_qk(&sources[0], rows, cols, *n_head)
        }
        Transform::KvBSplitK {
            n_head,
            nope,
            v_dim,
        } => {
            let lora = shape0[1];
            let per = nope + v_dim;
            let src = &sources[0];
            let mut out = Vec::with_capacity(n_head * lora * nope);
            for h in 0..*n_head {
                for l in 0..lora {
                    for d in 0..*nope {
                        out.push(src[(h * per + d) * lora + l]);
                    }
                }
            }
            out
        }
        Transform::KvBSplitV {
            n_head,
            nope,
            v_dim,
        } => {
            let lora = shape0[1];
            let per = nope + v_dim;
            let src = &sources[0];
            let mut out = Vec::with_capacity(n_head * v_dim * lora);
            for h in 0..*n_head {
                let start = (h * per + nope) * lora;
                out.extend_from_slice(&src[start..start + v_dim * lora]);
            }
            out
        }
    })
}

/// `LlamaModel.permute`: view rows as `[n_head, 2, half]`, swap the last two axes, so that
/// output row `h*hd + 2j + s` is input row `h*hd + s*half + j`.
pub fn permute_qk(src: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0.0; src.len()];
    for h in 0..n_head {
        for j in 0..half {
            for s in 0..2 {
                let dst = h * hd + 2 * j + s;
                let from = h * hd + s * half + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "gguf_names_tests.rs"]
mod tests;
