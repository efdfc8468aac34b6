//! `quantize MODEL FORMAT -q LEVEL`: the command-line flags turned into one
//! [`QuantizeRequest`] (the level parsed per format, the flags that do not apply to
//! the format refused in the flags' own words), run by the pipeline's one driver, and
//! the result printed ([`crate::quantize_output`]).

use crate::cli::{OutputFormat, QuantizeArgs};
use crate::output::{Mode, Verbosity};
use crate::progress::BarProgress;
use llmq_hfquant::gptq::GptqFormat;
use llmq_pipeline::{
    CalibrationRequest, CheckpointOptions, IntGrid, Layout, Method, OutputFormat as Format,
    PipelineError, QuantizeRequest, TargetBpw,
};
use std::path::PathBuf;
use std::time::Instant;

pub fn run(a: QuantizeArgs, mode: Mode, verbosity: Verbosity) -> Result<(), PipelineError> {
    let started = Instant::now();
    llmq_pipeline::test_hooks::install(llmq_pipeline::test_hooks::TestHooks {
        stop_after_units: a.stop_after_layers,
        ..llmq_pipeline::test_hooks::TestHooks::from_env()
    });
    let req = request(&a)?;
    let progress = BarProgress::new(verbosity);
    let outcome = llmq_pipeline::quantize(&req, &progress)?;
    crate::quantize_output::print(mode, verbosity, &outcome, started.elapsed().as_secs_f64());
    Ok(())
}

/// The pipeline request the flags ask for.
fn request(a: &QuantizeArgs) -> Result<QuantizeRequest, PipelineError> {
    let (format, level, method, grid) = match a.output_format {
        OutputFormat::Gguf => gguf_target(a)?,
        OutputFormat::Gptq | OutputFormat::Awq | OutputFormat::CompressedTensors => {
            hf_target(a)?
        }
        OutputFormat::Exl3 => exl3_target(a)?,
        other => {
            return Err(PipelineError::unsupported(
                format!(
                    "output format `{}` is not available in this version",
                    format_name(other)
                ),
                "Use `gguf`, `gptq`, `awq`, `compressed-tensors` or `exl3`; a safetensors writer is planned",
            ))
        }
    };
    if let Some(gb) = a.ram_budget_gb {
        if !(gb.is_finite() && gb > 0.0) {
            return Err(PipelineError::invalid(
                "--ram-budget-gb must be a positive number",
                "e.g. --ram-budget-gb 16",
            ));
        }
    }
    if a.max_workers == Some(0) {
        return Err(PipelineError::invalid(
            "--max-workers must be at least 1",
            "e.g. --max-workers 4",
        ));
    }
    Ok(QuantizeRequest {
        model: a.model.clone(),
        format,
        level,
        method,
        grid,
        damp_percent: a.damp_percent,
        hadamard_size: a.hadamard_size,
        imatrix: a.imatrix.clone(),
        calibration: CalibrationRequest {
            data: a.calibration_data.clone(),
            samples: a.calibration_samples,
            seq_len: a.calibration_seq_len,
            all_experts: a.calibrate_all_experts,
        },
        output_dir: a.output_dir.clone(),
        output_name: a.output_name.clone(),
        checkpoint: checkpoint_options(a)?,
        validate: !a.no_validate,
        max_workers: a.max_workers,
        ram_budget_bytes: a.ram_budget_gb.map(|g| (g * 1e9) as u64),
        token: a.token.clone(),
        device: calib_device(a, method)?,
        target_bpw: a.target_bpw.map(|bpw| TargetBpw {
            bpw,
            windows: a.measure_windows,
            measurements: a.measurements.clone(),
            per_expert: a.per_expert_bits || a.mixed_precision.is_some_and(|m| m.per_expert()),
        }),
    })
}

type Target = (Format, String, Method, Option<IntGrid>);

/// `--device`: the CPU, or a GPU for GPTQ and AWQ, and for the importance matrix a
/// GGUF run computes from `--calibration-data` (the pipeline refuses what the GPU path
/// does not cover, see `llmq_pipeline::CalibDevice`).
fn calib_device(
    a: &QuantizeArgs,
    method: Method,
) -> Result<llmq_pipeline::CalibDevice, PipelineError> {
    let imatrix = matches!(a.output_format, OutputFormat::Gguf) && a.calibration_data.is_some();
    let on_gpu = matches!(method, Method::Gptq | Method::Awq) || imatrix;
    // `auto` takes a GPU only where the GPU path covers the method
    if a.device == "cpu" || (a.device == "auto" && !on_gpu) {
        return Ok(llmq_pipeline::CalibDevice::Cpu);
    }
    if !on_gpu {
        return Err(PipelineError::unsupported(
            format!(
                "--device {}: calibration on the GPU covers --method gptq and awq only, and gguf's importance matrix from --calibration-data (this run uses {})",
                a.device,
                method.name()
            ),
            "Run with --device cpu, or use --method gptq or awq",
        ));
    }
    match crate::model_load::choose_device(&a.device, false)? {
        crate::model_load::Device::Cpu => Ok(llmq_pipeline::CalibDevice::Cpu),
        #[cfg(feature = "cuda")]
        crate::model_load::Device::Cuda(c) => Ok(llmq_pipeline::CalibDevice::Cuda(c)),
    }
}

/// `-q`, which only gguf with --target-bpw may leave out.
fn level_of(a: &QuantizeArgs) -> Result<String, PipelineError> {
    a.quant_level.clone().ok_or_else(|| {
        PipelineError::invalid(
            "the quantization level -q is required for this format",
            "Give -q LEVEL (--target-bpw applies to gguf and exl3)",
        )
    })
}

/// GGUF: the level names the mix; the integer-grid flags do not apply.
fn gguf_target(a: &QuantizeArgs) -> Result<Target, PipelineError> {
    if a.calibration_data.is_some() && a.imatrix.is_some() {
        return Err(PipelineError::invalid(
            "--calibration-data and --imatrix both give importance weights",
            "Pass one of them",
        ));
    }
    if a.method.is_some_and(|m| m != Method::KQuant) || a.act_order || a.symmetric.is_some() {
        return Err(PipelineError::invalid(
            "--method, --act-order and --symmetric apply to gptq, awq and compressed-tensors",
            "For GGUF, --imatrix FILE or --calibration-data FILE give importance-weighted k-quants",
        ));
    }
    let level = a
        .quant_level
        .clone()
        .unwrap_or_else(|| "Q4_K_M".to_string());
    Ok((Format::Gguf, level, Method::KQuant, None))
}

/// exl3: the level is bits per weight, 1…8 (a whole number: one trellis K for every
/// Linear; a fractional one: a mix of K); the integer-grid flags do not apply.
fn exl3_target(a: &QuantizeArgs) -> Result<Target, PipelineError> {
    if a.act_order || a.symmetric.is_some() || a.group_size != 128 || a.imatrix.is_some() {
        return Err(PipelineError::invalid(
            "--act-order, --symmetric, --group-size and --imatrix do not apply to exl3",
            "exl3 takes bits per weight: -q 2.0 … 8.0",
        ));
    }
    // --target-bpw gives the bits instead of -q
    let level = match (&a.quant_level, a.target_bpw) {
        (Some(_), Some(_)) => {
            return Err(PipelineError::invalid(
                "exl3 takes -q BPW or --target-bpw BPW, not both",
                "Give --target-bpw alone for the measured allocation",
            ))
        }
        (None, Some(t)) => t.to_string(),
        _ => level_of(a)?,
    };
    let bpw = llmq_pipeline::exl3_bpw(&level)?;
    let method = a.method.unwrap_or(Method::Trellis);
    let level = if bpw.fract() == 0.0 {
        format!("{bpw}.0bpw")
    } else {
        format!("{bpw}bpw")
    };
    Ok((Format::Exl3, level, method, None))
}

/// gptq, awq, compressed-tensors: the level gives bits (and symmetry); the grid
/// flags complete it.
fn hf_target(a: &QuantizeArgs) -> Result<Target, PipelineError> {
    // gptq and integer compressed-tensors: --target-bpw gives the bits instead of -q
    let measured = matches!(
        a.output_format,
        OutputFormat::Gptq | OutputFormat::CompressedTensors
    ) && a.target_bpw.is_some();
    let level = match (&a.quant_level, measured) {
        (Some(_), true) => {
            return Err(PipelineError::invalid(
                format!(
                    "{} takes -q LEVEL or --target-bpw BPW, not both",
                    format_name(a.output_format)
                ),
                "Give --target-bpw alone for the measured allocation (--group-size and --symmetric set the grid)",
            ))
        }
        (None, true) if a.output_format == OutputFormat::Gptq => "4bit".to_string(),
        (None, true) => "W4A16".to_string(),
        _ => level_of(a)?.trim().to_string(),
    };
    let bad_level = |fmt: &str, allowed: &str| {
        PipelineError::invalid(
            format!("unknown {fmt} quantization level `{level}`"),
            format!("Use one of: {allowed}"),
        )
    };
    let (format, bits, default_sym, default_method, level_name) = match a.output_format {
        OutputFormat::Gptq => {
            let bits = match level.to_ascii_lowercase().as_str() {
                "2bit" => 2,
                "3bit" => 3,
                "4bit" => 4,
                "8bit" => 8,
                _ => return Err(bad_level("GPTQ", "2bit, 3bit, 4bit, 8bit")),
            };
            let fmt = GptqFormat::from_name(&a.checkpoint_format).ok_or_else(|| {
                PipelineError::invalid(
                    format!(
                        "--checkpoint-format `{}` is not supported",
                        a.checkpoint_format
                    ),
                    "Use gptq (v1) or gptq_v2",
                )
            })?;
            (
                Format::Hf(Layout::Gptq(fmt)),
                bits,
                true,
                Method::Gptq,
                format!("{bits}bit"),
            )
        }
        OutputFormat::Awq => {
            if !level.eq_ignore_ascii_case("4bit") {
                return Err(bad_level("AWQ", "4bit"));
            }
            (
                Format::Hf(Layout::Awq),
                4,
                false,
                Method::Awq,
                "4bit".to_string(),
            )
        }
        _ => {
            let up = level.to_ascii_uppercase();
            let (bits, sym) = match up.as_str() {
                "W4A16" => (4, true),
                "W4A16_ASYM" => (4, false),
                "W8A16" => (8, true),
                _ if llmq_pipeline::fp_export::fp_level(&up).is_some() => {
                    // floating-point grids: round-to-nearest by default (or gptq,
                    // mr-gptq), no integer grid
                    let method = a.method.unwrap_or(Method::Rtn);
                    return Ok((Format::Hf(Layout::CompressedTensors), up, method, None));
                }
                _ => {
                    return Err(bad_level(
                        "compressed-tensors",
                        "W4A16, W4A16_ASYM, W8A16, NVFP4, MXFP4, FP8, FP8_BLOCK, FP8_TENSOR",
                    ))
                }
            };
            (
                Format::Hf(Layout::CompressedTensors),
                bits,
                sym,
                Method::Gptq,
                up,
            )
        }
    };
    if a.imatrix.is_some() {
        return Err(PipelineError::invalid(
            "--imatrix applies to GGUF k-quants only",
            "Drop --imatrix",
        ));
    }
    let group_size = match a.group_size {
        -1 => None,
        g if g > 0 => Some(g as usize),
        g => {
            return Err(PipelineError::invalid(
                format!("--group-size {g} is not valid"),
                "Use 32, 64, 128 or -1 (per channel)",
            ))
        }
    };
    let method = a.method.unwrap_or(default_method);
    // measured: the widest width within the target is the base (modules the
    // allocation does not list); the level names the target
    let (bits, level_name) = match a.target_bpw.filter(|_| measured) {
        Some(t) => (
            llmq_pipeline::target_bpw::int::widths(match format {
                Format::Hf(l) => l,
                _ => Layout::CompressedTensors,
            })
            .iter()
            .copied()
            .filter(|&b| b as f64 <= t)
            .max()
            .unwrap_or(2),
            format!("{t}bpw"),
        ),
        None => (bits, level_name),
    };
    let grid = IntGrid {
        bits,
        group_size,
        symmetric: a.symmetric.unwrap_or(default_sym),
        act_order: a.act_order,
    };
    Ok((format, level_name, method, Some(grid)))
}

/// Checkpoint directory and resume flag from `--no-checkpoints`, `--checkpoint-dir`,
/// `--resume [PATH]` and `LLM_QUANTIZE_CHECKPOINT_DIR` (default `./.checkpoint`).
fn checkpoint_options(a: &QuantizeArgs) -> Result<Option<CheckpointOptions>, PipelineError> {
    if a.no_checkpoints {
        if a.resume.is_some() {
            return Err(PipelineError::invalid(
                "--resume needs checkpoints",
                "Drop --no-checkpoints",
            ));
        }
        return Ok(None);
    }
    let dir = match &a.resume {
        Some(Some(p)) => p.clone(),
        _ => a
            .checkpoint_dir
            .clone()
            .or_else(|| std::env::var_os("LLM_QUANTIZE_CHECKPOINT_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(".checkpoint")),
    };
    Ok(Some(CheckpointOptions {
        dir,
        resume: a.resume.is_some(),
    }))
}

fn format_name(f: OutputFormat) -> &'static str {
    match f {
        OutputFormat::Gguf => "gguf",
        OutputFormat::Gptq => "gptq",
        OutputFormat::Awq => "awq",
        OutputFormat::CompressedTensors => "compressed-tensors",
        OutputFormat::Exl3 => "exl3",
        OutputFormat::Safetensors => "safetensors",
    }
}
