//! Quantized Hugging Face checkpoints (GPTQ v1/v2 with or without act-order `g_idx`,
//! AutoAWQ GEMM, compressed-tensors pack-quantized / int-quantized) for the engine. The
//! scheme and the modules are read by `llmq_hfquant::read` (the readers symmetric to
//! the writers, cross-checked against the reference Python packages); here each module
//! is repacked once into the kernels' integer block layout (`llmq_kernels::int_blocks`)
//! or, for compressed-tensors' floating-point codes (NVFP4, MXFP4, FP8), into their
//! block layout (`llmq_kernels::fp_blocks`), so the products run on the packed codes.
//!
//! Each quantized module `X` is presented to the GGUF plan as a virtual `X.weight` of
//! shape `[out, in]`; unquantized tensors (`lm_head`, embeddings, norms,
//! `modules_to_not_convert` / `ignore`) load as before.

use crate::error::{EngineError, Result};
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::fp_quantized::FP8_BLOCK;
use llmq_hfquant::{read, FpQuantized, FpScheme, IntQuantized};
use llmq_kernels::{FpGrid, FpGroups, IntAct, IntGroups, WeightMatrix};

pub use llmq_hfquant::read::HfQuantScheme;

impl From<llmq_hfquant::Error> for EngineError {
    fn from(e: llmq_hfquant::Error) -> Self {
        match e {
            llmq_hfquant::Error::Tensor { name, why } if why == "missing" => {
                EngineError::MissingTensor(name)
            }
            llmq_hfquant::Error::Tensor { name, why } => EngineError::BadTensor { name, why },
            e => EngineError::Source(e.to_string()),
        }
    }
}

/// The quantized modules of a checkpoint, by module name (`model.layers.0.mlp.up_proj`).
pub struct QuantizedModules {
    pub scheme: HfQuantScheme,
    inner: read::QuantizedModules,
}

impl QuantizedModules {
    /// Finds the quantized modules among the checkpoint's tensors.
    pub fn scan(scheme: HfQuantScheme, st: &SafetensorsModel) -> Result<QuantizedModules> {
        Ok(QuantizedModules {
            scheme: scheme.clone(),
            inner: read::QuantizedModules::scan(scheme, st)?,
        })
    }

    /// The checkpoint's tensor list as the GGUF plan should see it: each quantized
    /// module's tensors replaced by one `X.weight` of shape `[out, in]`.
    pub fn plan_tensors(&self, st: &SafetensorsModel) -> Vec<(String, Vec<usize>)> {
        self.inner.plan_tensors(st)
    }

    /// The module behind a plan source name `X.weight`, if it is quantized.
    pub fn module_of<'a>(&self, source: &'a str) -> Option<&'a str> {
        self.inner.module_of(source)
    }

    /// Decodes module `prefix` with the reference layouts.
    pub fn int_quantized(&self, st: &SafetensorsModel, prefix: &str) -> Result<IntQuantized> {
        Ok(self.inner.int_quantized(st, prefix)?)
    }

    /// The values of module `prefix` (integer or floating-point codes), `[out, in]`.
    pub fn dequantize(&self, st: &SafetensorsModel, prefix: &str) -> Result<Vec<f32>> {
        Ok(self.inner.dequantize(st, prefix)?)
    }

    /// Module `prefix` repacked for the kernels: integer codes into
    /// `llmq_kernels::int_blocks`, floating-point codes (NVFP4, MXFP4, FP8) into
    /// `llmq_kernels::fp_blocks` (MXFP4 against Q8_0 activations as ggml's `MXFP4`),
    /// with an MR-GPTQ input rotation applied to the activations at run time
    /// (`llmq_kernels::rotation`). FP4 modules whose width is not whole scale groups
    /// are dequantized to f32 instead (the rotation folded into the weight).
    pub fn matrix(&self, st: &SafetensorsModel, prefix: &str, act: IntAct) -> Result<WeightMatrix> {
        if self.inner.is_fp(prefix) {
            let q = self.inner.fp_quantized(st, prefix)?;
            let packed = fp_matrix(&q, act).map_err(|e| EngineError::tensor(prefix, e))?;
            if let Some(w) = packed {
                return match self.inner.rotation_block(prefix) {
                    Some(b) => w
                        .with_input_rotation(b)
                        .map_err(|e| EngineError::tensor(prefix, e)),
                    None => Ok(w),
                };
            }
            let [out, inp] = self.inner.dims(prefix).unwrap_or_default();
            return Ok(WeightMatrix::from_f32(
                out,
                inp,
                self.inner.fp_dense(st, prefix)?,
            ));
        }
        let q = self.int_quantized(st, prefix)?;
        int_matrix(&q, act).map_err(|e| EngineError::tensor(prefix, e))
    }
}

/// Repacks an [`IntQuantized`] weight into the kernels' block layout.
pub fn int_matrix(
    q: &IntQuantized,
    act: IntAct,
) -> std::result::Result<WeightMatrix, llmq_kernels::KernelError> {
    let g_idx = q.g_idx_or_default();
    WeightMatrix::from_int_groups(
        &IntGroups {
            bits: q.bits,
            rows: q.out_features,
            cols: q.in_features,
            q: &q.q,
            scales: &q.scales,
            zeros: &q.zeros,
            n_groups: q.n_groups(),
            group_of_col: &g_idx,
        },
        act,
    )
}

/// Repacks an [`FpQuantized`] weight into the kernels' floating-point block layout
/// (`None` when its shape does not fit one: the caller keeps it dense).
pub fn fp_matrix(
    q: &FpQuantized,
    act: IntAct,
) -> std::result::Result<Option<WeightMatrix>, llmq_kernels::KernelError> {
    let (rows, cols) = (q.out_features, q.in_features);
    let [_, scale_cols] = q.scheme.scale_shape(rows, cols);
    let (grid, rows_per_scale, cols_per_scale) = match q.scheme {
        FpScheme::Nvfp4 => (FpGrid::Nvfp4, 1, 16),
        FpScheme::Mxfp4 => (FpGrid::Mxfp4, 1, 32),
        FpScheme::Fp8Channel => (FpGrid::Fp8, 1, cols),
        FpScheme::Fp8Tensor => (FpGrid::Fp8, rows.max(1), cols),
        FpScheme::Fp8Block => (FpGrid::Fp8, FP8_BLOCK, FP8_BLOCK),
    };
    let g = FpGroups {
        grid,
        rows,
        cols,
        codes: &q.codes,
        scales: &q.scales,
        rows_per_scale,
        cols_per_scale,
        scale_cols,
        global_scale: q.global_scale,
    };
    if g.fp_type().is_err() {
        return Ok(None);
    }
    WeightMatrix::from_fp_groups(&g, act).map(Some)
}
