//! What a quantize run reports, the same for every output format: one
//! [`TensorReport`] per quantized tensor (its grid or type, the method that chose its
//! values, the error of its dequantized values against the source) and one
//! [`QuantizeOutcome`] for the run (output, sizes, calibration, resume counts).

use crate::source::ModelSummary;
use llmq_hfquant::IntQuantized;
use std::path::PathBuf;

/// What calibration contributed to one tensor (calibrated methods only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CalibrationDetail {
    /// calibration rows that reached this Linear
    pub tokens: u64,
    /// GPTQ: the dampening that made H positive definite
    pub damp_percent: Option<f64>,
    /// GPTQ: `Σ (w − q)² / (2·U_ii²)`
    pub loss: Option<f64>,
    /// AWQ: the chosen exponent α
    pub awq_ratio: Option<f32>,
    /// why a fallback was taken (an expert calibration never reached, …)
    pub note: Option<String>,
    /// trellis: the proxy error `tr(EHEᵀ)/tr(WHWᵀ)` (QTIP §3; exllamav3's `proxy_err`)
    pub proxy_err: Option<f64>,
}

/// One quantized tensor's report line.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorReport {
    /// name in the output (GGUF name, or the HF weight name)
    pub name: String,
    /// `[rows, columns]`; stacked experts count as rows
    pub shape: [usize; 2],
    /// the GGML type (`Q4_K`) or the integer grid (`4bit g128 sym`)
    pub quant: String,
    /// `k-quant`, `k-quant+imatrix`, `gptq`, `awq`, `rtn`, or a fallback such as
    /// `gptq:all-tokens-hessian` / `rtn:no-tokens`
    pub method: String,
    /// root-mean-square error of the dequantized values (None: not measured)
    pub rmse: Option<f64>,
    /// `rmse / rms(source)`
    pub rel_rmse: Option<f64>,
    /// SHA-256 of the bytes written, where the tensor is written as one piece
    pub sha256: Option<String>,
    pub calibration: Option<CalibrationDetail>,
}

impl TensorReport {
    pub fn numel(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// The report of an integer-grid tensor from a calibrated method.
    pub fn integer(
        name: &str,
        q: &IntQuantized,
        method: String,
        (rmse, rel_rmse): (f64, f64),
        calibration: CalibrationDetail,
    ) -> TensorReport {
        TensorReport {
            name: name.to_string(),
            shape: [q.out_features, q.in_features],
            quant: int_grid_name(q),
            method,
            rmse: Some(rmse),
            rel_rmse: Some(rel_rmse),
            sha256: None,
            calibration: Some(calibration),
        }
    }
}

/// `4bit g128 sym`, `8bit per-channel asym act-order`.
pub fn int_grid_name(q: &IntQuantized) -> String {
    format!(
        "{}bit {} {}{}",
        q.bits,
        q.group_size
            .map_or("per-channel".to_string(), |g| format!("g{g}")),
        if q.symmetric { "sym" } else { "asym" },
        if q.g_idx.is_some() { " act-order" } else { "" }
    )
}

/// Where calibration data came from and what it held.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationSummary {
    pub source: String,
    pub samples: usize,
    pub tokens: usize,
    pub seq_len: usize,
    pub notes: Vec<String>,
    pub activations_spilled_to_disk: bool,
}

/// The result of a successful quantize run, for every output format.
#[derive(Debug, Clone)]
pub struct QuantizeOutcome {
    /// the output file (GGUF) or folder (Hugging Face layouts)
    pub output: PathBuf,
    /// `gguf`, `gptq`, `awq`, `compressed-tensors`
    pub format: String,
    /// the level as the user knows it (`Q4_K_M`, `4bit`, `W4A16`)
    pub level: String,
    /// the method that chose the values of most tensors (`k-quant`, `gptq`, …)
    pub method: String,
    /// bytes of the model files written (the GGUF, or the folder's safetensors)
    pub file_size: u64,
    pub summary: ModelSummary,
    pub tensors: Vec<TensorReport>,
    /// parameters the bits-per-weight figure divides by
    pub params: u64,
    pub calibration: Option<CalibrationSummary>,
    /// layers (work units) in the run, and how many came from a checkpoint
    pub units: usize,
    pub units_resumed: usize,
    /// parallel workers (the GGUF streaming driver)
    pub workers: Option<usize>,
    pub validated: bool,
    pub peak_memory_bytes: u64,
    /// GGUF `--target-bpw`: what the measured allocator measured and chose
    pub allocation: Option<crate::target_bpw::AllocationReport>,
}

impl QuantizeOutcome {
    fn weighted_mean(&self, f: impl Fn(&TensorReport) -> Option<f64>) -> Option<f64> {
        let (mut s, mut n) = (0.0, 0usize);
        for t in &self.tensors {
            if let Some(v) = f(t) {
                s += v * t.numel() as f64;
                n += t.numel();
            }
        }
        (n > 0).then(|| s / n as f64)
    }

    /// Mean RMSE over measured tensors, weighted by element count.
    pub fn mean_rmse(&self) -> Option<f64> {
        self.weighted_mean(|t| t.rmse)
    }

    /// Mean relative RMSE over measured tensors, weighted by element count.
    pub fn mean_relative_rmse(&self) -> Option<f64> {
        self.weighted_mean(|t| t.rel_rmse)
    }

    /// Whole-output bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.file_size as f64 * 8.0 / self.params as f64
        }
    }

    /// The `n` measured tensors with the largest relative RMSE.
    pub fn worst_tensors(&self, n: usize) -> Vec<&TensorReport> {
        let mut v: Vec<&TensorReport> = self
            .tensors
            .iter()
            .filter(|t| t.rel_rmse.is_some())
            .collect();
        v.sort_by(|a, b| {
            b.rel_rmse
                .partial_cmp(&a.rel_rmse)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        v.truncate(n);
        v
    }
}
