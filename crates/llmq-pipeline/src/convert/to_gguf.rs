//! Conversion of a Hugging Face quantized folder into GGUF: the tensor plan, metadata
//! and tokenizer of `llmq_arch::gguf_export` (llama.cpp's converter names, stacking and
//! Q/K permutation), types from the mix rules for the quantized modules, while tensors
//! that were dense in the source keep their float type. Each quantized tensor is first
//! fitted exactly onto `Q4_0` / `Q8_0` blocks ([`super::grid::fit_ggml`]) and otherwise
//! quantized with `llmq_quant`; it is lossless when its dequantized values equal the
//! source's bit for bit. Written with `llmq_formats`' streaming GGUF writer
//! ([`write_plan`] and [`write_tensor`]), then re-read by [`verify`].

use super::grid::fit_ggml;
use super::to_hf::hf_err;
use super::{bits_equal, rel_rmse, TensorConversion};
use crate::checkpoint::sha256_hex;
use crate::error::{PipelineError, Result};
use crate::hf_source::export_error;
use llmq_arch::gguf_export::gguf_export;
use llmq_arch::gguf_names::{apply_transform, Transform};
use llmq_arch::mix::Mix;
use llmq_arch::ArchConfig;
use llmq_formats::gguf::{GgufFile, GgufPlan, GgufStreamWriter, PlannedTensor};
use llmq_formats::GgmlType;
use llmq_hfquant::read::{HfCheckpoint, HfWeight};
use llmq_hfquant::Dtype;
use std::path::Path;

fn gguf_err(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::general(
        format!("writing {}: {e}", path.display()),
        "Check the output directory",
    )
}

/// The float type a dense source tensor keeps (1-D tensors are F32, as llama.cpp has them).
fn dense_type(planned: GgmlType, dtype: Dtype, n_dims: usize) -> GgmlType {
    if n_dims == 1 || planned == GgmlType::F32 {
        return GgmlType::F32;
    }
    match dtype {
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::BF16,
        _ => GgmlType::F32,
    }
}

/// The streaming writer for `plan`, writing `<path>.tmp` and renaming it to `path`.
fn write_plan(path: &Path, plan: &GgufPlan) -> Result<GgufStreamWriter> {
    GgufStreamWriter::create(path, plan).map_err(|e| gguf_err(path, e))
}

/// One tensor's bytes into the writer.
fn write_tensor(w: &GgufStreamWriter, name: &str, bytes: &[u8]) -> Result<()> {
    w.write_tensor(name, bytes)
        .map_err(|e| gguf_err(w.final_path(), e))
}

/// What [`convert`] remembers of each tensor for [`verify`].
pub(super) struct Written {
    name: String,
    ty: GgmlType,
    bytes_sha: String,
    /// sha256 of the source values' bits, for the tensors claimed lossless
    source_sha: Option<String>,
}

fn f32_bits_sha(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
    sha256_hex(&bytes)
}

/// Converts `ck` to GGUF at `path` with `mix`'s types for the quantized tensors.
pub(super) fn convert(
    ck: &HfCheckpoint,
    cfg: &ArchConfig,
    mix: Mix,
    name: &str,
    path: &Path,
    progress: &dyn crate::Progress,
) -> Result<(Vec<TensorConversion>, Vec<Written>)> {
    let hf = ck.tensors();
    let export = gguf_export(&ck.dir, cfg, &hf, mix, name).map_err(export_error)?;
    // types: mix rules for quantized sources, the stored float type for dense ones
    let mut types = Vec::with_capacity(export.tensors.len());
    for (spec, ty) in &export.tensors {
        let quantized = !spec.sources.is_empty() && spec.sources.iter().all(|s| ck.is_quantized(s));
        let ty = if quantized {
            *ty
        } else {
            let dtype = spec
                .sources
                .first()
                .and_then(|s| ck.st.info(s))
                .map(|i| match i.dtype {
                    llmq_formats::safetensors::StDtype::F16 => Dtype::F16,
                    llmq_formats::safetensors::StDtype::BF16 => Dtype::BF16,
                    _ => Dtype::F32,
                })
                .unwrap_or(Dtype::F32);
            dense_type(*ty, dtype, spec.shape_ne.len())
        };
        types.push((quantized, ty));
    }
    let plan = GgufPlan {
        metadata: export.metadata.to_gguf(),
        tensors: export
            .tensors
            .iter()
            .zip(&types)
            .map(|((s, _), (_, ty))| PlannedTensor {
                name: s.gguf_name.clone(),
                shape_ne: s.shape_ne.iter().map(|&d| d as u64).collect(),
                ggml_type: *ty,
            })
            .collect(),
        alignment: 32,
    };
    let writer = write_plan(path, &plan)?;
    let mut stats = Vec::new();
    let mut written = Vec::new();
    for ((spec, _), (quantized, ty)) in export.tensors.iter().zip(&types) {
        let mut sources = Vec::with_capacity(spec.sources.len());
        let mut from = String::new();
        for s in &spec.sources {
            let w = ck.read(s).map_err(hf_err)?;
            from = match &w {
                HfWeight::Int(q) => super::target::describe_grid(&super::grid_of(q)),
                HfWeight::Dense(t) => t.dtype.safetensors_name().to_string(),
            };
            sources.push(w.to_f32());
        }
        let values = if spec.transform == Transform::None && sources.len() == 1 {
            sources.pop().expect("one source")
        } else {
            apply_transform(spec, &sources).map_err(|e| {
                PipelineError::validation(
                    e.to_string(),
                    "The checkpoint does not match its config.json",
                )
            })?
        };
        drop(sources);
        let row = spec.shape_ne[0];
        let bytes = match fit_ggml(*ty, &values, row) {
            Some(b) => b,
            None => {
                let n = llmq_quant::quantized_size(*ty, values.len(), row).ok_or_else(|| {
                    PipelineError::unsupported(
                        format!(
                            "{} cannot hold rows of {row} as {}",
                            spec.gguf_name,
                            ty.name()
                        ),
                        "Choose another -q level",
                    )
                })?;
                let mut b = vec![0u8; n];
                llmq_quant::quantize(*ty, &values, row, None, &mut b).map_err(|e| {
                    PipelineError::unsupported(
                        format!("{}: {e}", spec.gguf_name),
                        "Choose another -q level",
                    )
                })?;
                b
            }
        };
        let mut back = vec![0f32; values.len()];
        llmq_quant::dequantize(*ty, &bytes, &mut back).map_err(|e| {
            PipelineError::general(format!("{}: {e}", spec.gguf_name), "Report this as a bug")
        })?;
        let lossless = bits_equal(&values, &back);
        stats.push(TensorConversion {
            name: spec.gguf_name.clone(),
            from: if *quantized {
                from
            } else {
                format!("{from} (dense)")
            },
            to: ty.name().to_string(),
            numel: values.len(),
            lossless,
            rel_rmse: if lossless {
                0.0
            } else {
                rel_rmse(&values, &back)
            },
        });
        written.push(Written {
            name: spec.gguf_name.clone(),
            ty: *ty,
            bytes_sha: sha256_hex(&bytes),
            source_sha: lossless.then(|| f32_bits_sha(&values)),
        });
        write_tensor(&writer, &spec.gguf_name, &bytes)?;
    }
    writer.finish().map_err(|e| gguf_err(path, e))?;
    progress.message(&format!("Converted {} tensors", stats.len()));
    Ok((stats, written))
}

/// Re-reads the GGUF file: every tensor holds the bytes written, and the ones claimed
/// lossless dequantize to the source's values bit for bit.
pub(super) fn verify(path: &Path, written: &[Written]) -> Result<()> {
    let f = GgufFile::open(path).map_err(|e| {
        PipelineError::validation(
            format!("the output {} does not read back: {e}", path.display()),
            "Report this as a bug",
        )
    })?;
    let bad = |what: String| PipelineError::validation(what, "Report this as a bug");
    if f.tensors().len() != written.len() {
        return Err(bad(format!(
            "the output has {} tensors, {} were written",
            f.tensors().len(),
            written.len()
        )));
    }
    for w in written {
        let t = f
            .tensor(&w.name)
            .ok_or_else(|| bad(format!("tensor {} missing from the output", w.name)))?;
        let bytes = f.tensor_bytes(t);
        if t.ggml_type != w.ty || sha256_hex(bytes) != w.bytes_sha {
            return Err(bad(format!("tensor {} reads back different bytes", w.name)));
        }
        if let Some(src) = &w.source_sha {
            let mut v = vec![0f32; t.n_elements() as usize];
            llmq_quant::dequantize(t.ggml_type, bytes, &mut v)
                .map_err(|e| bad(format!("{}: {e}", w.name)))?;
            if &f32_bits_sha(&v) != src {
                return Err(bad(format!(
                    "tensor {} does not dequantize to the source values",
                    w.name
                )));
            }
        }
    }
    Ok(())
}

/// Requantizes the GGUF file `src` to `mix` at `path` (`gguf_source`'s plan: the
/// metadata kept, types from the mix rules); a tensor whose type does not change is
/// copied byte for byte, the others are dequantized and fitted exactly onto the new
/// type where possible, else quantized.
pub(super) fn requantize(
    src: &Path,
    mix: Mix,
    name: &str,
    path: &Path,
    progress: &dyn crate::Progress,
) -> Result<(Vec<TensorConversion>, Vec<Written>)> {
    let planned = crate::gguf_source::plan(src, name, mix)?;
    let source = GgufFile::open(src).map_err(|e| {
        PipelineError::validation(format!("{}: {e}", src.display()), "Re-create the file")
    })?;
    let writer = write_plan(path, &planned.plan)?;
    let mut stats = Vec::new();
    let mut written = Vec::new();
    for job in &planned.jobs {
        let from = source
            .tensor(&job.name)
            .map(|t| t.ggml_type)
            .expect("planned from this file");
        let (bytes, lossless, rmse, values) = match planned.source.passthrough(job) {
            Some(b) => (b, true, 0.0, None),
            None => {
                let values = planned.source.load_f32(job)?;
                let row = job.row_len();
                let bytes = match fit_ggml(job.ty, &values, row) {
                    Some(b) => b,
                    None => crate::run::quantize_rows(job, &values, None)?,
                };
                let mut back = vec![0f32; values.len()];
                llmq_quant::dequantize(job.ty, &bytes, &mut back).map_err(|e| {
                    PipelineError::general(format!("{}: {e}", job.name), "Report this as a bug")
                })?;
                let same = bits_equal(&values, &back);
                let r = if same { 0.0 } else { rel_rmse(&values, &back) };
                (bytes, same, r, Some(values))
            }
        };
        stats.push(TensorConversion {
            name: job.name.clone(),
            from: from.name().to_string(),
            to: job.ty.name().to_string(),
            numel: job.numel(),
            lossless,
            rel_rmse: rmse,
        });
        written.push(Written {
            name: job.name.clone(),
            ty: job.ty,
            bytes_sha: sha256_hex(&bytes),
            source_sha: match (&values, lossless) {
                (Some(v), true) => Some(f32_bits_sha(v)),
                _ => None,
            },
        });
        write_tensor(&writer, &job.name, &bytes)?;
        planned.source.release(job);
    }
    writer.finish().map_err(|e| gguf_err(path, e))?;
    progress.message(&format!("Converted {} tensors", stats.len()));
    Ok((stats, written))
}
