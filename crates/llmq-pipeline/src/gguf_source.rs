//! A GGUF file as a quantize source (requantization, as `llama-quantize` does): the
//! metadata is copied with a new `general.file_type`, every tensor is dequantized to
//! f32 on demand and quantized to the type the mix rules choose; a tensor whose type
//! does not change is copied byte for byte.

use crate::error::{PipelineError, Result};
use crate::quantize::Planned;
use crate::run::{TensorJob, TensorSource, WorkUnit};
use crate::source::ModelSummary;
use llmq_arch::mix::{self, Mix, MixModel, MixTensor};
use llmq_formats::gguf::{GgufFile, GgufPlan, GgufValue, PlannedTensor};
use std::path::Path;

struct GgufTensors {
    file: GgufFile,
}

/// Exit 6 when a tensor of the source stores a NaN or infinity (in its values or, for
/// block types, in a block's scales), as for safetensors sources.
fn check_finite(name: &str, ty: llmq_formats::GgmlType, bytes: &[u8]) -> Result<()> {
    match llmq_formats::finite::first_non_finite(ty, bytes) {
        Some(bad) => Err(PipelineError::validation(
            format!("tensor {name} ({ty}) of the source GGUF is not finite: {bad}"),
            "The source file is corrupt; re-download or re-create it",
        )),
        None => Ok(()),
    }
}

impl TensorSource for GgufTensors {
    fn load_f32(&self, job: &TensorJob) -> Result<Vec<f32>> {
        let t = self.file.tensor(&job.name).expect("planned from this file");
        let bytes = self.file.tensor_bytes(t);
        check_finite(&job.name, t.ggml_type, bytes)?;
        let mut out = vec![0f32; job.numel()];
        llmq_quant::dequantize(t.ggml_type, bytes, &mut out).map_err(|e| {
            PipelineError::unsupported(
                format!(
                    "cannot read tensor {} of type {}: {e}",
                    job.name, t.ggml_type
                ),
                "Requantize from the original Hugging Face checkpoint instead",
            )
        })?;
        Ok(out)
    }

    fn load_rows(&self, job: &TensorJob, r0: usize, r1: usize) -> Option<Result<Vec<f32>>> {
        let t = self.file.tensor(&job.name)?;
        let n = t.shape_ne[0] as usize;
        let row_bytes = t.ggml_type.row_bytes(n)?;
        let bytes = &self.file.tensor_bytes(t)[r0 * row_bytes..r1 * row_bytes];
        if let Err(e) = check_finite(&job.name, t.ggml_type, bytes) {
            return Some(Err(e));
        }
        let mut out = vec![0f32; (r1 - r0) * n];
        Some(
            llmq_quant::dequantize(t.ggml_type, bytes, &mut out)
                .map(|_| out)
                .map_err(|e| {
                    PipelineError::unsupported(
                        format!(
                            "cannot read tensor {} of type {}: {e}",
                            job.name, t.ggml_type
                        ),
                        "Requantize from the original Hugging Face checkpoint instead",
                    )
                }),
        )
    }

    fn release(&self, job: &TensorJob) {
        if let Some(t) = self.file.tensor(&job.name) {
            self.file.release_tensor(t);
        }
    }

    fn passthrough(&self, job: &TensorJob) -> Option<Vec<u8>> {
        let t = self.file.tensor(&job.name)?;
        let bytes = self.file.tensor_bytes(t);
        // a non-finite tensor goes through `load_f32`, which reports it
        (t.ggml_type == job.ty
            && llmq_formats::finite::first_non_finite(t.ggml_type, bytes).is_none())
        .then(|| bytes.to_vec())
    }
}

/// Group jobs into work units: unit 0 holds the tensors outside any block
/// (embeddings, output norm, head), unit 1+i holds block i.
pub fn units_by_layer(
    mut jobs: Vec<TensorJob>,
    layers: &[Option<usize>],
    n_layers: usize,
) -> (Vec<TensorJob>, Vec<WorkUnit>) {
    let mut units: Vec<WorkUnit> = std::iter::once(WorkUnit {
        label: "embeddings/output".into(),
        jobs: vec![],
    })
    .chain((0..n_layers).map(|i| WorkUnit {
        label: format!("blk.{i}"),
        jobs: vec![],
    }))
    .collect();
    for (j, (job, layer)) in jobs.iter_mut().zip(layers).enumerate() {
        let u = layer.map(|l| l + 1).unwrap_or(0).min(units.len() - 1);
        job.unit = u;
        units[u].jobs.push(j);
    }
    units.retain(|u| !u.jobs.is_empty());
    // Re-number after dropping empty units.
    for (ui, u) in units.iter().enumerate() {
        for &j in &u.jobs {
            jobs[j].unit = ui;
        }
    }
    (jobs, units)
}

fn u32_key(f: &GgufFile, key: &str) -> Option<u32> {
    f.get(key).and_then(GgufValue::as_u32)
}

/// The block index of a GGUF tensor name `blk.N.*`.
pub fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Plan the requantization of a GGUF file.
pub fn plan(path: &Path, name: &str, level: Mix) -> Result<Planned> {
    let file = GgufFile::open(path).map_err(|e| {
        PipelineError::validation(
            format!("{} is not a readable GGUF file: {e}", path.display()),
            "Re-download or re-create the file",
        )
    })?;
    let arch = file
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| {
            PipelineError::validation("GGUF file lacks general.architecture", "Re-create the file")
        })?
        .to_string();
    let n_layer = u32_key(&file, &format!("{arch}.block_count")).ok_or_else(|| {
        PipelineError::validation(
            format!("GGUF file lacks {arch}.block_count"),
            "Re-create the file",
        )
    })? as usize;
    let n_head = u32_key(&file, &format!("{arch}.attention.head_count")).unwrap_or(1) as usize;
    let shape = MixModel {
        arch: arch.clone(),
        n_layer,
        n_head,
        n_head_kv: u32_key(&file, &format!("{arch}.attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head),
        n_expert: u32_key(&file, &format!("{arch}.expert_count")).unwrap_or(0) as usize,
        is_70b: arch == "llama" && n_layer == 80,
        has_imatrix: false,
    };

    let mix_in: Vec<MixTensor> = file
        .tensors()
        .iter()
        .map(|t| MixTensor {
            name: t.name.clone(),
            shape_ne: t.shape_ne.iter().map(|&d| d as usize).collect(),
        })
        .collect();
    let layers: Vec<Option<usize>> = file
        .tensors()
        .iter()
        .map(|t| block_index(&t.name))
        .collect();
    let types = mix::choose_types(level, &shape, &mix_in).map_err(|e| {
        PipelineError::general(e.to_string(), "Report this as a bug, with the model")
    })?;

    let mut metadata: Vec<(String, GgufValue)> = file
        .metadata()
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "general.file_type" && k.as_str() != "general.quantization_version"
        })
        .cloned()
        .collect();
    metadata.push((
        "general.file_type".into(),
        GgufValue::U32(level.file_type()),
    ));
    metadata.push(("general.quantization_version".into(), GgufValue::U32(2)));

    let jobs: Vec<TensorJob> = file
        .tensors()
        .iter()
        .zip(&types)
        .map(|(t, ty)| TensorJob {
            name: t.name.clone(),
            shape_ne: t.shape_ne.clone(),
            ty: *ty,
            unit: 0,
        })
        .collect();
    let (jobs, units) = units_by_layer(jobs, &layers, n_layer);
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
        alignment: file.alignment(),
    };
    let params: u64 = jobs.iter().map(|j| j.numel() as u64).sum();
    let dominant = dominant_type(&file);
    let summary = ModelSummary {
        name: name.to_string(),
        architecture: arch.clone(),
        layers: n_layer,
        hidden: u32_key(&file, &format!("{arch}.embedding_length")).unwrap_or(0) as usize,
        experts: (shape.n_expert > 0).then_some(shape.n_expert),
        heads: n_head,
        vocab: vocab_size(&file, &arch),
        original_dtype: dominant,
        original_size: file
            .tensors()
            .iter()
            .map(|t| file.tensor_bytes(t).len() as u64)
            .sum(),
        parameter_count: params,
    };
    let meta = std::fs::metadata(path).map_err(|e| PipelineError::io("cannot read", path, &e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos());
    let identity = format!(
        "{} {} {:?}",
        path.canonicalize().unwrap_or(path.to_path_buf()).display(),
        meta.len(),
        mtime
    );
    Ok(Planned {
        plan,
        jobs,
        units,
        source: Box::new(GgufTensors { file }),
        summary,
        identity,
    })
}

/// The vocabulary size of a GGUF model.
pub fn vocab_size(f: &GgufFile, arch: &str) -> usize {
    if let Some(v) = u32_key(f, &format!("{arch}.vocab_size")) {
        return v as usize;
    }
    match f.get("tokenizer.ggml.tokens") {
        Some(GgufValue::Array(a)) => a.len(),
        _ => 0,
    }
}

/// The type holding the most elements (what the file "is").
pub fn dominant_type(f: &GgufFile) -> String {
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    for t in f.tensors() {
        *by.entry(t.ggml_type.name().to_string()).or_default() +=
            t.shape_ne.iter().product::<u64>();
    }
    by.into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(t, _)| t)
        .unwrap_or_default()
}
