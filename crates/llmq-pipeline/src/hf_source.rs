//! A Hugging Face folder as a quantize source: the GGUF tensor plan of
//! `llmq_arch::gguf_names` (names, stacking, Q/K permutation), the types chosen by the
//! mix rules, metadata and tokenizer for llama.cpp, and a [`TensorSource`] that reads
//! each tensor's sources from the memory-mapped safetensors only when a worker asks.

use crate::error::{PipelineError, Result};
use crate::gguf_source::units_by_layer;
use crate::quantize::Planned;
use crate::run::{TensorJob, TensorSource, WorkUnit};
use crate::source::{self, safetensors_error};
use llmq_arch::gguf_export::gguf_export;
use llmq_arch::gguf_names::{apply_transform, GgufTensorSpec, Transform};
use llmq_arch::mix::Mix;
use llmq_arch::ArchError;
use llmq_formats::gguf::{GgufPlan, PlannedTensor};
use llmq_formats::safetensors::SafetensorsModel;
use llmq_formats::GgmlType;
use std::collections::HashMap;
use std::path::Path;

/// Reads GGUF tensors from safetensors on demand.
struct HfTensors {
    st: SafetensorsModel,
    specs: HashMap<String, GgufTensorSpec>,
}

impl TensorSource for HfTensors {
    fn load_rows(&self, job: &TensorJob, r0: usize, r1: usize) -> Option<Result<Vec<f32>>> {
        let spec = &self.specs[&job.name];
        if spec.transform != Transform::None || spec.sources.len() != 1 {
            return None;
        }
        let n = job.row_len();
        Some(
            self.st
                .get(&spec.sources[0])
                .and_then(|v| v.range_f32(r0 * n, r1 * n))
                .map_err(safetensors_error),
        )
    }

    fn release(&self, job: &TensorJob) {
        for s in &self.specs[&job.name].sources {
            self.st.release(s);
        }
    }

    fn describe(&self, job: &TensorJob) -> String {
        let spec = &self.specs[&job.name];
        match spec.sources.as_slice() {
            [] => format!("{} (computed from config.json)", job.name),
            [one] => format!("{} (from {one})", job.name),
            many => format!(
                "{} (from {} and {} more)",
                job.name,
                many[0],
                many.len() - 1
            ),
        }
    }

    /// MXFP4-packed experts written as GGML MXFP4: repacked byte for byte, as
    /// llama.cpp's converter does, instead of decoded and requantized.
    fn passthrough(&self, job: &TensorJob) -> Option<Vec<u8>> {
        let spec = &self.specs[&job.name];
        let Transform::Mxfp4 { part } = spec.transform else {
            return None;
        };
        if job.ty != GgmlType::MXFP4 {
            return None;
        }
        let u8_view = |name: &str| {
            self.st
                .get(name)
                .ok()
                .filter(|v| v.info.dtype == llmq_formats::safetensors::StDtype::Other("U8"))
        };
        let (blocks, scales) = (u8_view(&spec.sources[0])?, u8_view(&spec.sources[1])?);
        let bytes =
            llmq_arch::repack_mxfp4(blocks.bytes, scales.bytes, spec.source_shapes[0][2], part);
        // a wrong size or a NaN scale (E8M0 0xFF) goes through `load_f32`, which reports it
        let want = job.numel() / 32 * GgmlType::MXFP4.type_size();
        (bytes.len() == want
            && llmq_formats::finite::first_non_finite(GgmlType::MXFP4, &bytes).is_none())
        .then_some(bytes)
    }

    fn load_f32(&self, job: &TensorJob) -> Result<Vec<f32>> {
        let spec = &self.specs[&job.name];
        if spec.transform == Transform::None && spec.sources.len() == 1 {
            // No copy: the converted source is the tensor.
            return self.st.f32(&spec.sources[0]).map_err(safetensors_error);
        }
        let mut sources = Vec::with_capacity(spec.sources.len());
        for s in &spec.sources {
            let v = if spec.transform.reads_bytes() {
                self.st.get(s).and_then(|v| v.u8_as_f32())
            } else {
                self.st.f32(s)
            };
            sources.push(v.map_err(safetensors_error)?);
        }
        apply_transform(spec, &sources).map_err(|e| {
            PipelineError::validation(
                e.to_string(),
                "The checkpoint does not match its config.json",
            )
        })
    }
}

/// Plan the GGUF output of a Hugging Face folder.
pub fn plan(dir: &Path, name: &str, level: Mix) -> Result<Planned> {
    let (cfg, st) = source::open_hf(dir)?;
    let summary = source::summarize_hf(name, &cfg, &st);
    // Refuse dtypes we cannot read before any work starts. Packed codes (GPT-OSS's
    // MXFP4 `*_blocks` / `*_scales`) are decoded by their transform.
    let hf_list: Vec<(String, Vec<usize>)> = st
        .tensors()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let packed: std::collections::HashSet<String> = llmq_arch::gguf_plan(&cfg, &hf_list)
        .map(|p| {
            p.tensors
                .into_iter()
                .filter(|t| t.transform.reads_bytes())
                .flat_map(|t| t.sources)
                .collect()
        })
        .unwrap_or_default();
    for t in st.tensors() {
        if let llmq_formats::safetensors::StDtype::Other(d) = t.dtype {
            // Some checkpoints carry integer buffers we never read; only weights matter.
            let readable =
                t.name.ends_with("_scale_inv") || (d == "U8" && packed.contains(&t.name));
            if !readable {
                return Err(safetensors_error(
                    llmq_formats::safetensors::SafetensorsError::UnsupportedDtype {
                        name: t.name.clone(),
                        dtype: d.to_string(),
                    },
                ));
            }
        }
    }
    let hf: Vec<(String, Vec<usize>)> = st
        .tensors()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let export = gguf_export(dir, &cfg, &hf, level, name).map_err(export_error)?;
    let metadata = export.metadata.to_gguf();
    let (specs, types): (Vec<GgufTensorSpec>, Vec<GgmlType>) = export.tensors.into_iter().unzip();

    let jobs: Vec<TensorJob> = specs
        .iter()
        .zip(&types)
        .map(|(s, ty)| TensorJob {
            name: s.gguf_name.clone(),
            shape_ne: s.shape_ne.iter().map(|&d| d as u64).collect(),
            ty: *ty,
            unit: 0,
        })
        .collect();
    let layers: Vec<Option<usize>> = specs.iter().map(|s| s.layer).collect();
    let (jobs, units): (Vec<TensorJob>, Vec<WorkUnit>) =
        units_by_layer(jobs, &layers, cfg.num_layers);
    let plan = GgufPlan {
        metadata,
        tensors: jobs
            .iter()
            .map(|j| PlannedTensor {
                name: j.name.clone(),
                shape_ne: j.shape_ne.clone(),
                ggml_type: j.ty,
            })
            .collect(),
        alignment: 32,
    };
    let identity = files_identity(dir);
    let specs = specs
        .into_iter()
        .map(|s| (s.gguf_name.clone(), s))
        .collect();
    Ok(Planned {
        plan,
        jobs,
        units,
        source: Box::new(HfTensors { st, specs }),
        summary,
        identity,
    })
}

pub(crate) fn export_error(e: ArchError) -> PipelineError {
    match e {
        ArchError::Io { .. }
        | ArchError::TokenizerJson { .. }
        | ArchError::UnsupportedTokenizer(_)
        | ArchError::MalformedTokenizer(_) => PipelineError::validation(
            format!("tokenizer: {e}"),
            "The folder needs a valid tokenizer.json",
        ),
        ArchError::UnsupportedValue { .. } => PipelineError::unsupported(
            e.to_string(),
            "This model uses a setting llm-quantize does not implement yet",
        ),
        ArchError::Unrepresentable(_) => PipelineError::unsupported(
            e.to_string(),
            "This configuration cannot be expressed in GGUF",
        ),
        ArchError::NoLayer(_) | ArchError::BadLayer { .. } => {
            PipelineError::general(e.to_string(), "Report this as a bug, with the model")
        }
        _ => PipelineError::validation(
            e.to_string(),
            "The checkpoint's tensors do not match its config.json",
        ),
    }
}

/// Paths, sizes and modification times of the folder's files: what a checkpoint is for.
pub fn files_identity(dir: &Path) -> String {
    let mut lines = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos());
                lines.push(format!(
                    "{} {} {:?}",
                    e.file_name().to_string_lossy(),
                    m.len(),
                    mtime
                ));
            }
        }
    }
    lines.sort();
    format!(
        "{}\n{}",
        dir.canonicalize().unwrap_or(dir.to_path_buf()).display(),
        lines.join("\n")
    )
}
