//! Everything a GGUF writer needs for one model and mix, assembled from `gguf_names`,
//! `gguf_meta`, `gguf_tokenizer` and `mix`: the metadata in llama.cpp's converter order
//! (architecture keys, then tokenizer keys) and the tensors in the converter's order,
//! each with the type `llama-quantize` would give it.

use crate::gguf_meta::{arch_metadata, llama_cpp_safe_name, Deviation};
use crate::gguf_names::{gguf_plan, GgufTensorSpec};
use crate::gguf_rope::check_gguf_rope;
use crate::gguf_tokenizer::tokenizer_metadata;
use crate::meta::{MetaList, MetaValue};
use crate::mix::{choose_types, Mix, MixModel};
use crate::{ArchConfig, ArchError};
use llmq_formats::GgmlType;
use std::path::Path;

/// A model's GGUF layout for one mix.
#[derive(Debug, Clone)]
pub struct GgufExport {
    pub metadata: MetaList,
    /// tensors in file order, with their GGML type
    pub tensors: Vec<(GgufTensorSpec, GgmlType)>,
    /// metadata keys where we knowingly differ from llama.cpp's converter
    pub deviations: Vec<Deviation>,
    /// HF tensors deliberately not exported, with the reason
    pub skipped: Vec<(String, String)>,
}

/// Build the export for the model folder `dir` (tokenizer files), its config and HF
/// tensor list, with `general.name` = `name` (made loadable, see `llama_cpp_safe_name`).
pub fn gguf_export(
    dir: &Path,
    cfg: &ArchConfig,
    hf_tensors: &[(String, Vec<usize>)],
    mix: Mix,
    name: &str,
) -> Result<GgufExport, ArchError> {
    check_gguf_rope(cfg)?;
    let plan = gguf_plan(cfg, hf_tensors)?;
    let tok = tokenizer_metadata(dir, cfg.family, cfg.vocab_size)?;
    let name = match tok.get("tokenizer.ggml.tokens") {
        Some(MetaValue::ArrStr(tokens)) => llama_cpp_safe_name(name, tokens),
        _ => name.to_string(),
    };
    let (mut metadata, deviations) = arch_metadata(cfg, &name, mix.file_type())?;
    metadata.extend(tok);
    let types = choose_types(mix, &MixModel::from_config(cfg), &plan.mix_tensors())?;
    Ok(GgufExport {
        metadata,
        tensors: plan.tensors.into_iter().zip(types).collect(),
        deviations,
        skipped: plan.skipped,
    })
}
