//! Argument definitions (clap) and command dispatch.

use crate::output::{self, Mode, Verbosity};
use clap::{Args, Parser, Subcommand, ValueEnum};
use llmq_pipeline::PipelineError;
use std::path::PathBuf;

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

/// `--mixed-precision`: presets of the measured allocator.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MixedPrecision {
    Dense,
    Moe,
    #[value(name = "moe-mtp")]
    MoeMtp,
    Auto,
}

impl MixedPrecision {
    /// Whether routed experts are allocated one by one.
    pub fn per_expert(self) -> bool {
        matches!(self, MixedPrecision::Moe | MixedPrecision::MoeMtp)
    }
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Model: Hugging Face Hub id (org/name), local folder, or a .gguf file
    pub model: String,
    /// Target format
    #[arg(value_enum)]
    pub output_format: OutputFormat,
    /// Quantization level: Q4_K_M, Q8_0, IQ4_XS, F16 … for gguf; 2bit/3bit/4bit/8bit for
    /// gptq; 4bit for awq; W4A16, W4A16_ASYM, W8A16, NVFP4, MXFP4, FP8, FP8_BLOCK,
    /// FP8_TENSOR for compressed-tensors. With --target-bpw: the base mix that decides
    /// which tensors stay unquantized and the file type (default Q4_K_M)
    #[arg(
        short = 'q',
        long = "quant-level",
        required_unless_present = "target_bpw"
    )]
    pub quant_level: Option<String>,
    /// Choose each tensor group's bits by its measured KL increase on calibration
    /// text: gguf, types Q3_K…Q8_0 so the whole file takes at most BPW bits per
    /// weight; exl3 (without -q), trellis K per group so the decoder's Linears average
    /// at most BPW (1…8); gptq and compressed-tensors (without -q), bits per group
    /// (2/3/4/8, on --group-size and --symmetric) so the decoder's Linears average
    /// at most BPW code bits. Routed experts share one choice per layer unless
    /// --per-expert-bits
    #[arg(long, value_name = "BPW")]
    pub target_bpw: Option<f64>,
    /// With --target-bpw on MoE: write each routed expert's own measured choice. exl3
    /// (our engine runs it; exllamav3 needs one K per projection and does not load
    /// it), gptq and compressed-tensors (per-module bits; fused-MoE kernels want one
    /// width per layer); gguf refuses it (llama.cpp stacks the experts in one tensor)
    #[arg(long, requires = "target_bpw")]
    pub per_expert_bits: bool,
    /// With --target-bpw: the seeds' presets of the measured allocator. dense and auto:
    /// routed experts share one choice per layer (what llama.cpp and exllamav3 load);
    /// moe and moe-mtp: each routed expert its own (as --per-expert-bits; MTP layers
    /// are not converted, so moe-mtp allocates as moe)
    #[arg(long, value_enum, requires = "target_bpw", value_name = "PRESET")]
    pub mixed_precision: Option<MixedPrecision>,
    /// Calibration windows (of --calibration-seq-len tokens) --target-bpw measures on
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub measure_windows: usize,
    /// With --target-bpw: reuse the measured curves of an earlier --target-bpw run of
    /// the same model (its --format json result) instead of measuring again
    #[arg(long, value_name = "FILE.json", requires = "target_bpw")]
    pub measurements: Option<PathBuf>,
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
    /// MoE (gptq/awq/compressed-tensors): route every calibration token through every
    /// expert for the Hessians and statistics only (the layer output keeps the
    /// router's choice), so no expert falls back for lack of tokens; costs one pass of
    /// every expert over all tokens per layer
    #[arg(long)]
    pub calibrate_all_experts: bool,
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
    /// for awq), rtn (round-to-nearest, no calibration; the default for the
    /// compressed-tensors FP levels), mr-gptq (GPTQ after a block-Hadamard input
    /// rotation; compressed-tensors FP levels only) or trellis (exl3 only)
    #[arg(long, value_parser = parse_method)]
    pub method: Option<llmq_pipeline::Method>,
    /// Hadamard block on each Linear's input for --method mr-gptq: 16, 32, 64 or 128
    /// [default: 128]
    #[arg(long, value_name = "N")]
    pub hadamard_size: Option<usize>,
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
    /// Where calibration runs (the block forward, Hessians and the GPTQ solve, or AWQ's
    /// statistics and searches, or gguf's importance matrix from --calibration-data):
    /// cpu, cuda, cuda:N or auto; the GPU takes --method gptq or awq into gptq, awq or
    /// compressed-tensors integer levels, and gguf with --calibration-data
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A `--method` name from the pipeline's method registry.
fn parse_method(s: &str) -> Result<llmq_pipeline::Method, String> {
    llmq_pipeline::Method::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = llmq_pipeline::Method::ALL
            .iter()
            .map(|m| m.name())
            .collect();
        format!("unknown method `{s}`; use one of: {}", names.join(", "))
    })
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
        Command::Quantize(a) => crate::quantize_cmd::run(*a, mode, verbosity),
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

fn info(a: InfoArgs, mode: Mode) -> Result<(), PipelineError> {
    let info = llmq_pipeline::model_info(&a.model, a.token.clone())?;
    output::print_info(mode, &info);
    Ok(())
}
