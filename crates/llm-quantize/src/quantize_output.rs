//! stdout of `quantize`, the same for every output format: the contract's JSON result
//! object (with `worst_tensors` and the per-tensor error report under
//! `metadata.tensors_report`), or the human summary block.

use crate::output::{human_bytes, thousands, Mode, Verbosity};
use llmq_pipeline::{QuantizeOutcome, TensorReport};
use serde_json::{json, Value};

const RULE: &str = "======================================================================";

fn report_line(t: &TensorReport) -> Value {
    let mut v = json!({
        "name": t.name,
        "shape": t.shape,
        "type": t.quant,
        "method": t.method,
        "rmse": t.rmse,
        "relative_rmse": t.rel_rmse,
    });
    if let Some(c) = &t.calibration {
        v["tokens"] = json!(c.tokens);
        v["damp_percent"] = json!(c.damp_percent);
        v["loss"] = json!(c.loss);
        v["awq_ratio"] = json!(c.awq_ratio);
        v["note"] = json!(c.note);
        if let Some(p) = c.proxy_err {
            v["proxy_error"] = json!(p);
        }
    }
    v
}

/// `metadata.allocation` of a `--target-bpw` run: per group the chosen type and the
/// measured curve (bytes and ΔKL at each candidate).
fn allocation_json(a: &llmq_pipeline::target_bpw::AllocationReport) -> Value {
    use llmq_pipeline::target_bpw::SizeUnit;
    // GGUF counts the whole file's bytes, EXL3 the decoder Linears' bits
    let (size, budget, total) = match a.unit {
        SizeUnit::FileBytes => ("bytes", "budget_bytes", "file_bytes"),
        SizeUnit::DecoderBits => ("bits", "budget_bits", "decoder_bits"),
    };
    let group = |g: &llmq_pipeline::target_bpw::GroupChoice| json!({"group": g.label, "type": g.chosen, size: g.bytes, "delta_kl": g.delta_kl});
    let mut v = json!({
        "target_bpw": a.target_bpw,
        budget: a.budget_bytes,
        total: a.file_bytes,
        "candidates": a.candidates,
        "calibration": {"source": a.calibration_source, "windows": a.windows, "tokens": a.tokens},
        "predicted_delta_kl": a.predicted_delta_kl,
        "groups": a.groups.iter().map(group).collect::<Vec<_>>(),
    });
    if !a.experts.is_empty() {
        v["experts"] = a.experts.iter().map(group).collect();
    }
    v
}

fn result_json(o: &QuantizeOutcome, seconds: f64) -> Value {
    let s = &o.summary;
    let ratio = if s.original_size > 0 {
        o.file_size as f64 / s.original_size as f64
    } else {
        0.0
    };
    let worst: Vec<_> = o
        .worst_tensors(10)
        .iter()
        .map(|t| json!({"name": t.name, "type": t.quant, "rmse": t.rmse, "relative_rmse": t.rel_rmse}))
        .collect();
    let mut meta = json!({
        "original_dtype": s.original_dtype,
        "original_size": s.original_size,
        "layers_processed": s.layers,
        "layers_resumed": o.units_resumed,
        "architecture": s.architecture,
        "method": o.method,
        "tensors": o.tensors.len(),
        "mean_rmse": o.mean_rmse(),
        "mean_relative_rmse": o.mean_relative_rmse(),
        "bits_per_weight": o.bits_per_weight(),
        "worst_tensors": worst,
        "tensors_report": o.tensors.iter().map(report_line).collect::<Vec<_>>(),
    });
    if let Some(w) = o.workers {
        meta["workers"] = json!(w);
    }
    if let Some(a) = &o.allocation {
        meta["allocation"] = allocation_json(a);
    }
    if let Some(c) = &o.calibration {
        meta["calibration"] = json!({
            "source": c.source,
            "samples": c.samples,
            "tokens": c.tokens,
            "seq_len": c.seq_len,
            "activations_spilled_to_disk": c.activations_spilled_to_disk,
            "notes": c.notes,
        });
    }
    json!({
        "status": "success",
        "output_path": o.output.display().to_string(),
        "format": o.format,
        "quantization_level": o.level,
        "file_size": o.file_size,
        "compression_ratio": (ratio * 10000.0).round() / 10000.0,
        "duration_seconds": (seconds * 100.0).round() / 100.0,
        "peak_memory_bytes": o.peak_memory_bytes,
        "validation_status": if o.validated { "valid" } else { "skipped" },
        "metadata": meta,
    })
}

pub fn print(mode: Mode, verbosity: Verbosity, o: &QuantizeOutcome, seconds: f64) {
    match mode {
        Mode::Json => println!(
            "{}",
            serde_json::to_string_pretty(&result_json(o, seconds)).unwrap()
        ),
        Mode::Human if verbosity == Verbosity::Quiet => println!("{}", o.output.display()),
        Mode::Human => print_human(verbosity, o, seconds),
    }
}

fn print_human(verbosity: Verbosity, o: &QuantizeOutcome, seconds: f64) {
    let s = &o.summary;
    println!("{RULE}");
    println!(
        "LLM-QUANTIZE: {} {} ({})",
        o.format.to_uppercase(),
        o.level,
        o.method
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
    if let Some(c) = &o.calibration {
        println!(
            "  Calibration:     {} samples x {} tokens ({} tokens, {})",
            c.samples, c.seq_len, c.tokens, c.source
        );
    }
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
    println!(
        "  Compression:     {:.2}x",
        if o.file_size > 0 {
            s.original_size as f64 / o.file_size as f64
        } else {
            0.0
        }
    );
    match o.mean_rmse() {
        Some(m) => println!(
            "  Mean RMSE:       {m:.6} (relative {:.4})",
            o.mean_relative_rmse().unwrap_or(0.0)
        ),
        None => println!("  Mean RMSE:       not measured (--no-validate)"),
    }
    let fallbacks: Vec<_> = o
        .tensors
        .iter()
        .filter(|t| t.calibration.as_ref().is_some_and(|c| c.note.is_some()))
        .collect();
    if !fallbacks.is_empty() {
        println!("  Fallbacks:       {} tensors", fallbacks.len());
        for t in fallbacks.iter().take(10) {
            let note = t.calibration.as_ref().and_then(|c| c.note.as_deref());
            println!("    {} [{}]: {}", t.name, t.method, note.unwrap_or(""));
        }
    }
    if let Some(c) = &o.calibration {
        for n in &c.notes {
            println!("  Note:            {n}");
        }
    }
    if let Some(a) = &o.allocation {
        println!(
            "  Allocation:      {} groups measured on {} tokens, predicted ΔKL {:.5}",
            a.groups.len(),
            a.tokens,
            a.predicted_delta_kl
        );
        for g in &a.groups {
            println!("    {:<24} {}", g.label, g.chosen);
        }
    }
    println!("  Duration:        {seconds:.1} s");
    println!("  Peak memory:     {}", human_bytes(o.peak_memory_bytes));
    if o.units_resumed > 0 {
        println!(
            "  Resumed:         {} of {} layers from checkpoint",
            o.units_resumed, o.units
        );
    }
    if verbosity >= Verbosity::Verbose && o.validated {
        println!("{RULE}");
        println!("  Worst tensors (relative RMSE):");
        let n = if verbosity == Verbosity::Debug {
            usize::MAX
        } else {
            10
        };
        for t in o.worst_tensors(n) {
            println!(
                "    {:<40} {:<7} rmse {:.6}  rel {:.4}",
                t.name,
                t.quant,
                t.rmse.unwrap_or(0.0),
                t.rel_rmse.unwrap_or(0.0)
            );
        }
    }
    println!("{RULE}");
}
