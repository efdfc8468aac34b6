//! Conversion into a Hugging Face quantized folder (GPTQ, AWQ GEMM, compressed-tensors
//! pack-quantized): each quantized module is moved onto the target grid exactly
//! ([`super::grid::remap`]) or, where the grid cannot hold it, requantized from its
//! dequantized values with round-to-nearest; every other tensor is copied as stored.
//! The writer calls sit in [`write_module`] and [`quantization_config`], one arm per
//! target; [`verify`] re-reads the written folder and compares bit for bit.

use super::grid::{remap, IntGrid};
use super::target::Target;
use super::{bits_equal, rel_rmse, TensorConversion};
use crate::error::{PipelineError, Result};
use crate::source::safetensors_error;
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::compressed_tensors::{self as ct, CtStrategy, CtWeightScheme};
use llmq_hfquant::gptq::GptqConfig;
use llmq_hfquant::read::{HfCheckpoint, HfWeight};
use llmq_hfquant::rtn::{quantize_rtn, RtnConfig};
use llmq_hfquant::writer::{copy_model_files, write_json, ShardedWriter, DEFAULT_MAX_SHARD_BYTES};
use llmq_hfquant::{HfTensor, IntQuantized};
use serde_json::{json, Value};
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

/// The tensors of one quantized module in the target layout.
fn write_module(
    target: &Target,
    prefix: &str,
    q: &IntQuantized,
) -> Result<Vec<(String, HfTensor)>> {
    Ok(match target {
        Target::Gptq(_, fmt) => llmq_hfquant::gptq::pack(q, *fmt)
            .map_err(hf_err)?
            .to_hf_tensors(prefix),
        Target::Awq(_) => llmq_hfquant::awq::pack(q)
            .map_err(hf_err)?
            .to_hf_tensors(prefix),
        Target::CompressedTensors(_) => ct::pack(q, !q.has_default_g_idx())
            .map_err(hf_err)?
            .to_hf_tensors(prefix),
        Target::Gguf(_) => unreachable!("gguf is written by to_gguf"),
    })
}

/// The target's `quantization_config`; `ignored` are linear modules left unquantized.
fn quantization_config(
    target: &Target,
    grid: &IntGrid,
    ignored: &[String],
    any_g_idx: bool,
) -> Value {
    match target {
        Target::Gptq(_, fmt) => {
            let c = GptqConfig {
                bits: grid.bits,
                group_size: grid.group_size,
                desc_act: any_g_idx,
                sym: grid.symmetric,
                format: *fmt,
                damp_percent: 0.01,
                true_sequential: false,
                static_groups: false,
                lm_head: false,
                quantizer: format!("llm-quantize:{}", env!("CARGO_PKG_VERSION")),
            };
            c.quantization_config_excluding(ignored)
        }
        Target::Awq(_) => {
            let ig = (!ignored.is_empty()).then_some(ignored);
            llmq_hfquant::awq::quantization_config(grid.group_size.unwrap_or(128), ig)
        }
        Target::CompressedTensors(_) => {
            let scheme = CtWeightScheme {
                num_bits: grid.bits,
                symmetric: grid.symmetric,
                strategy: match grid.group_size {
                    Some(g) => CtStrategy::Group(g),
                    None => CtStrategy::Channel,
                },
            };
            let mut ig = vec!["lm_head".to_string()];
            ig.extend(ignored.iter().cloned());
            ct::quantization_config(&scheme, &ig, any_g_idx)
        }
        Target::Gguf(_) => unreachable!("gguf has no quantization_config"),
    }
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

/// Writes the folder into `dir`: shards, `config.json` with the new
/// `quantization_config`, tokenizer files, and `quantize_config.json` for GPTQ.
pub(super) fn write(
    weights: &[Converted],
    target: &Target,
    grid: &IntGrid,
    src_dir: &Path,
    dir: &Path,
) -> Result<()> {
    let mut w = ShardedWriter::new(dir, DEFAULT_MAX_SHARD_BYTES).map_err(hf_err)?;
    let mut any_g_idx = false;
    for c in weights {
        match &c.weight {
            HfWeight::Int(q) => {
                any_g_idx |= !q.has_default_g_idx();
                let prefix = c.name.strip_suffix(".weight").unwrap_or(&c.name);
                w.add_all(write_module(target, prefix, q)?)
                    .map_err(hf_err)?;
            }
            HfWeight::Dense(t) => w.add(c.name.clone(), t.clone()).map_err(hf_err)?,
        }
    }
    w.finish().map_err(hf_err)?;
    let qc = quantization_config(target, grid, &ignored_modules(weights), any_g_idx);
    copy_model_files(src_dir, dir, &qc).map_err(hf_err)?;
    if let Target::Gptq(..) = target {
        let mut v = qc.clone();
        if let Some(m) = v.as_object_mut() {
            m.insert("model_name_or_path".into(), Value::Null);
            m.insert("model_file_base_name".into(), json!("model"));
        }
        write_json(&dir.join("quantize_config.json"), &v).map_err(hf_err)?;
    }
    Ok(())
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
