//! `info MODEL`: architecture and sizes of a Hugging Face folder, a Hub id or a GGUF
//! file; for GGUF files also the file type, bits per weight and per-tensor types. A
//! Hub id is described from its `config.json` and safetensors headers alone
//! ([`crate::hub_headers`]), without downloading the weights.

use crate::error::{PipelineError, Result};
use crate::gguf_source::{dominant_type, vocab_size};
use crate::source::{self, ResolvedModel};
use crate::NoProgress;
use llmq_formats::gguf::{GgufFile, GgufValue};
use serde_json::json;
use std::collections::BTreeMap;

/// Details of a quantized file.
#[derive(Debug, Clone)]
pub struct QuantizedInfo {
    pub format: String,
    pub file_type: String,
    pub bits_per_weight: f64,
    pub file_size: u64,
    pub type_counts: BTreeMap<String, usize>,
    /// (name, type, shape in PyTorch order)
    pub tensors: Vec<(String, String, Vec<u64>)>,
}

/// What `info` reports (the contract's fields plus extras).
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model_name: String,
    pub architecture: String,
    pub parameter_count: u64,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub vocab_size: usize,
    pub torch_dtype: String,
    pub experts: Option<usize>,
    pub quantization: Option<QuantizedInfo>,
}

impl ModelInfo {
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "model_name": self.model_name,
            "architecture": self.architecture,
            "parameter_count": self.parameter_count,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "vocab_size": self.vocab_size,
            "torch_dtype": self.torch_dtype,
            "num_experts": self.experts,
        });
        if let Some(q) = &self.quantization {
            let o = v.as_object_mut().unwrap();
            o.insert("format".into(), json!(q.format));
            o.insert("file_type".into(), json!(q.file_type));
            o.insert(
                "bits_per_weight".into(),
                json!((q.bits_per_weight * 1000.0).round() / 1000.0),
            );
            o.insert("file_size".into(), json!(q.file_size));
            o.insert("tensor_types".into(), json!(q.type_counts));
            o.insert(
                "tensors".into(),
                json!(q
                    .tensors
                    .iter()
                    .map(|(n, t, s)| json!({"name": n, "type": t, "shape": s}))
                    .collect::<Vec<_>>()),
            );
        }
        v
    }
}

/// What `info` reports of a Hugging Face folder.
fn hf_info(model: &str, name: &str, dir: &std::path::Path) -> Result<ModelInfo> {
    let (cfg, st) = source::open_hf(dir)?;
    let s = source::summarize_hf(name, &cfg, &st);
    Ok(ModelInfo {
        model_name: model.to_string(),
        architecture: s.architecture,
        parameter_count: s.parameter_count,
        hidden_size: s.hidden,
        num_layers: s.layers,
        num_heads: s.heads,
        vocab_size: s.vocab,
        torch_dtype: s.original_dtype,
        experts: s.experts,
        quantization: None,
    })
}

/// Describe a model.
pub fn model_info(model: &str, token: Option<String>) -> Result<ModelInfo> {
    let name = source::display_name(model);
    // a Hub id (as `source::resolve` decides: no such path): headers only
    if !std::path::Path::new(model).exists() && crate::hub::looks_like_hub_id(model) {
        let opts = crate::hub::HubOptions::from_env(token);
        return match crate::hub_headers::fetch_headers(model, &opts) {
            Ok(scratch) => hf_info(model, &name, scratch.path()),
            // offline, as `quantize` does: a complete snapshot in the cache serves
            Err(e @ crate::hub::HubError::Network { .. }) => {
                match crate::hub::cached_model(model, &opts) {
                    Some(dir) => hf_info(model, &name, &dir),
                    None => Err(source::hub_error(e)),
                }
            }
            Err(e) => Err(source::hub_error(e)),
        };
    }
    match source::resolve(model, token, &NoProgress)? {
        ResolvedModel::HfDir(dir) => hf_info(model, &name, &dir),
        ResolvedModel::GgufFile(path) => {
            let f = GgufFile::open(&path).map_err(|e| {
                PipelineError::validation(
                    format!("{} is not a readable GGUF file: {e}", path.display()),
                    "Re-create the file",
                )
            })?;
            let arch = f
                .get("general.architecture")
                .and_then(GgufValue::as_str)
                .unwrap_or("unknown")
                .to_string();
            let u = |k: &str| {
                f.get(&format!("{arch}.{k}"))
                    .and_then(GgufValue::as_u32)
                    .unwrap_or(0) as usize
            };
            let params: u64 = f
                .tensors()
                .iter()
                .map(|t| t.shape_ne.iter().product::<u64>())
                .sum();
            let data: u64 = f
                .tensors()
                .iter()
                .map(|t| f.tensor_bytes(t).len() as u64)
                .sum();
            let mut counts = BTreeMap::new();
            for t in f.tensors() {
                *counts.entry(t.ggml_type.name().to_string()).or_insert(0) += 1;
            }
            let file_type = f
                .get("general.file_type")
                .and_then(GgufValue::as_u32)
                .and_then(|ft| llmq_arch::mix::Mix::all().find(|m| m.file_type() == ft))
                .map(|m| m.name().to_string())
                .unwrap_or_else(|| dominant_type(&f));
            let experts = u("expert_count");
            Ok(ModelInfo {
                model_name: f
                    .get("general.name")
                    .and_then(GgufValue::as_str)
                    .unwrap_or(&name)
                    .to_string(),
                architecture: arch.clone(),
                parameter_count: params,
                hidden_size: u("embedding_length"),
                num_layers: u("block_count"),
                num_heads: u("attention.head_count"),
                vocab_size: vocab_size(&f, &arch),
                torch_dtype: dominant_type(&f),
                experts: (experts > 0).then_some(experts),
                quantization: Some(QuantizedInfo {
                    format: "gguf".into(),
                    file_type,
                    bits_per_weight: if params > 0 {
                        data as f64 * 8.0 / params as f64
                    } else {
                        0.0
                    },
                    file_size: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                    type_counts: counts,
                    tensors: f
                        .tensors()
                        .iter()
                        .map(|t| {
                            (
                                t.name.clone(),
                                t.ggml_type.name().to_string(),
                                t.shape_ne.iter().rev().copied().collect(),
                            )
                        })
                        .collect(),
                }),
            })
        }
    }
}
