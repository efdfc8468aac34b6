//! What goes to stdout: the human summary block or the contract's JSON objects
//! (quantization result, model info, error). Nothing else is printed on stdout.

use clap::ValueEnum;
use llmq_pipeline::{ModelInfo, PipelineError, QuantizeOutcome};
use serde_json::json;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Human,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
    Debug,
}

const RULE: &str = "======================================================================";

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in decimal units, as file managers show them.
pub fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.2} KB", f / 1e3)
    } else {
        format!("{n} B")
    }
}

pub fn print_quantize_result(mode: Mode, verbosity: Verbosity, o: &QuantizeOutcome, seconds: f64) {
    let r = &o.report;
    let ratio = if o.summary.original_size > 0 {
        r.file_size as f64 / o.summary.original_size as f64
    } else {
        0.0
    };
    match mode {
        Mode::Json => {
            let worst: Vec<_> = o
                .worst_tensors(10)
                .iter()
                .map(|t| json!({"name": t.name, "type": t.ty.name(), "rmse": t.rmse, "relative_rmse": t.rel_rmse}))
                .collect();
            let v = json!({
                "status": "success",
                "output_path": r.output.display().to_string(),
                "format": "gguf",
                "quantization_level": o.level,
                "file_size": r.file_size,
                "compression_ratio": (ratio * 10000.0).round() / 10000.0,
                "duration_seconds": (seconds * 100.0).round() / 100.0,
                "peak_memory_bytes": o.peak_memory_bytes,
                "validation_status": if r.validated { "valid" } else { "skipped" },
                "metadata": {
                    "original_dtype": o.summary.original_dtype,
                    "original_size": o.summary.original_size,
                    "layers_processed": o.summary.layers,
                    "architecture": o.summary.architecture,
                    "tensors": r.tensors.len(),
                    "layers_resumed": r.units_resumed,
                    "workers": r.workers,
                    "mean_rmse": r.mean_rmse(),
                    "mean_relative_rmse": o.mean_relative_rmse(),
                    "bits_per_weight": o.bits_per_weight(),
                    "worst_tensors": worst,
                }
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
        Mode::Human => {
            if verbosity == Verbosity::Quiet {
                println!("{}", r.output.display());
                return;
            }
            let s = &o.summary;
            println!("{RULE}");
            println!("LLM-QUANTIZE: GGUF {}", o.level);
            println!("{RULE}");
            println!("  Model:      {} ({} layers)", s.name, s.layers);
            println!("  Arch:       {}", s.architecture);
            println!("  Hidden:     {}", thousands(s.hidden as u64));
            match s.experts {
                Some(e) => println!("  MoE:        Yes ({e} experts)"),
                None => println!("  MoE:        No"),
            }
            println!("  Vocabulary: {}", thousands(s.vocab as u64));
            println!("{RULE}");
            println!("  Output:          {}", r.output.display());
            println!(
                "  Original size:   {} ({})",
                human_bytes(s.original_size),
                s.original_dtype
            );
            println!(
                "  Quantized size:  {} ({:.2} bpw)",
                human_bytes(r.file_size),
                o.bits_per_weight()
            );
            println!(
                "  Compression:     {:.2}x",
                if r.file_size > 0 {
                    s.original_size as f64 / r.file_size as f64
                } else {
                    0.0
                }
            );
            match r.mean_rmse() {
                Some(m) => println!(
                    "  Mean RMSE:       {m:.6} (relative {:.4})",
                    o.mean_relative_rmse().unwrap_or(0.0)
                ),
                None => println!("  Mean RMSE:       not measured (--no-validate)"),
            }
            println!("  Duration:        {seconds:.1} s");
            println!("  Peak memory:     {}", human_bytes(o.peak_memory_bytes));
            if r.units_resumed > 0 {
                println!(
                    "  Resumed:         {} of {} layers from checkpoint",
                    r.units_resumed, r.units
                );
            }
            if verbosity >= Verbosity::Verbose && r.validated {
                println!("{RULE}");
                println!("  Worst tensors (relative RMSE):");
                for t in o.worst_tensors(if verbosity == Verbosity::Debug {
                    usize::MAX
                } else {
                    10
                }) {
                    println!(
                        "    {:<40} {:<7} rmse {:.6}  rel {:.4}",
                        t.name,
                        t.ty.name(),
                        t.rmse.unwrap_or(0.0),
                        t.rel_rmse.unwrap_or(0.0)
                    );
                }
            }
            println!("{RULE}");
        }
    }
}

pub fn print_info(mode: Mode, i: &ModelInfo) {
    match mode {
        Mode::Json => println!("{}", serde_json::to_string_pretty(&i.to_json()).unwrap()),
        Mode::Human => {
            println!("Model: {}", i.model_name);
            println!("Architecture: {}", i.architecture);
            println!("Parameters: {}", thousands(i.parameter_count));
            println!("Hidden Size: {}", i.hidden_size);
            println!("Layers: {}", i.num_layers);
            println!("Heads: {}", i.num_heads);
            println!("Vocab Size: {}", i.vocab_size);
            println!("Dtype: {}", i.torch_dtype);
            if let Some(e) = i.experts {
                println!("Experts: {e}");
            }
            if let Some(f) = &i.quantization {
                println!("Format: {}", f.format);
                println!("File Type: {}", f.file_type);
                println!("Bits Per Weight: {:.3}", f.bits_per_weight);
                println!("Tensor Types:");
                for (t, n) in &f.type_counts {
                    println!("  {t:<8} {n}");
                }
            }
        }
    }
}

/// Errors: the contract's JSON object on stdout in json mode, a readable message on
/// stderr otherwise.
pub fn print_error(mode: Mode, e: &PipelineError) {
    match mode {
        Mode::Json => {
            let v = json!({
                "status": "error",
                "error_code": crate::exit_codes::exit_code(e),
                "error_type": crate::exit_codes::error_type(e),
                "message": e.to_string(),
                "suggestion": e.suggestion(),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
        Mode::Human => {
            eprintln!("[llm-quantize] error: {e}");
            if !e.suggestion().is_empty() {
                eprintln!("[llm-quantize] hint: {}", e.suggestion());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn number_formats() {
        assert_eq!(thousands(6738415616), "6,738,415,616");
        assert_eq!(thousands(12), "12");
        assert_eq!(human_bytes(3_900_000_000), "3.90 GB");
    }
}
