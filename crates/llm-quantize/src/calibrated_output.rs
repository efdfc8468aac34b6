//! stdout of `quantize MODEL gptq|awq|compressed-tensors`: the contract's JSON result
//! object (with a per-tensor error report under `metadata.tensors_report`), or the
//! human summary block.

use crate::output::{human_bytes, thousands, Mode, Verbosity};
use llmq_pipeline::CalibratedOutcome;
use serde_json::json;

const RULE: &str = "======================================================================";

pub fn print(mode: Mode, verbosity: Verbosity, o: &CalibratedOutcome, seconds: f64) {
    let s = &o.summary;
    let ratio = if s.original_size > 0 {
        o.file_size as f64 / s.original_size as f64
    } else {
        0.0
    };
    match mode {
        Mode::Json => {
            let report: Vec<_> = o
                .tensors
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "shape": [t.out_features, t.in_features],
                        "method": t.method,
                        "tokens": t.tokens,
                        "rmse": t.rmse,
                        "relative_rmse": t.rel_rmse,
                        "damp_percent": t.damp_percent,
                        "loss": t.loss,
                        "awq_ratio": t.awq_ratio,
                        "note": t.note,
                    })
                })
                .collect();
            let v = json!({
                "status": "success",
                "output_path": o.output.display().to_string(),
                "format": o.format.name(),
                "quantization_level": o.level,
                "file_size": o.file_size,
                "compression_ratio": (ratio * 10000.0).round() / 10000.0,
                "duration_seconds": (seconds * 100.0).round() / 100.0,
                "peak_memory_bytes": o.peak_memory_bytes,
                "validation_status": if o.validated { "valid" } else { "skipped" },
                "metadata": {
                    "original_dtype": s.original_dtype,
                    "original_size": s.original_size,
                    "layers_processed": s.layers,
                    "layers_resumed": o.layers_resumed,
                    "architecture": s.architecture,
                    "method": o.method.name(),
                    "calibration": {
                        "source": o.calibration_source,
                        "samples": o.calibration_samples,
                        "tokens": o.calibration_tokens,
                        "seq_len": o.seq_len,
                        "activations_spilled_to_disk": o.spilled_to_disk,
                        "notes": o.notes,
                    },
                    "tensors": o.tensors.len(),
                    "mean_rmse": o.mean_rmse(),
                    "mean_relative_rmse": o.mean_relative_rmse(),
                    "bits_per_weight": o.bits_per_weight(),
                    "tensors_report": report,
                }
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
        Mode::Human => {
            if verbosity == Verbosity::Quiet {
                println!("{}", o.output.display());
                return;
            }
            println!("{RULE}");
            println!(
                "LLM-QUANTIZE: {} {} ({})",
                o.format.name().to_uppercase(),
                o.level,
                o.method.name()
            );
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
            println!("  Output:          {}", o.output.display());
            println!(
                "  Calibration:     {} samples x {} tokens ({} tokens, {})",
                o.calibration_samples, o.seq_len, o.calibration_tokens, o.calibration_source
            );
            println!(
                "  Original size:   {} ({})",
                human_bytes(s.original_size),
                s.original_dtype
            );
            println!(
                "  Quantized size:  {} ({:.2} bpw)",
                human_bytes(o.file_size),
                o.bits_per_weight()
            );
            if let Some(m) = o.mean_rmse() {
                println!(
                    "  Mean RMSE:       {m:.6} (relative {:.4})",
                    o.mean_relative_rmse().unwrap_or(0.0)
                );
            }
            let fallbacks: Vec<_> = o.tensors.iter().filter(|t| t.note.is_some()).collect();
            if !fallbacks.is_empty() {
                println!("  Fallbacks:       {} tensors", fallbacks.len());
                for t in fallbacks.iter().take(10) {
                    println!(
                        "    {} [{}]: {}",
                        t.name,
                        t.method,
                        t.note.as_deref().unwrap_or("")
                    );
                }
            }
            for n in &o.notes {
                println!("  Note:            {n}");
            }
            println!("  Duration:        {seconds:.1} s");
            println!("  Peak memory:     {}", human_bytes(o.peak_memory_bytes));
            if o.layers_resumed > 0 {
                println!(
                    "  Resumed:         {} of {} layers from checkpoint",
                    o.layers_resumed, o.layers
                );
            }
            println!("{RULE}");
        }
    }
}
