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
    /// Show architecture and sizes of a model or a quantized file
    Info(InfoArgs),
    /// Perplexity of a model on a text; with --base, KL-divergence against the original
    Eval(Box<crate::eval_cmd::EvalArgs>),
    /// Generate text from a prompt (streamed, sampled or greedy, optional chat template)
    Generate(Box<crate::generate_cmd::GenerateArgs>),
    /// Token ids of a text under a model's tokenizer (as llama.cpp's llama-tokenize)
    Tokenize(crate::tokenize_cmd::TokenizeArgs),
    /// OpenAI-compatible HTTP server with continuous batching (binds 127.0.0.1 by default)
    Serve(Box<crate::serve::ServeArgs>),
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

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Model: Hugging Face Hub id (org/name), local folder, or a .gguf file
    pub model: String,
    /// Target format
    #[arg(value_enum)]
    pub output_format: OutputFormat,
    /// Quantization level, e.g. Q4_K_M, Q8_0, IQ4_XS, F16 for gguf
    #[arg(short = 'q', long = "quant-level")]
    pub quant_level: String,
    /// Output directory
    #[arg(short = 'o', long = "output-dir", default_value = ".")]
    pub output_dir: PathBuf,
    /// Output file name (default: <model>-<LEVEL>.gguf)
    #[arg(short = 'n', long = "output-name")]
    pub output_name: Option<String>,
    /// Calibration dataset (text or JSONL) for calibrated methods
    #[arg(long)]
    pub calibration_data: Option<PathBuf>,
    /// Number of calibration samples
    #[arg(long, default_value_t = 256)]
    pub calibration_samples: usize,
    /// Group size for GPTQ/AWQ
    #[arg(long, default_value_t = 128)]
    pub group_size: usize,
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
        Command::Info(a) => info(a, mode),
        Command::Eval(a) => crate::eval_cmd::run(*a, mode, verbosity),
        Command::Generate(a) => crate::generate_cmd::run(*a, mode, verbosity),
        Command::Tokenize(a) => crate::tokenize_cmd::run(a, mode),
        Command::Serve(a) => crate::serve::run(*a, mode, verbosity),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            output::print_error(mode, &e);
            e.exit_code()
        }
    }
}

fn quantize(a: QuantizeArgs, mode: Mode, verbosity: Verbosity) -> Result<(), PipelineError> {
    let started = Instant::now();
    if a.output_format != OutputFormat::Gguf {
        return Err(PipelineError::unsupported(
            format!(
                "output format `{}` is not available in this version",
                format_name(a.output_format)
            ),
            "Use `gguf`; GPTQ, AWQ, compressed-tensors and EXL3 writers are planned",
        ));
    }
    if a.calibration_data.is_some() || a.imatrix.is_some() {
        return Err(PipelineError::invalid(
            "calibrated GGUF quantization (--calibration-data / --imatrix) is not available in this version",
            "Drop the option to quantize with round-to-nearest k-quants",
        ));
    }
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
    let checkpoint = if a.no_checkpoints {
        if a.resume.is_some() {
            return Err(PipelineError::invalid(
                "--resume needs checkpoints",
                "Drop --no-checkpoints",
            ));
        }
        None
    } else {
        let dir = match &a.resume {
            Some(Some(p)) => p.clone(),
            _ => a
                .checkpoint_dir
                .clone()
                .or_else(|| std::env::var_os("LLM_QUANTIZE_CHECKPOINT_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(".checkpoint")),
        };
        Some(CheckpointOptions {
            dir,
            resume: a.resume.is_some(),
        })
    };
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
        stop_after_units: a.stop_after_layers,
    };
    let progress = BarProgress::new(verbosity);
    let outcome = llmq_pipeline::quantize_gguf(&req, &progress)?;
    output::print_quantize_result(mode, verbosity, &outcome, started.elapsed().as_secs_f64());
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
