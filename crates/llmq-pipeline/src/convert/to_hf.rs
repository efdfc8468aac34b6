//! Conversion into a Hugging Face quantized folder (GPTQ, AWQ GEMM, compressed-tensors
//! pack-quantized): each quantized module is moved onto the target grid exactly
//! ([`super::grid::remap`]) or, where the grid cannot hold it, requantized from its
//! dequantized values with round-to-nearest; every other tensor is copied as stored.
//! The folder is written through the writer registry ([`crate::writers`], shared with
//! calibrated quantization); [`verify`] re-reads it with `llmq_hfquant::read` and
//! compares bit for bit.

use super::grid::{remap, IntGrid};
use super::target::Target;
use super::{bits_equal, rel_rmse, TensorConversion};
use crate::error::{PipelineError, Result};
use crate::source::safetensors_error;
use crate::writers::{self, IntWriter, Layout, LayoutSpec};
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::read::{HfCheckpoint, HfWeight};
use llmq_hfquant::rtn::{quantize_rtn, RtnConfig};
use llmq_hfquant::writer::{copy_model_files, ShardedWriter, DEFAULT_MAX_SHARD_BYTES};
use llmq_hfquant::IntQuantized;
use std::path::Path;

pub(super) fn hf_err(e: llmq_hfquant::Error) -> PipelineError {
    use llmq_hfquant::Error as E;
    match e {
        E::UnsupportedCheckpoint(_) | E::Unsupported { .. } => PipelineError::unsupported(
            e.to_string(),
            "Convert from GPTQ, AWQ (GEMM) or compressed-tensors integer checkpoints",
        ),
        E::Io { .. } => PipelineError::general(e.to_string(), "Check the paths and try again"),
        _ => PipelineError::validation(
            e.to_string(),
            "The checkpoint is damaged or does not match its config.json",
        ),
    }
}

/// A converted weight.
pub(super) struct Converted {
    pub name: String,
    pub weight: HfWeight,
}

/// Moves one quantized module onto `grid`: exactly when possible, else by RTN.
pub(super) fn to_grid(q: &IntQuantized, grid: &IntGrid) -> Result<(IntQuantized, bool)> {
    if let Some(r) = remap(q, grid) {
        return Ok((r, true));
    }
    let r = rtn(&q.dequantize(), q.out_features, q.in_features, grid)?;
    Ok((r, false))
}

/// Round-to-nearest of `[rows, cols]` values on `grid`.
pub(super) fn rtn(w: &[f32], rows: usize, cols: usize, grid: &IntGrid) -> Result<IntQuantized> {
    let cfg = RtnConfig {
        bits: grid.bits,
        group_size: grid.group_size,
        symmetric: grid.symmetric,
    };
    quantize_rtn(w, rows, cols, &cfg).map_err(hf_err)
}

/// Converts every weight of `ck` for `target` on `grid`.
pub(super) fn convert(
    ck: &HfCheckpoint,
    grid: &IntGrid,
    progress: &dyn crate::Progress,
) -> Result<(Vec<Converted>, Vec<TensorConversion>)> {
    let mut out = Vec::new();
    let mut stats = Vec::new();
    let from_desc = |q: &IntQuantized| super::target::describe_grid(&super::grid_of(q));
    for (name, _) in ck.tensors() {
        let w = ck.read(&name).map_err(hf_err)?;
        match w {
            HfWeight::Dense(t) => {
                let dt = t.dtype.safetensors_name().to_string();
                stats.push(TensorConversion::unchanged(&name, &dt, t.numel()));
                out.push(Converted {
                    name,
                    weight: HfWeight::Dense(t),
                });
            }
            HfWeight::Int(q) => {
                let (r, exact) = to_grid(&q, grid)?;
                let (a, b) = (q.dequantize(), r.dequantize());
                let lossless = exact && bits_equal(&a, &b);
                stats.push(TensorConversion {
                    name: name.clone(),
                    from: from_desc(&q),
                    to: super::target::describe_grid(grid),
                    numel: a.len(),
                    lossless,
                    rel_rmse: if lossless { 0.0 } else { rel_rmse(&a, &b) },
                });
                out.push(Converted {
                    name,
                    weight: HfWeight::Int(r),
                });
            }
        }
    }
    progress.message(&format!("Converted {} tensors", out.len()));
    Ok((out, stats))
}

/// The registry's writer for `target` on `grid`; convert records no calibration
/// method, `desc_act` when a module has an act-order permutation, and GPTQ's
/// conventional damping 0.01.
fn writer(target: &Target, grid: &IntGrid, any_g_idx: bool) -> Box<dyn IntWriter> {
    let layout = match target {
        Target::Gptq(_, fmt) => Layout::Gptq(*fmt),
        Target::Awq(_) => Layout::Awq,
        Target::CompressedTensors(_) => Layout::CompressedTensors,
        Target::Gguf(_) => unreachable!("gguf is written by to_gguf"),
    };
    writers::writer_for(
        layout,
        LayoutSpec {
            bits: grid.bits,
            group_size: grid.group_size,
            symmetric: grid.symmetric,
            act_order: any_g_idx,
            damp_percent: 0.01,
            method: None,
        },
    )
}

/// Linear modules inside the blocks that stay dense (not embeddings, norms or head).
fn ignored_modules(weights: &[Converted]) -> Vec<String> {
    weights
        .iter()
        .filter_map(|c| match &c.weight {
            HfWeight::Dense(t) if t.shape.len() == 2 => c.name.strip_suffix(".weight"),
            _ => None,
        })
        .filter(|m| m.contains(".layers.") && !m.contains("norm"))
        .map(str::to_string)
        .collect()
}

/// Writes the folder into `dir` through the writer registry: shards, `config.json` with
/// the new `quantization_config`, tokenizer files, and the layout's extra files
/// (`quantize_config.json` for GPTQ).
pub(super) fn write(
    weights: &[Converted],
    target: &Target,
    grid: &IntGrid,
    src_dir: &Path,
    dir: &Path,
) -> Result<()> {
    let any_g_idx = weights
        .iter()
        .any(|c| matches!(&c.weight, HfWeight::Int(q) if !q.has_default_g_idx()));
    let layout = writer(target, grid, any_g_idx);
    let mut w = ShardedWriter::new(dir, DEFAULT_MAX_SHARD_BYTES).map_err(hf_err)?;
    for c in weights {
        match &c.weight {
            HfWeight::Int(q) => {
                let prefix = c.name.strip_suffix(".weight").unwrap_or(&c.name);
                w.add_all(layout.pack(prefix, q).map_err(hf_err)?)
                    .map_err(hf_err)?;
            }
            HfWeight::Dense(t) => w.add(c.name.clone(), t.clone()).map_err(hf_err)?,
        }
    }
    w.finish().map_err(hf_err)?;
    let qc = layout.quantization_config(&ignored_modules(weights), any_g_idx);
    copy_model_files(src_dir, dir, &qc).map_err(hf_err)?;
    layout.extra_files(dir, &qc).map_err(hf_err)
}

/// Re-reads the written folder and checks every weight dequantizes to exactly the
/// values that were converted (dense tensors: the same bytes).
pub(super) fn verify(dir: &Path, weights: &[Converted]) -> Result<()> {
    let st = SafetensorsModel::open(dir).map_err(safetensors_error)?;
    let ck = HfCheckpoint::from_parts(dir, st).map_err(hf_err)?;
    let names: Vec<String> = ck.tensors().into_iter().map(|(n, _)| n).collect();
    if names.len() != weights.len() {
        return Err(PipelineError::validation(
            format!(
                "the output has {} weights, {} were written",
                names.len(),
                weights.len()
            ),
            "Report this as a bug",
        ));
    }
    for c in weights {
        let back = ck.read(&c.name).map_err(hf_err)?;
        let same = match (&back, &c.weight) {
            (HfWeight::Dense(a), HfWeight::Dense(b)) => a == b,
            (HfWeight::Int(a), HfWeight::Int(b)) => bits_equal(&a.dequantize(), &b.dequantize()),
            _ => false,
        };
        if !same {
            return Err(PipelineError::validation(
                format!("output tensor {} reads back different values", c.name),
                "Report this as a bug",
            ));
        }
    }
    Ok(())
}
