//! What a calibrated run is asked for: the output layout, the method and the integer
//! grid, with the checks that reject combinations no layout can store.

use crate::error::{PipelineError, Result};
use crate::run::CheckpointOptions;
use llmq_hfquant::gptq::GptqFormat;
use std::path::PathBuf;

/// The checkpoint layout written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfFormat {
    Gptq(GptqFormat),
    Awq,
    CompressedTensors,
}

impl HfFormat {
    pub fn name(self) -> &'static str {
        match self {
            HfFormat::Gptq(_) => "gptq",
            HfFormat::Awq => "awq",
            HfFormat::CompressedTensors => "compressed-tensors",
        }
    }
}

/// How weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Gptq,
    Awq,
    Rtn,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Gptq => "gptq",
            Method::Awq => "awq",
            Method::Rtn => "rtn",
        }
    }
}

/// Everything a calibrated run needs (validated by [`CalibratedRequest::check`]).
#[derive(Debug, Clone)]
pub struct CalibratedRequest {
    pub model: String,
    pub format: HfFormat,
    /// the level as given (`4bit`, `W4A16`, …)
    pub level: String,
    pub method: Method,
    pub bits: u8,
    /// `None` = per channel
    pub group_size: Option<usize>,
    pub symmetric: bool,
    pub act_order: bool,
    pub damp_percent: f64,
    pub calibration_data: Option<PathBuf>,
    pub calibration_samples: usize,
    pub seq_len: usize,
    pub output_dir: PathBuf,
    pub output_name: Option<String>,
    pub ram_budget_bytes: Option<u64>,
    pub token: Option<String>,
    pub validate: bool,
    /// per-block checkpoints (`None`: `--no-checkpoints`)
    pub checkpoint: Option<CheckpointOptions>,
}

impl CalibratedRequest {
    pub(super) fn check(&self) -> Result<()> {
        let inv = |m: String, s: &str| Err(PipelineError::invalid(m, s));
        if !matches!(self.bits, 2 | 3 | 4 | 8) {
            return inv(format!("{} bits", self.bits), "Use 2, 3, 4 or 8 bits");
        }
        if let Some(g) = self.group_size {
            if ![32, 64, 128].contains(&g) {
                return inv(
                    format!("--group-size {g} is not supported"),
                    "Use --group-size 32, 64, 128 or -1 (per channel)",
                );
            }
        }
        if !(self.damp_percent.is_finite() && self.damp_percent > 0.0 && self.damp_percent < 1.0) {
            return inv(
                format!("--damp-percent {} must be in (0, 1)", self.damp_percent),
                "e.g. --damp-percent 0.01",
            );
        }
        if self.calibration_samples == 0 {
            return inv(
                "--calibration-samples must be at least 1".into(),
                "e.g. --calibration-samples 128",
            );
        }
        if self.seq_len < 2 {
            return inv(
                "--calibration-seq-len must be at least 2".into(),
                "e.g. --calibration-seq-len 512",
            );
        }
        match self.format {
            HfFormat::Awq => {
                if self.bits != 4 || self.symmetric || self.group_size.is_none() {
                    return inv(
                        format!(
                            "AWQ GEMM stores 4-bit asymmetric groups (got {} bits, {}, group {:?})",
                            self.bits,
                            if self.symmetric {
                                "symmetric"
                            } else {
                                "asymmetric"
                            },
                            self.group_size
                        ),
                        "Use `awq -q 4bit` with a group size of 32, 64 or 128",
                    );
                }
                if self.act_order {
                    return inv(
                        "AWQ checkpoints have no act-order (g_idx)".into(),
                        "Drop --act-order, or quantize to gptq",
                    );
                }
                if self.method == Method::Gptq {
                    return inv(
                        "--method gptq cannot write AWQ (AWQ zero points are not GPTQ's)".into(),
                        "Use --method awq or rtn",
                    );
                }
            }
            HfFormat::Gptq(_) | HfFormat::CompressedTensors => {
                // AWQ's zero points can be 0, which GPTQ v1 cannot store
                let v1 = self.format == HfFormat::Gptq(GptqFormat::V1);
                if self.method == Method::Awq && (self.symmetric || v1 || self.group_size.is_none())
                {
                    return inv(
                        "--method awq needs an asymmetric, grouped layout".into(),
                        "Use `awq -q 4bit`, `gptq --checkpoint-format gptq_v2 --symmetric false`, or compressed-tensors W4A16_ASYM",
                    );
                }
            }
        }
        if self.method == Method::Awq && self.act_order {
            return inv("AWQ has no act-order".into(), "Drop --act-order");
        }
        Ok(())
    }
}
