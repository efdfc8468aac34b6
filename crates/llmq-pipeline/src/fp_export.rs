//! `quantize MODEL compressed-tensors -q NVFP4|MXFP4|FP8|FP8_BLOCK|FP8_TENSOR`: every
//! Linear weight of a Hugging Face model onto a floating-point grid
//! ([`llmq_hfquant::fp_quantized`]: round-to-nearest with FP-Quant's MSE scale search),
//! written in compressed-tensors' `nvfp4-pack-quantized`, `mxfp4-pack-quantized` or
//! `float-quantized` layout ([`llmq_hfquant::ct_fp`]); tensor by tensor straight from
//! the source (no calibration, no forward pass). Levels: `NVFP4` (= the package's
//! `NVFP4A16`), `MXFP4` (`MXFP4A16`), `FP8` (`FP8_DYNAMIC`: per-channel weights,
//! dynamic per-token FP8 activations, the W8A8-FP8 layout vLLM loads), `FP8_BLOCK`
//! (128×128 weight blocks) and `FP8_TENSOR` (weight-only, one scale).
//!
//! Quantized: 2-D `*.weight` tensors inside the decoder layers whose input dimension
//! fills whole groups, except norms and MoE routers; everything else is copied and the
//! routers are listed in `ignore` with `lm_head`.

use crate::error::{PipelineError, Result};
use crate::report::{QuantizeOutcome, TensorReport};
use crate::request::{Layout, OutputFormat, QuantizeRequest};
use crate::run::Progress;
use crate::source::{self, ResolvedModel};
use crate::staging::{self, OutputKind, StagedFolder};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::ct_fp;
use llmq_hfquant::fp_quantized::rtn_fp;
use llmq_hfquant::read::{HfCheckpoint, HfWeight};
use llmq_hfquant::{Dtype, FpScheme, HfTensor, ShardedWriter};
use std::path::Path;

/// The floating-point scheme a compressed-tensors level names, if it names one.
pub fn fp_level(level: &str) -> Option<FpScheme> {
    match level.to_ascii_uppercase().as_str() {
        "NVFP4" | "NVFP4A16" => Some(FpScheme::Nvfp4),
        "MXFP4" | "MXFP4A16" => Some(FpScheme::Mxfp4),
        "FP8" | "FP8_DYNAMIC" => Some(FpScheme::Fp8Channel),
        "FP8_BLOCK" => Some(FpScheme::Fp8Block),
        "FP8_TENSOR" => Some(FpScheme::Fp8Tensor),
        _ => None,
    }
}

/// The scheme of a request that writes compressed-tensors at a floating-point level.
pub(crate) fn fp_scheme(req: &QuantizeRequest) -> Option<FpScheme> {
    (req.format == OutputFormat::Hf(Layout::CompressedTensors))
        .then(|| fp_level(&req.level))
        .flatten()
}

fn hf_err(e: llmq_hfquant::Error) -> PipelineError {
    PipelineError::general(e.to_string(), "Report this as a bug")
}

/// Whether `name` (`shape`) is a Linear weight this run quantizes: `Some(true)`, a
/// Linear kept in full precision (router, partial group): `Some(false)`.
fn linear(name: &str, shape: &[usize], scheme: FpScheme) -> Option<bool> {
    if shape.len() != 2 || !name.ends_with(".weight") || !name.contains(".layers.") {
        return None;
    }
    if name.contains("norm") {
        return None;
    }
    let router = name.ends_with(".mlp.gate.weight")
        || name.ends_with(".block_sparse_moe.gate.weight")
        || name.ends_with(".router.weight");
    let fits = scheme
        .group_size()
        .is_none_or(|g| scheme == FpScheme::Fp8Block || shape[1].is_multiple_of(g));
    Some(!router && fits)
}

fn st_dtype(d: StDtype) -> Option<Dtype> {
    match d {
        StDtype::F32 => Some(Dtype::F32),
        StDtype::F16 => Some(Dtype::F16),
        StDtype::BF16 => Some(Dtype::BF16),
        StDtype::Other(_) => None,
    }
}

/// Quantizes the model onto `scheme` and writes the folder.
pub(crate) fn quantize_fp(
    req: &QuantizeRequest,
    resolved: ResolvedModel,
    progress: &dyn Progress,
    scheme: FpScheme,
) -> Result<QuantizeOutcome> {
    let dir = match resolved {
        ResolvedModel::HfDir(d) => d,
        ResolvedModel::GgufFile(f) => {
            return Err(PipelineError::unsupported(
                format!(
                "{} is a GGUF file; compressed-tensors {} needs a Hugging Face safetensors source",
                f.display(),
                req.level
            ),
                "Pass the original Hugging Face model (folder or hub id)",
            ))
        }
    };
    let name = source::display_name(&req.model);
    let (cfg, st) = source::open_hf(&dir)?;
    let summary = source::summarize_hf(&name, &cfg, &st);
    staging::prepare_output_dir(&req.output_dir)?;
    let final_dir = staging::output_path(
        &req.output_dir,
        req.output_name.as_deref(),
        format!("{name}-{}-{}", req.format.name(), req.level),
        OutputKind::Folder,
    )?;
    staging::refuse_source_as_output(&final_dir, &dir)?;
    let staged = StagedFolder::create(&final_dir)?;
    let written = write(req, &st, &dir, &staged.tmp, scheme, progress);
    let (reports, _ignored, validated) = match written {
        Ok(r) => r,
        Err(e) => {
            staged.discard();
            return Err(e);
        }
    };
    let final_dir = staged.commit()?;
    let file_size = StagedFolder::model_bytes(&final_dir);
    progress.message(&format!(
        "Complete: {} ({:.1} MB)",
        final_dir.display(),
        file_size as f64 / 1e6
    ));
    Ok(QuantizeOutcome {
        output: final_dir,
        format: req.format.name().to_string(),
        level: req.level.clone(),
        method: "rtn".to_string(),
        file_size,
        params: summary.parameter_count,
        summary,
        tensors: reports,
        calibration: None,
        units: 1,
        units_resumed: 0,
        workers: None,
        validated,
        peak_memory_bytes: crate::memory::peak_rss_bytes().unwrap_or(0),
        allocation: None,
    })
}

type Written = (Vec<TensorReport>, Vec<String>, bool);

fn write(
    req: &QuantizeRequest,
    st: &SafetensorsModel,
    src_dir: &Path,
    tmp: &Path,
    scheme: FpScheme,
    progress: &dyn Progress,
) -> Result<Written> {
    progress.message(&format!("Quantizing every Linear to {}", req.level));
    let mut w =
        ShardedWriter::new(tmp, llmq_hfquant::writer::DEFAULT_MAX_SHARD_BYTES).map_err(hf_err)?;
    let mut names: Vec<(String, Vec<usize>)> = st
        .tensors()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    names.sort();
    let mut reports = Vec::new();
    let mut ignored = vec!["lm_head".to_string()];
    let mut expected: Vec<(String, Vec<f32>)> = Vec::new();
    for (n, shape) in &names {
        match linear(n, shape, scheme) {
            Some(true) => {
                let (o, i) = (shape[0], shape[1]);
                let src = st.f32(n).map_err(source::safetensors_error)?;
                let q = rtn_fp(&src, o, i, scheme, true);
                let deq = q.dequantize();
                let (mut se, mut ss) = (0.0f64, 0.0f64);
                for (a, b) in src.iter().zip(&deq) {
                    se += ((a - b) as f64).powi(2);
                    ss += (*a as f64).powi(2);
                }
                let rmse = (se / src.len() as f64).sqrt();
                let rel = if ss > 0.0 { (se / ss).sqrt() } else { 0.0 };
                let prefix = n.strip_suffix(".weight").unwrap_or(n);
                w.add_all(ct_fp::pack(prefix, &q)).map_err(hf_err)?;
                reports.push(TensorReport {
                    name: n.clone(),
                    shape: [o, i],
                    quant: req.level.clone(),
                    method: "rtn:mse-scale".to_string(),
                    rmse: Some(rmse),
                    rel_rmse: Some(rel),
                    sha256: None,
                    calibration: None,
                });
                if req.validate {
                    expected.push((n.clone(), deq));
                }
            }
            kept => {
                if kept == Some(false) {
                    ignored.push(n.strip_suffix(".weight").unwrap_or(n).to_string());
                }
                let view = st.get(n).map_err(source::safetensors_error)?;
                let dt = st_dtype(view.info.dtype).ok_or_else(|| {
                    PipelineError::unsupported(
                        format!("tensor {n} has dtype {}", view.info.dtype.name()),
                        "Only F32/F16/BF16 sources are supported",
                    )
                })?;
                w.add(
                    n.clone(),
                    HfTensor::from_raw(dt, &view.info.shape, view.bytes.to_vec()),
                )
                .map_err(hf_err)?;
                st.release(n);
            }
        }
    }
    w.finish().map_err(hf_err)?;
    let qc = ct_fp::quantization_config(scheme, &ignored);
    llmq_hfquant::writer::copy_model_files(src_dir, tmp, &qc).map_err(hf_err)?;
    if req.validate {
        progress.message("Validating output...");
        validate(tmp, &expected)?;
    }
    Ok((reports, ignored, req.validate))
}

/// Reads the folder back through `llmq_hfquant::read` and requires every quantized
/// module to dequantize to the values computed here (with an input rotation folded
/// back in, for MR-GPTQ's folders).
pub(crate) fn validate(dir: &Path, expected: &[(String, Vec<f32>)]) -> Result<()> {
    let st = SafetensorsModel::open(dir).map_err(source::safetensors_error)?;
    let ck = HfCheckpoint::from_parts(dir, st).map_err(hf_err)?;
    for (n, want) in expected {
        let got = match ck.read(n).map_err(hf_err)? {
            HfWeight::Dense(t) => llmq_hfquant::read::dense_f32(&t),
            HfWeight::Int(q) => q.dequantize(),
        };
        if got.len() != want.len()
            || got
                .iter()
                .zip(want)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Err(PipelineError::validation(
                format!("{n}: the written tensors do not read back to the quantized values"),
                "Report this as a bug",
            ));
        }
    }
    Ok(())
}
