//! What goes to stdout: the human summary block or the contract's JSON objects
//! (quantization result, model info, error). Nothing else is printed on stdout.

use clap::ValueEnum;
use llmq_pipeline::{ModelInfo, PipelineError};
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
