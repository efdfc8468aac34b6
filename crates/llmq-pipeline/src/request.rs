//! What a quantize run is asked for, for every output format: the output layout and
//! level, the method, the integer grid (Hugging Face layouts), calibration, and where
//! the output and its checkpoints go; with the checks that reject combinations no
//! layout can store.

use crate::checkpoint::CheckpointOptions;
use crate::error::{PipelineError, Result};
pub use crate::methods::Method;
pub use crate::writers::Layout;
use llmq_hfquant::gptq::GptqFormat;
use std::path::PathBuf;

/// The output written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// a GGUF file (llama.cpp)
    Gguf,
    /// a Hugging Face checkpoint folder in one of the writer registry's layouts
    Hf(Layout),
    /// an exllamav3 EXL3 folder (trellis codes, [`crate::writers::exl3`])
    Exl3,
}

impl OutputFormat {
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Gguf => "gguf",
            OutputFormat::Hf(l) => l.name(),
            OutputFormat::Exl3 => "exl3",
        }
    }
}

/// An integer grid: `bits` per weight, one scale (and zero point, when asymmetric) per
/// `group_size` inputs (`None`: per output channel), optionally in activation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntGrid {
    pub bits: u8,
    pub group_size: Option<usize>,
    pub symmetric: bool,
    pub act_order: bool,
}

/// Calibration text and how much of it to use.
#[derive(Debug, Clone)]
pub struct CalibrationRequest {
    /// a text or JSONL file (`None`: the bundled set)
    pub data: Option<PathBuf>,
    pub samples: usize,
    pub seq_len: usize,
    /// MoE: every routed expert's statistics see every token (the layer output still
    /// uses the router's choice)
    pub all_experts: bool,
}

/// Where calibration runs: the CPU engine, or (GPTQ into an integer layout) a CUDA
/// device for the block forward, the Hessians and the solve
/// (`calibrated::device_blocks`).
#[derive(Debug, Clone, Default)]
pub enum CalibDevice {
    #[default]
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(llmq_engine::backend::Cuda),
}

/// Everything a quantize run needs (checked by [`QuantizeRequest::check`]).
#[derive(Debug, Clone)]
pub struct QuantizeRequest {
    /// hub id, local folder or GGUF file
    pub model: String,
    pub format: OutputFormat,
    /// the level as given (`Q4_K_M`, `4bit`, `W4A16`, …)
    pub level: String,
    pub method: Method,
    /// the grid of the Hugging Face layouts (`None` for GGUF, whose types come from
    /// the level's mix rules)
    pub grid: Option<IntGrid>,
    /// GPTQ's relative dampening of the Hessian diagonal
    pub damp_percent: f64,
    /// MR-GPTQ's Hadamard block on each Linear's input (`None`: 128)
    pub hadamard_size: Option<usize>,
    /// GGUF: a llama.cpp importance matrix file
    pub imatrix: Option<PathBuf>,
    /// calibration text: always used by calibrated methods; for GGUF, given data is
    /// turned into an importance matrix
    pub calibration: CalibrationRequest,
    pub output_dir: PathBuf,
    pub output_name: Option<String>,
    /// per-layer checkpoints (`None`: none)
    pub checkpoint: Option<CheckpointOptions>,
    /// re-read and check the output before naming it
    pub validate: bool,
    /// parallel layers (GGUF streaming)
    pub max_workers: Option<usize>,
    pub ram_budget_bytes: Option<u64>,
    /// Hugging Face Hub token
    pub token: Option<String>,
    /// where calibration runs (`--device`)
    pub device: CalibDevice,
    /// GGUF: choose every tensor group's type by measured ΔKL within this many bits
    /// per weight of the whole file ([`crate::target_bpw`]); `None`: the level's mix
    pub target_bpw: Option<TargetBpw>,
}

/// `--target-bpw`: the whole file's bits per weight and the calibration windows the
/// measurement scores (of `--calibration-seq-len` tokens, from `--calibration-data`).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetBpw {
    pub bpw: f64,
    pub windows: usize,
    /// the JSON result of an earlier `--target-bpw` run of the same model and
    /// calibration, whose measured curves are used instead of measuring again
    pub measurements: Option<PathBuf>,
    /// MoE: write each routed expert's own choice (EXL3: our engine runs it,
    /// exllamav3 does not load it; GGUF refuses it: llama.cpp stacks the experts)
    pub per_expert: bool,
}

impl QuantizeRequest {
    /// The integer grid of a Hugging Face layout.
    pub(crate) fn int_grid(&self) -> Result<IntGrid> {
        self.grid.ok_or_else(|| {
            PipelineError::invalid(
                format!("{} output needs an integer grid", self.format.name()),
                "Give the level (e.g. 4bit)",
            )
        })
    }

    /// MR-GPTQ's Hadamard block (`--hadamard-size`, default 128).
    pub fn hadamard_block(&self) -> usize {
        self.hadamard_size.unwrap_or(128)
    }

    /// EXL3's bits per weight from the level (`4`, `3.5`, `4.0bpw`), 1.0…8.0; a
    /// fractional one mixes K across tensors (`Allocation::trellis_for_bpw`).
    pub fn trellis_bpw(&self) -> Result<f64> {
        exl3_bpw(&self.level)
    }

    /// Whether GGUF output computes an importance matrix from calibration text.
    pub(crate) fn wants_imatrix_calibration(&self) -> bool {
        self.format == OutputFormat::Gguf && self.calibration.data.is_some()
    }

    /// Reject what no layout can store and options that do not apply.
    pub(crate) fn check(&self) -> Result<()> {
        let inv = |m: String, s: &str| Err(PipelineError::invalid(m, s));
        if self.calibration.samples == 0 {
            return inv(
                "--calibration-samples must be at least 1".into(),
                "e.g. --calibration-samples 128",
            );
        }
        if self.calibration.seq_len < 2 {
            return inv(
                "--calibration-seq-len must be at least 2".into(),
                "e.g. --calibration-seq-len 512",
            );
        }
        if self.format == OutputFormat::Gguf {
            if self.method != Method::KQuant || self.grid.is_some() {
                return inv(
                    format!(
                        "GGUF takes its types from the level's mix rules: method {} and an integer grid do not apply",
                        self.method.name()
                    ),
                    "For GGUF, --imatrix FILE or --calibration-data FILE give importance-weighted k-quants",
                );
            }
            if self.calibration.data.is_some() && self.imatrix.is_some() {
                return inv(
                    "--calibration-data and --imatrix both give importance weights".into(),
                    "Pass one of them",
                );
            }
            crate::quantize::gguf_mix(&self.level)?;
            if self.target_bpw.as_ref().is_some_and(|t| t.per_expert) {
                return inv(
                    "--per-expert-bits does not apply to gguf: llama.cpp reads one type per stacked expert tensor".into(),
                    "Drop --per-expert-bits (the per-expert choice is reported in the JSON result)",
                );
            }
            if let Some(t) = &self.target_bpw {
                if !(t.bpw.is_finite() && t.bpw > 0.0 && t.bpw <= 32.0) || t.windows == 0 {
                    return inv(
                        format!(
                            "--target-bpw {} with {} measurement windows is not valid",
                            t.bpw, t.windows
                        ),
                        "e.g. --target-bpw 4.5 --measure-windows 16",
                    );
                }
            }
            return Ok(());
        }
        if let Some(t) = &self.target_bpw {
            let int_layout = matches!(
                self.format,
                OutputFormat::Hf(Layout::Gptq(_) | Layout::CompressedTensors)
            ) && self.grid.is_some();
            if self.format != OutputFormat::Exl3 && !int_layout {
                return inv(
                    format!(
                        "--target-bpw is implemented for gguf, exl3, gptq and integer compressed-tensors output, not {} at {}",
                        self.format.name(),
                        self.level
                    ),
                    "Use `quantize MODEL gguf|exl3|gptq|compressed-tensors --target-bpw X`",
                );
            }
            if int_layout {
                if !matches!(self.method, Method::Gptq | Method::Rtn) {
                    return inv(
                        format!(
                            "--target-bpw for {} takes --method gptq or rtn, not {}",
                            self.format.name(),
                            self.method.name()
                        ),
                        "Use --method gptq (the default)",
                    );
                }
                if !t.bpw.is_finite() || t.windows == 0 {
                    return inv(
                        format!(
                            "--target-bpw {} with {} measurement windows is not valid",
                            t.bpw, t.windows
                        ),
                        "e.g. --target-bpw 3.5 --measure-windows 16",
                    );
                }
            } else if !(t.bpw.is_finite() && (1.0..=8.0).contains(&t.bpw)) || t.windows == 0 {
                return inv(
                    format!(
                        "--target-bpw {} with {} measurement windows is not valid for exl3",
                        t.bpw, t.windows
                    ),
                    "Give 1.0 … 8.0 bits per weight, e.g. --target-bpw 3.5 --measure-windows 16",
                );
            }
        }
        if self.imatrix.is_some() {
            return inv(
                "--imatrix applies to GGUF k-quants only".into(),
                "Drop --imatrix",
            );
        }
        if self.format == OutputFormat::Exl3 {
            if self.method != Method::Trellis || self.grid.is_some() {
                return inv(
                    format!(
                        "EXL3 stores trellis codes: --method {} and integer-grid options do not apply",
                        self.method.name()
                    ),
                    "Use --method trellis (the default for exl3)",
                );
            }
            self.trellis_bpw()?;
            return Ok(());
        }
        if self.method == Method::Trellis {
            return inv(
                format!(
                    "trellis codes are written as exl3, not {}",
                    self.format.name()
                ),
                "Use `quantize MODEL exl3 -q BPW`",
            );
        }
        if self.hadamard_size.is_some() && self.method != Method::MrGptq {
            return inv(
                "--hadamard-size applies to --method mr-gptq only".into(),
                "Drop --hadamard-size, or use --method mr-gptq",
            );
        }
        if crate::fp_export::fp_scheme(self).is_some() {
            // floating-point grids: round-to-nearest with an MSE scale search (streamed),
            // GPTQ or MR-GPTQ (calibrated); no integer-grid flags
            if !matches!(self.method, Method::Rtn | Method::Gptq | Method::MrGptq)
                || self.grid.is_some()
            {
                return inv(
                    format!(
                        "compressed-tensors {} is quantized by rtn (MSE scale search), gptq or mr-gptq; --method {} and integer-grid options do not apply",
                        self.level,
                        self.method.name()
                    ),
                    "Use --method rtn (the default for this level), gptq or mr-gptq",
                );
            }
            if self.method == Method::MrGptq {
                let b = self.hadamard_block();
                if !(b.is_power_of_two() && (16..=128).contains(&b)) {
                    return inv(
                        format!("--hadamard-size {b} is not a power of two from 16 to 128"),
                        "Use --hadamard-size 16, 32, 64 or 128",
                    );
                }
            }
            if self.method != Method::Rtn
                && !(self.damp_percent.is_finite()
                    && self.damp_percent > 0.0
                    && self.damp_percent < 1.0)
            {
                return inv(
                    format!("--damp-percent {} must be in (0, 1)", self.damp_percent),
                    "e.g. --damp-percent 0.01",
                );
            }
            return Ok(());
        }
        if self.method == Method::MrGptq {
            return inv(
                format!(
                    "mr-gptq rotates for the floating-point grids; {} {} is an integer grid",
                    self.format.name(),
                    self.level
                ),
                "Use `compressed-tensors -q NVFP4|MXFP4|FP8|FP8_BLOCK|FP8_TENSOR --method mr-gptq`, or --method gptq",
            );
        }
        if self.method == Method::KQuant {
            return inv(
                format!("k-quants write GGUF, not {}", self.format.name()),
                "Use --method gptq, awq or rtn",
            );
        }
        let g = self.int_grid()?;
        if !matches!(g.bits, 2 | 3 | 4 | 8) {
            return inv(format!("{} bits", g.bits), "Use 2, 3, 4 or 8 bits");
        }
        if let Some(gs) = g.group_size {
            if ![32, 64, 128].contains(&gs) {
                return inv(
                    format!("--group-size {gs} is not supported"),
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
        match self.format {
            OutputFormat::Hf(Layout::Awq) => {
                if g.bits != 4 || g.symmetric || g.group_size.is_none() {
                    return inv(
                        format!(
                            "AWQ GEMM stores 4-bit asymmetric groups (got {} bits, {}, group {:?})",
                            g.bits,
                            if g.symmetric {
                                "symmetric"
                            } else {
                                "asymmetric"
                            },
                            g.group_size
                        ),
                        "Use `awq -q 4bit` with a group size of 32, 64 or 128",
                    );
                }
                if g.act_order {
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
            OutputFormat::Hf(Layout::Gptq(_) | Layout::CompressedTensors) => {
                // AWQ's zero points can be 0, which GPTQ v1 cannot store
                let v1 = self.format == OutputFormat::Hf(Layout::Gptq(GptqFormat::V1));
                if self.method == Method::Awq && (g.symmetric || v1 || g.group_size.is_none()) {
                    return inv(
                        "--method awq needs an asymmetric, grouped layout".into(),
                        "Use `awq -q 4bit`, `gptq --checkpoint-format gptq_v2 --symmetric false`, or compressed-tensors W4A16_ASYM",
                    );
                }
            }
            OutputFormat::Gguf | OutputFormat::Exl3 => {}
        }
        if self.method == Method::Awq && g.act_order {
            return inv("AWQ has no act-order".into(), "Drop --act-order");
        }
        Ok(())
    }
}

/// Parses an EXL3 level (`4`, `3.5`, `4.0bpw`) into bits per weight, 1.0…8.0.
pub fn exl3_bpw(level: &str) -> Result<f64> {
    let t = level.trim();
    let num = t
        .strip_suffix("bpw")
        .or_else(|| t.strip_suffix("BPW"))
        .unwrap_or(t);
    let bpw: f64 = num.parse().map_err(|_| {
        PipelineError::invalid(
            format!("unknown exl3 quantization level `{level}`"),
            "Give bits per weight, e.g. -q 4.0",
        )
    })?;
    if !(bpw.is_finite() && (1.0..=8.0).contains(&bpw)) {
        return Err(PipelineError::invalid(
            format!("exl3 bits per weight {bpw} is out of range"),
            "Use 1.0 to 8.0",
        ));
    }
    Ok(bpw)
}

/// Parses a whole-number EXL3 level (`4`, `4.0`, `4.0bpw`) into K; a fractional one
/// is refused (it is a mix of K, see [`exl3_bpw`]).
pub fn exl3_k(level: &str) -> Result<u32> {
    let bpw = exl3_bpw(level)?;
    if bpw.fract() != 0.0 {
        return Err(PipelineError::unsupported(
            format!("exl3 at a fractional {bpw} bpw is a mix of trellis K, not one K"),
            "Use a whole number of bits: 1.0, 2.0, … 8.0",
        ));
    }
    Ok(bpw as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exl3_levels() {
        assert_eq!(exl3_k("4").unwrap(), 4);
        assert_eq!(exl3_k("2.0").unwrap(), 2);
        assert_eq!(exl3_k("8.0bpw").unwrap(), 8);
        assert_eq!(exl3_bpw("3.5bpw").unwrap(), 3.5);
        assert_eq!(
            exl3_bpw("0.5").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        assert_eq!(
            exl3_k("4.25").unwrap_err().kind(),
            crate::ErrorKind::Unsupported
        );
        assert_eq!(
            exl3_k("9").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        assert_eq!(
            exl3_k("Q4").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
    }
}
