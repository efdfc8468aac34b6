//! `convert INPUT_MODEL OUTPUT_FORMAT` (CLI contract): converts a quantized checkpoint
//! (Hugging Face folder or GGUF file) to another format through `llmq_pipeline::convert`. A lossless result is written at
//! once and said to be lossless; a lossy one prints a quality warning (relative RMSE of
//! the weights, plus KL-divergence against the source on `--calibration-data`), asks
//! on a terminal, and without a terminal or with `--format json` exits 9 unless
//! `--force` is given. Nothing is left at the output path when it exits 9.

use crate::model_load::load;
use crate::output::{human_bytes, Mode, Verbosity};
use crate::progress::BarProgress;
use clap::Args;
use llmq_engine::perplexity::{perplexity, KlStats, PplOptions, PplProtocol};
use llmq_pipeline::convert::{self, ConvertReport, ConvertRequest, TargetFormat};
use llmq_pipeline::PipelineError;
use serde_json::json;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

const RULE: &str = "======================================================================";

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Quantized model: a GPTQ, AWQ or compressed-tensors folder (or Hub id), or a
    /// quantized GGUF file (llama, qwen2, qwen3, qwen3moe, gemma3, phi3; byte-level BPE
    /// tokenizer)
    pub input_model: String,
    /// Target format: gguf, gptq, awq, compressed-tensors
    pub output_format: String,
    /// Target level (gguf Q4_0, Q4_K_M, …; gptq 2bit/3bit/4bit/8bit; awq 4bit;
    /// compressed-tensors W4A16, W4A16_ASYM, W8A16); default: the source's grid (for a
    /// GGUF source: Q4_0 → 4-bit g32 sym, Q8_0 → 8-bit g32 sym, both exact; a GGUF
    /// target keeps the source's level)
    #[arg(short = 'q', long = "quant-level")]
    pub quant_level: Option<String>,
    /// Output directory
    #[arg(short = 'o', long = "output-dir", default_value = ".")]
    pub output_dir: PathBuf,
    /// Output file (gguf) or folder name
    #[arg(short = 'n', long = "output-name")]
    pub output_name: Option<String>,
    /// Write a lossy conversion without asking
    #[arg(long)]
    pub force: bool,
    /// Text on which to measure the KL-divergence of a lossy conversion (plain text or
    /// JSONL with a "text" field)
    #[arg(long)]
    pub calibration_data: Option<PathBuf>,
    /// Windows of 256 tokens evaluated for the KL estimate
    #[arg(long, default_value_t = 8)]
    pub calibration_samples: usize,
    /// Group size of an integer target: 32, 64, 128 or -1 (per channel); default: the source's
    #[arg(long, allow_negative_numbers = true)]
    pub group_size: Option<i64>,
    /// GPTQ layout: gptq (v1, zero points stored minus one) or gptq_v2
    #[arg(long)]
    pub checkpoint_format: Option<String>,
    /// Hugging Face token for gated models [env: HF_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
}

fn parse_format(s: &str) -> Result<TargetFormat, PipelineError> {
    match s.to_ascii_lowercase().as_str() {
        "gguf" => Ok(TargetFormat::Gguf),
        "gptq" => Ok(TargetFormat::Gptq),
        "awq" => Ok(TargetFormat::Awq),
        "compressed-tensors" | "compressed_tensors" => Ok(TargetFormat::CompressedTensors),
        "exl3" | "safetensors" => Err(PipelineError::unsupported(
            format!("converting to {s} is not supported"),
            format!("Supported conversions: {}", convert::SUPPORTED_PAIRS),
        )),
        _ => Err(PipelineError::invalid(
            format!("unknown output format `{s}`"),
            "Use gguf, gptq, awq or compressed-tensors",
        )),
    }
}

/// KL-divergence of the converted model (at `converted`) against the source on the
/// calibration text.
fn kl_estimate(a: &ConvertArgs, converted: &str, quiet: bool) -> Result<KlStats, PipelineError> {
    let path = a.calibration_data.as_ref().expect("asked for KL");
    let text = crate::eval_cmd::read_dataset(path)?;
    let src = load(&a.input_model, a.token.clone(), quiet)?;
    let out = load(converted, None, quiet)?;
    let tokens = src.tokenizer.encode(&text, false, false).map_err(|e| {
        PipelineError::general(format!("tokenizing the calibration data failed: {e}"), "")
    })?;
    let o = PplOptions {
        protocol: PplProtocol::Golden,
        max_length: 256.min(src.model.hp.n_ctx_train.max(2)),
        max_windows: Some(a.calibration_samples.max(1)),
        batch_size: 1,
        bos: None,
    };
    let r = perplexity(&out.model, Some(&src.model), &tokens, &o, &mut |_, _| {}).map_err(|e| {
        PipelineError::invalid(e.to_string(), "Use a longer --calibration-data text")
    })?;
    Ok(r.kl.unwrap_or_default())
}

fn warning_text(r: &ConvertReport, kl: Option<&KlStats>) -> String {
    let lossy = r.lossy_tensors();
    let mut s = format!(
        "lossy conversion {} {} -> {} {}: {} of {} tensors change; relative RMSE of the weights {:.4} (mean), {:.4} (worst, {})",
        r.input_format,
        r.input_grid,
        r.format.name(),
        r.level,
        lossy.len(),
        r.tensors.len(),
        r.mean_relative_rmse(),
        lossy.first().map_or(0.0, |t| t.rel_rmse),
        lossy.first().map_or("-", |t| t.name.as_str()),
    );
    if let Some(k) = kl {
        s.push_str(&format!(
            "; KL-divergence against the source {:.6} (max {:.4}), same top token {:.1}%",
            k.mean_kl,
            k.max_kl,
            k.same_top_rate * 100.0
        ));
    }
    s
}

/// Asks on the terminal; `true` to go on.
fn confirm(question: &str) -> bool {
    eprint!("[llm-quantize] {question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok()
        && matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

pub fn run(a: ConvertArgs, mode: Mode, verbosity: Verbosity) -> Result<(), PipelineError> {
    let started = Instant::now();
    let format = parse_format(&a.output_format)?;
    let req = ConvertRequest {
        input: a.input_model.clone(),
        format,
        level: a.quant_level.clone(),
        group_size: a.group_size,
        checkpoint_format: a.checkpoint_format.clone(),
        output_dir: a.output_dir.clone(),
        output_name: a.output_name.clone(),
        token: a.token.clone(),
    };
    let progress = BarProgress::new(verbosity);
    let prepared = convert::prepare(&req, &progress)?;
    let quiet = verbosity == Verbosity::Quiet;
    let mut kl = None;
    if !prepared.report.lossless() {
        if a.calibration_data.is_some() {
            let tmp = prepared.temp_path().display().to_string();
            kl = Some(kl_estimate(&a, &tmp, quiet)?);
        }
        let text = warning_text(&prepared.report, kl.as_ref());
        let interactive = mode == Mode::Human && std::io::stdin().is_terminal();
        if !a.force {
            if !interactive {
                return Err(PipelineError::cancelled(
                    format!("{text}; nothing was written"),
                    "Pass --force to write it anyway",
                ));
            }
            eprintln!("[llm-quantize] warning: {text}");
            if !confirm("Write the converted model anyway?") {
                return Err(PipelineError::cancelled(
                    "conversion declined; nothing was written",
                    "Pass --force to write it without asking",
                ));
            }
        } else if !quiet {
            eprintln!("[llm-quantize] warning: {text}");
        }
    }
    let report = prepared.report.clone();
    let output = prepared.commit()?;
    print(
        mode,
        verbosity,
        &report,
        &output,
        kl.as_ref(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn print(
    mode: Mode,
    verbosity: Verbosity,
    r: &ConvertReport,
    output: &std::path::Path,
    kl: Option<&KlStats>,
    seconds: f64,
) {
    let s = &r.summary;
    let lossy = r.lossy_tensors();
    match mode {
        Mode::Json => {
            let worst: Vec<_> = lossy
                .iter()
                .take(10)
                .map(|t| json!({"name": t.name, "from": t.from, "to": t.to, "relative_rmse": t.rel_rmse}))
                .collect();
            let v = json!({
                "status": "success",
                "output_path": output.display().to_string(),
                "format": r.format.name(),
                "quantization_level": r.level,
                "file_size": r.file_size,
                "compression_ratio": if s.original_size > 0 {
                    (r.file_size as f64 / s.original_size as f64 * 10000.0).round() / 10000.0
                } else { 0.0 },
                "duration_seconds": (seconds * 100.0).round() / 100.0,
                "validation_status": "valid",
                "lossless": r.lossless(),
                "metadata": {
                    "input_format": r.input_format,
                    "input_grid": r.input_grid,
                    "target_grid": r.target_grid,
                    "original_size": s.original_size,
                    "layers_processed": s.layers,
                    "architecture": s.architecture,
                    "tensors": r.tensors.len(),
                    "lossless_tensors": r.tensors.len() - lossy.len(),
                    "mean_relative_rmse": r.mean_relative_rmse(),
                    "kl_divergence": kl.map(|k| json!({
                        "mean": k.mean_kl, "max": k.max_kl, "same_top_rate": k.same_top_rate,
                    })),
                    "worst_tensors": worst,
                }
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
        Mode::Human => {
            if verbosity == Verbosity::Quiet {
                println!("{}", output.display());
                return;
            }
            println!("{RULE}");
            println!(
                "LLM-QUANTIZE: CONVERT {} -> {} {}",
                r.input_format.to_uppercase(),
                r.format.name().to_uppercase(),
                r.level
            );
            println!("{RULE}");
            println!("  Model:      {} ({} layers)", s.name, s.layers);
            println!("  Arch:       {}", s.architecture);
            println!("  Source:     {} {}", r.input_format, r.input_grid);
            match &r.target_grid {
                Some(g) => println!("  Target:     {} {g}", r.format.name()),
                None => println!("  Target:     {} {}", r.format.name(), r.level),
            }
            println!("{RULE}");
            println!("  Output:     {}", output.display());
            println!("  Size:       {}", human_bytes(r.file_size));
            if r.lossless() {
                println!(
                    "  Lossless:   yes: all {} tensors dequantize bit for bit to the source (verified by re-reading the output)",
                    r.tensors.len()
                );
            } else {
                println!(
                    "  Lossless:   no: {} of {} tensors change, relative RMSE {:.4} (mean)",
                    lossy.len(),
                    r.tensors.len(),
                    r.mean_relative_rmse()
                );
                if let Some(k) = kl {
                    println!(
                        "  KL:         {:.6} mean, {:.4} max, same top token {:.1}%",
                        k.mean_kl,
                        k.max_kl,
                        k.same_top_rate * 100.0
                    );
                }
            }
            println!("  Duration:   {seconds:.1} s");
            if verbosity >= Verbosity::Verbose && !lossy.is_empty() {
                println!("{RULE}");
                println!("  Changed tensors (relative RMSE):");
                for t in lossy.iter().take(if verbosity == Verbosity::Debug {
                    usize::MAX
                } else {
                    10
                }) {
                    println!(
                        "    {:<40} {} -> {}  rel {:.4}",
                        t.name, t.from, t.to, t.rel_rmse
                    );
                }
            }
            println!("{RULE}");
        }
    }
}
