//! A GGUF file as the input of `convert` to a Hugging Face layout: its metadata and
//! tensor names reversed by `llmq_arch::gguf_to_hf` (config, tokenizer, the forward
//! plan's transforms undone), each tensor read into the representation the writers take.
//!
//! - The linear layers of the blocks stored as `Q4_0` / `Q5_0` / `Q8_0` are integer groups
//!   already (`llmq_hfquant::read::int_from_ggml`): rows are permuted / split without
//!   touching a group, then moved onto the target grid exactly where it can hold them
//!   ([`super::grid::remap`]); every other quantized type is dequantized and
//!   requantized with round-to-nearest on the target grid (lossy).
//! - Everything else (embeddings, head, norms, routers, float-typed layers) is written
//!   dense, dequantized, in the smallest float type that holds its values exactly.
//!
//! Every tensor is checked on the way: the exporter's forward transform applied to the
//! reversed sources must give the GGUF's values back bit for bit.

use super::grid::IntGrid;
use super::target::describe_grid;
use super::to_hf::{to_grid, Converted};
use super::{bits_equal, rel_rmse, TensorConversion};
use crate::error::{PipelineError, Result};
use crate::source::ModelSummary;
use half::{bf16, f16};
use llmq_arch::gguf_names::apply_transform;
use llmq_arch::hf_from_gguf::{inverse_of, invert_values};
use llmq_arch::{gguf_to_hf, ArchError, HfModel, Inverse, TensorRole};
use llmq_formats::gguf::GgufFile;
use llmq_formats::GgmlType;
use llmq_hfquant::read::{int_from_ggml, HfWeight};
use llmq_hfquant::writer::write_json;
use llmq_hfquant::HfTensor;
use std::path::Path;

pub(super) fn arch_err(e: ArchError) -> PipelineError {
    PipelineError::unsupported(
        e.to_string(),
        "Convert from the original Hugging Face checkpoint, or quantize it with `quantize`",
    )
}

/// An opened GGUF input.
pub(super) struct GgufInput {
    pub file: GgufFile,
    pub model: HfModel,
}

/// Opens and reverses `path`.
pub(super) fn open(path: &Path) -> Result<GgufInput> {
    let file = GgufFile::open(path).map_err(|e| {
        PipelineError::validation(
            format!("{} is not a readable GGUF file: {e}", path.display()),
            "Re-download or re-create the file",
        )
    })?;
    let tensors: Vec<(String, Vec<u64>)> = file
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape_ne.clone()))
        .collect();
    let model = gguf_to_hf(file.metadata(), &tensors).map_err(arch_err)?;
    Ok(GgufInput { file, model })
}

/// Whether an HF output keeps this tensor quantized: the linear layers of the blocks.
fn quantized_role(role: TensorRole) -> bool {
    use TensorRole as R;
    matches!(
        role,
        R::AttnQ
            | R::AttnK
            | R::AttnV
            | R::AttnQkv
            | R::AttnOutput
            | R::FfnGate
            | R::FfnUp
            | R::FfnDown
            | R::FfnGateExps
            | R::FfnUpExps
            | R::FfnDownExps
    )
}

/// The integer grid a GGML type is closest to (bits, group, symmetric), which a target
/// keeps when `-q` / `--group-size` do not say otherwise. Exact for `Q4_0`/`Q5_0`/`Q8_0`.
fn nominal_grid(ty: GgmlType) -> Option<IntGrid> {
    use GgmlType as T;
    let (bits, group, symmetric) = match ty {
        T::Q4_0 | T::IQ4NL | T::IQ4XS => (4, 32, true),
        T::Q8_0 => (8, 32, true),
        T::Q4_1 | T::Q4K => (4, 32, false),
        T::Q5_0 => (5, 32, true),
        T::Q5_1 | T::Q5K => (5, 32, false),
        T::Q2K => (2, 16, false),
        T::Q3K => (3, 16, true),
        T::Q6K => (6, 16, true),
        _ => return None,
    };
    Some(IntGrid {
        bits,
        group_size: Some(group),
        symmetric,
        allow_g_idx: false,
    })
}

impl GgufInput {
    /// The type holding most elements of the quantized linear layers, and its grid.
    pub fn source_grid(&self) -> Result<(GgmlType, IntGrid)> {
        let mut by: std::collections::BTreeMap<&'static str, (u64, GgmlType)> = Default::default();
        for spec in &self.model.plan.tensors {
            let t = self
                .file
                .tensor(&spec.gguf_name)
                .expect("planned from this file");
            if quantized_role(spec.role) && t.ggml_type.is_quantized() {
                by.entry(t.ggml_type.name()).or_insert((0, t.ggml_type)).0 += t.n_elements();
            }
        }
        let Some((_, (_, ty))) = by.into_iter().max_by_key(|(_, (n, _))| *n) else {
            return Err(PipelineError::unsupported(
                "cannot convert a GGUF whose linear layers are not quantized",
                "Use `quantize` for unquantized models",
            ));
        };
        let grid = nominal_grid(ty).ok_or_else(|| {
            PipelineError::unsupported(
                format!(
                    "GGUF type {} is not converted to an integer grid",
                    ty.name()
                ),
                "Convert from a Q4_0/Q5_0/Q8_0/K-quant/IQ4 GGUF",
            )
        })?;
        Ok((ty, grid))
    }

    /// What the summary block prints.
    pub fn summary(&self, name: &str) -> ModelSummary {
        let a = &self.model.arch;
        ModelSummary {
            name: name.to_string(),
            architecture: self.file.architecture().unwrap_or("").to_string(),
            layers: a.num_layers,
            hidden: a.hidden_size,
            heads: a.num_heads,
            experts: a.moe.as_ref().map(|m| m.n_experts),
            vocab: a.vocab_size,
            original_dtype: crate::gguf_source::dominant_type(&self.file),
            original_size: self
                .file
                .tensors()
                .iter()
                .map(|t| self.file.tensor_bytes(t).len() as u64)
                .sum(),
            parameter_count: self.file.tensors().iter().map(|t| t.n_elements()).sum(),
        }
    }

    /// Writes `config.json` and the tokenizer files into `dir`.
    pub fn write_model_files(&self, dir: &Path) -> Result<()> {
        let io = |e: llmq_hfquant::Error| {
            PipelineError::general(e.to_string(), "Check the output directory")
        };
        std::fs::create_dir_all(dir).map_err(|e| PipelineError::io("cannot create", dir, &e))?;
        let t = &self.model.tokenizer;
        write_json(&dir.join("config.json"), &self.model.config).map_err(io)?;
        write_json(&dir.join("tokenizer.json"), &t.tokenizer_json).map_err(io)?;
        write_json(&dir.join("tokenizer_config.json"), &t.tokenizer_config).map_err(io)
    }
}

/// `v` in the smallest float type that holds every value exactly.
fn dense_exact(shape: &[usize], v: &[f32]) -> HfTensor {
    if v.iter()
        .all(|x| bf16::from_f32(*x).to_f32().to_bits() == x.to_bits())
    {
        let b: Vec<bf16> = v.iter().map(|x| bf16::from_f32(*x)).collect();
        HfTensor::from_bf16(shape, &b)
    } else if v
        .iter()
        .all(|x| f16::from_f32(*x).to_f32().to_bits() == x.to_bits())
    {
        let h: Vec<f16> = v.iter().map(|x| f16::from_f32(*x)).collect();
        HfTensor::from_f16(shape, &h)
    } else {
        HfTensor::from_f32(shape, v)
    }
}

fn bug(what: String) -> PipelineError {
    PipelineError::validation(what, "Report this as a bug, with the GGUF file")
}

/// Converts every tensor for an integer target on `grid`.
pub(super) fn convert(
    input: &GgufInput,
    grid: &IntGrid,
    progress: &dyn crate::Progress,
) -> Result<(Vec<Converted>, Vec<TensorConversion>)> {
    let mut out = Vec::new();
    let mut stats = Vec::new();
    for spec in &input.model.plan.tensors {
        let t = input
            .file
            .tensor(&spec.gguf_name)
            .expect("planned from this file");
        let ty = t.ggml_type;
        let bytes = input.file.tensor_bytes(t);
        let mut values = vec![0f32; t.n_elements() as usize];
        llmq_quant::dequantize(ty, bytes, &mut values).map_err(|e| {
            PipelineError::unsupported(
                format!(
                    "cannot read tensor {} of type {}: {e}",
                    spec.gguf_name,
                    ty.name()
                ),
                "Convert from a GGUF with types this version computes",
            )
        })?;
        let inv = inverse_of(spec).map_err(arch_err)?;
        let sources = invert_values(spec, &inv, &values);
        let forward = apply_transform(spec, &sources).map_err(|e| bug(e.to_string()))?;
        if !bits_equal(&forward, &values) {
            return Err(bug(format!(
                "{}: the reversed tensors do not give the GGUF values back",
                spec.gguf_name
            )));
        }
        drop(forward);
        let quantize = quantized_role(spec.role) && ty.is_quantized();
        let exact = match (&inv, quantize) {
            (Inverse::Rows(_), true) => {
                let row = spec.shape_ne[0];
                int_from_ggml(ty, bytes, values.len() / row, row)
            }
            _ => None,
        };
        for (i, (hf, src)) in spec.sources.iter().zip(&sources).enumerate() {
            let shape = &spec.source_shapes[i];
            if !quantize {
                stats.push(TensorConversion {
                    name: hf.clone(),
                    from: ty.name().to_string(),
                    to: "dense".into(),
                    numel: src.len(),
                    lossless: true,
                    rel_rmse: 0.0,
                });
                out.push(Converted {
                    name: hf.clone(),
                    weight: HfWeight::Dense(dense_exact(shape, src)),
                });
                continue;
            }
            let (rows, cols) = (shape[0], shape[1..].iter().product::<usize>());
            let q = match (&exact, &inv) {
                (Some(q), Inverse::Rows(r)) => to_grid(&q.select_rows(&r[i]), grid)?.0,
                _ => super::to_hf::rtn(src, rows, cols, grid)?,
            };
            let back = q.dequantize();
            let lossless = bits_equal(src, &back);
            stats.push(TensorConversion {
                name: hf.clone(),
                from: ty.name().to_string(),
                to: describe_grid(grid),
                numel: src.len(),
                lossless,
                rel_rmse: if lossless { 0.0 } else { rel_rmse(src, &back) },
            });
            out.push(Converted {
                name: hf.clone(),
                weight: HfWeight::Int(q),
            });
        }
        input.file.release_tensor(t);
    }
    progress.message(&format!("Converted {} tensors", out.len()));
    Ok((out, stats))
}
