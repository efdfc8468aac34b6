//! Argument definitions (clap) and command dispatch.

use crate::output::{self, Mode, Verbosity};
use crate::progress::BarProgress;
use clap::{Args, Parser, Subcommand, ValueEnum};
use llmq_pipeline::{CheckpointOptions, PipelineError, QuantizeRequest};
use std::path::PathBuf;
use std::time::Instant;

/// Turn Hugging Face LLM checkpoints into compact quantized models.
#[derive(Parser, Debug)]
#[command(name = "llm-quantize", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Output format of results on stdout
    #[arg(long, value_enum, default_value_t = Mode::Human, global = true)]
    pub format: Mode,
    /// How much to log on stderr
    #[arg(long, value_enum, default_value_t = Verbosity::Normal, global = true)]
    pub verbosity: Verbosity,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Quantize a model (hub id, local folder or GGUF file) to a format
    Quantize(Box<QuantizeArgs>),
    /// Convert a quantized model to another format (lossless where the target grid holds
    /// the source exactly; a lossy conversion warns and needs confirmation or --force)
    Convert(Box<crate::convert_cmd::ConvertArgs>),
    /// Show architecture and sizes of a model or a quantized file
    Info(InfoArgs),
    /// Perplexity of a model on a text; with --base, KL-divergence against the original
    Eval(Box<crate::eval_cmd::EvalArgs>),
    /// Generate text from a prompt (streamed, sampled or greedy, optional chat template)
    Generate(Box<crate::generate_cmd::GenerateArgs>),
    /// Token ids of a text under a model's tokenizer (as llama.cpp's llama-tokenize)
    Tokenize(crate::tokenize_cmd::TokenizeArgs),
    /// OpenAI-compatible HTTP server with continuous batching (binds 127.0.0.1 by default)
    Serve(Box<crate::serve_cmd::ServeArgs>),
    /// Models and formats side by side: size, bpw, prompt and decode tokens/s, peak
    /// memory, perplexity and KL (optionally against llama.cpp's llama-bench)
    Bench(Box<crate::bench_cmd::BenchArgs>),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Gguf,
    Gptq,
    Awq,
    #[value(name = "compressed-tensors")]
    CompressedTensors,
    Exl3,
    Safetensors,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    Gptq,
    Awq,
    Rtn,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Model: Hugging Face Hub id (org/name), local folder, or a .gguf file
    pub model: String,
    /// Target format
    #[arg(value_enum)]
    pub output_format: OutputFormat,
    /// Quantization level: Q4_K_M, Q8_0, IQ4_XS, F16 … for gguf; 2bit/3bit/4bit/8bit for
    /// gptq; 4bit for awq; W4A16, W4A16_ASYM, W8A16 for compressed-tensors
    #[arg(short = 'q', long = "quant-level")]
    pub quant_level: String,
    /// Output directory
    #[arg(short = 'o', long = "output-dir", default_value = ".")]
    pub output_dir: PathBuf,
    /// Output file name for gguf (default: <model>-<LEVEL>.gguf); output folder name for
    /// gptq/awq/compressed-tensors (default: <model>-<format>-<LEVEL>)
    #[arg(short = 'n', long = "output-name")]
    pub output_name: Option<String>,
    /// Calibration text (plain text, or JSONL with a "text" field; default: the bundled
    /// set); for gguf it computes an importance matrix (saved as <output>.imatrix.gguf)
    #[arg(long)]
    pub calibration_data: Option<PathBuf>,
    /// Number of calibration samples
    #[arg(long, default_value_t = 256)]
    pub calibration_samples: usize,
    /// Tokens per calibration sample (cut to the model's context)
    #[arg(long, default_value_t = 512)]
    pub calibration_seq_len: usize,
    /// Group size for GPTQ/AWQ/compressed-tensors: 32, 64, 128, or -1 (per channel)
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub group_size: i64,
    /// GPTQ dampening, a fraction of the mean Hessian diagonal
    #[arg(long, default_value_t = 0.01)]
    pub damp_percent: f64,
    /// Symmetric integer grid (default: true for gptq and W4A16/W8A16, false for awq)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub symmetric: Option<bool>,
    /// GPTQ act-order (desc_act): quantize columns by descending Hessian diagonal
    #[arg(long)]
    pub act_order: bool,
    /// GPTQ checkpoint layout: gptq (v1, zero points stored minus one) or gptq_v2
    #[arg(long, default_value = "gptq")]
    pub checkpoint_format: String,
    /// Weight quantizer: gptq (default for gptq and compressed-tensors), awq (default
    /// for awq) or rtn (round-to-nearest, no calibration)
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// Importance matrix file (llama.cpp imatrix) for k-quants and IQ4
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Disable per-layer checkpoints
    #[arg(long)]
    pub no_checkpoints: bool,
    /// Checkpoint directory [env: LLM_QUANTIZE_CHECKPOINT_DIR, default: ./.checkpoint]
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Resume an interrupted run (optionally from this checkpoint directory)
    #[arg(long, num_args = 0..=1, value_name = "PATH")]
    pub resume: Option<Option<PathBuf>>,
    /// Measure per-tensor error and re-check the written file (default)
    #[arg(long, overrides_with = "no_validate")]
    pub validate: bool,
    /// Skip per-tensor error measurement and the final re-check
    #[arg(long)]
    pub no_validate: bool,
    /// Layers processed in parallel (default: from the RAM budget and CPU count)
    #[arg(long)]
    pub max_workers: Option<usize>,
    /// RAM budget in GB for parallel layers (default: available memory)
    #[arg(long)]
    pub ram_budget_gb: Option<f64>,
    /// Hugging Face token for gated models [env: HF_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
    /// Testing hook: stop after N layers as if the process had been killed
    #[arg(long, hide = true)]
    pub stop_after_layers: Option<usize>,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Model: hub id, local folder or quantized file
    pub model: String,
    /// Hugging Face token for gated models [env: HF_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
}

/// Run the command; returns the process exit code.
pub fn dispatch(cli: Cli) -> i32 {
    let mode = cli.format;
    let verbosity = cli.verbosity;
    let result = match cli.command {
        Command::Quantize(a) => quantize(*a, mode, verbosity),
        Command::Convert(a) => crate::convert_cmd::run(*a, mode, verbosity),
        Command::Info(a) => info(a, mode),
        Command::Eval(a) => crate::eval_cmd::run(*a, mode, verbosity),
        Command::Generate(a) => crate::generate_cmd::run(*a, mode, verbosity),
        Command::Tokenize(a) => crate::tokenize_cmd::run(a, mode),
        Command::Serve(a) => crate::serve_cmd::run(*a, mode, verbosity),
        Command::Bench(a) => crate::bench_cmd::run(*a, mode, verbosity),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            output::print_error(mode, &e);
            crate::exit_codes::exit_code(&e)
        }
    }
}

fn quantize(a: QuantizeArgs, mode: Mode, verbosity: Verbosity) -> Result<(), PipelineError> {
    let started = Instant::now();
    llmq_pipeline::test_hooks::install(llmq_pipeline::test_hooks::TestHooks {
        stop_after_units: a.stop_after_layers,
        ..llmq_pipeline::test_hooks::TestHooks::from_env()
    });
    if matches!(
        a.output_format,
        OutputFormat::Gptq | OutputFormat::Awq | OutputFormat::CompressedTensors
    ) {
        return quantize_calibrated(a, mode, verbosity, started);
    }
    if a.output_format != OutputFormat::Gguf {
        return Err(PipelineError::unsupported(
            format!(
                "output format `{}` is not available in this version",
                format_name(a.output_format)
            ),
            "Use `gguf`, `gptq`, `awq` or `compressed-tensors`; EXL3 and safetensors writers are planned",
        ));
    }
    if a.calibration_data.is_some() && a.imatrix.is_some() {
        return Err(PipelineError::invalid(
            "--calibration-data and --imatrix both give importance weights",
            "Pass one of them",
        ));
    }
    if a.method.is_some() || a.act_order || a.symmetric.is_some() {
        return Err(PipelineError::invalid(
            "--method, --act-order and --symmetric apply to gptq, awq and compressed-tensors",
            "For GGUF, --imatrix FILE or --calibration-data FILE give importance-weighted k-quants",
        ));
    }
    let imatrix_calibration =
        a.calibration_data
            .as_ref()
            .map(|p| llmq_pipeline::calibrated::ImatrixRequest {
                calibration_data: Some(p.clone()),
                calibration_samples: a.calibration_samples,
                seq_len: a.calibration_seq_len,
                ram_budget_bytes: a.ram_budget_gb.map(|g| (g * 1e9) as u64),
            });
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
    let checkpoint = checkpoint_options(&a)?;
    let req = QuantizeRequest {
        model: a.model.clone(),
        level: a.quant_level.clone(),
        output_dir: a.output_dir.clone(),
        output_name: a.output_name.clone(),
        checkpoint,
        validate: !a.no_validate,
        max_workers: a.max_workers,
        ram_budget_bytes: a.ram_budget_gb.map(|g| (g * 1e9) as u64),
        token: a.token.clone(),
        imatrix: a.imatrix.clone(),
        imatrix_calibration,
    };
    let progress = BarProgress::new(verbosity);
    let outcome = llmq_pipeline::quantize_gguf(&req, &progress)?;
    output::print_quantize_result(mode, verbosity, &outcome, started.elapsed().as_secs_f64());
    Ok(())
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

/// `quantize MODEL gptq|awq|compressed-tensors -q LEVEL`.
fn quantize_calibrated(
    a: QuantizeArgs,
    mode: Mode,
    verbosity: Verbosity,
    started: Instant,
) -> Result<(), PipelineError> {
    use llmq_pipeline::{HfFormat, Method};
    let level = a.quant_level.trim().to_string();
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
            let fmt = match a.checkpoint_format.as_str() {
                "gptq" | "gptq_v1" | "v1" => llmq_hfquant::gptq::GptqFormat::V1,
                "gptq_v2" | "v2" => llmq_hfquant::gptq::GptqFormat::V2,
                other => {
                    return Err(PipelineError::invalid(
                        format!("--checkpoint-format `{other}` is not supported"),
                        "Use gptq (v1) or gptq_v2",
                    ))
                }
            };
            (
                HfFormat::Gptq(fmt),
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
            (HfFormat::Awq, 4, false, Method::Awq, "4bit".to_string())
        }
        _ => {
            let up = level.to_ascii_uppercase();
            let (bits, sym) = match up.as_str() {
                "W4A16" => (4, true),
                "W4A16_ASYM" => (4, false),
                "W8A16" => (8, true),
                "NVFP4A16" | "MXFP4A16" | "FP8" => {
                    return Err(PipelineError::unsupported(
                        format!("compressed-tensors {up} is not available in this version"),
                        "Use W4A16, W4A16_ASYM or W8A16",
                    ))
                }
                _ => return Err(bad_level("compressed-tensors", "W4A16, W4A16_ASYM, W8A16")),
            };
            (HfFormat::CompressedTensors, bits, sym, Method::Gptq, up)
        }
    };
    if a.imatrix.is_some() {
        return Err(PipelineError::invalid(
            "--imatrix applies to GGUF k-quants only",
            "Drop --imatrix",
        ));
    }
    let checkpoint = checkpoint_options(&a)?;
    if let Some(gb) = a.ram_budget_gb {
        if !(gb.is_finite() && gb > 0.0) {
            return Err(PipelineError::invalid(
                "--ram-budget-gb must be a positive number",
                "e.g. --ram-budget-gb 16",
            ));
        }
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
    let method = match a.method {
        None => default_method,
        Some(MethodArg::Gptq) => Method::Gptq,
        Some(MethodArg::Awq) => Method::Awq,
        Some(MethodArg::Rtn) => Method::Rtn,
    };
    let req = llmq_pipeline::CalibratedRequest {
        model: a.model.clone(),
        format,
        level: level_name,
        method,
        bits,
        group_size,
        symmetric: a.symmetric.unwrap_or(default_sym),
        act_order: a.act_order,
        damp_percent: a.damp_percent,
        calibration_data: a.calibration_data.clone(),
        calibration_samples: a.calibration_samples,
        seq_len: a.calibration_seq_len,
        output_dir: a.output_dir.clone(),
        output_name: a.output_name.clone(),
        ram_budget_bytes: a.ram_budget_gb.map(|g| (g * 1e9) as u64),
        token: a.token.clone(),
        validate: !a.no_validate,
        checkpoint,
    };
    let progress = BarProgress::new(verbosity);
    let outcome = llmq_pipeline::quantize_calibrated(&req, &progress)?;
    crate::calibrated_output::print(mode, verbosity, &outcome, started.elapsed().as_secs_f64());
    Ok(())
}

fn info(a: InfoArgs, mode: Mode) -> Result<(), PipelineError> {
    let info = llmq_pipeline::model_info(&a.model, a.token.clone())?;
    output::print_info(mode, &info);
    Ok(())
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
