//! The command-line contract: result JSON fields, human summary, progress on stderr,
//! exit codes, `info`, outputs named and renamed only when complete.

mod common;
use common::*;

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let r = lq(dir.path(), &["--version"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("llm-quantize "), "{}", r.stdout);
    let r = lq(dir.path(), &["quantize", "--help"]);
    assert_eq!(r.code, 0);
    for flag in [
        "--quant-level",
        "--output-dir",
        "--output-name",
        "--no-checkpoints",
        "--checkpoint-dir",
        "--resume",
        "--no-validate",
        "--max-workers",
        "--ram-budget-gb",
        "--token",
    ] {
        assert!(r.stdout.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn quantize_json_result_has_every_contract_field() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("llama");
    let r = lq(
        dir.path(),
        &[
            "--format",
            "json",
            "quantize",
            model.to_str().unwrap(),
            "gguf",
            "-q",
            "Q4_K_M",
            "-o",
            "out",
        ],
    );
    assert_eq!(r.code, 0, "stderr:\n{}", r.stderr);
    let v = r.json();
    assert_eq!(v["status"], "success");
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["quantization_level"], "Q4_K_M");
    let out = std::path::PathBuf::from(v["output_path"].as_str().unwrap());
    assert_eq!(out.file_name().unwrap(), "llama-Q4_K_M.gguf");
    let size = std::fs::metadata(dir.path().join("out/llama-Q4_K_M.gguf"))
        .unwrap()
        .len();
    assert_eq!(v["file_size"].as_u64().unwrap(), size);
    let orig = v["metadata"]["original_size"].as_u64().unwrap();
    assert!(orig > size);
    let ratio = v["compression_ratio"].as_f64().unwrap();
    assert!((ratio - size as f64 / orig as f64).abs() < 1e-3, "{ratio}");
    assert!(v["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(v["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["validation_status"], "valid");
    assert_eq!(v["metadata"]["original_dtype"], "bfloat16");
    assert_eq!(v["metadata"]["layers_processed"], 4);
    let mean = v["metadata"]["mean_relative_rmse"].as_f64().unwrap();
    assert!(mean > 0.0 && mean < 0.2, "{mean}");
    // Nothing half-written or left behind.
    assert!(files_ending(&dir.path().join("out"), ".tmp").is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.path().join(".checkpoint"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "checkpoint left behind: {left:?}");
    // every tensor has a report line with its type and method
    let report = v["metadata"]["tensors_report"].as_array().unwrap();
    assert_eq!(
        report.len(),
        v["metadata"]["tensors"].as_u64().unwrap() as usize
    );
    assert!(report
        .iter()
        .all(|t| t["type"].is_string() && t["method"].is_string()));
    // Results alone on stdout: the progress went to stderr.
    assert!(r.stderr.contains("[llm-quantize]"), "{}", r.stderr);
}

#[test]
fn human_summary_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("qwen3-moe");
    let r = lq(
        dir.path(),
        &[
            "quantize",
            model.to_str().unwrap(),
            "gguf",
            "-q",
            "Q8_0",
            "-n",
            "m.gguf",
            "--verbosity",
            "verbose",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for s in [
        "Model:",
        "Hidden:",
        "MoE:        Yes (8 experts)",
        "Vocabulary: 4,096",
        "Original size:",
        "Quantized size:",
        "Compression:",
        "Mean RMSE:",
        "Worst tensors",
    ] {
        assert!(r.stdout.contains(s), "summary lacks {s:?}:\n{}", r.stdout);
    }
    assert!(r.stderr.contains("Loading model"), "{}", r.stderr);

    let r = lq(
        dir.path(),
        &["--format", "json", "info", model.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["architecture"], "Qwen3MoeForCausalLM");
    assert_eq!(v["num_layers"], 4);
    assert_eq!(v["hidden_size"], 256);
    assert_eq!(v["num_heads"], 4);
    assert_eq!(v["vocab_size"], 4096);
    assert_eq!(v["torch_dtype"], "bfloat16");
    assert!(v["parameter_count"].as_u64().unwrap() > 9_000_000);

    let r = lq(dir.path(), &["--format", "json", "info", "m.gguf"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["num_layers"], 4);
    let bpw = v["bits_per_weight"].as_f64().unwrap();
    assert!(bpw > 8.0 && bpw < 9.0, "{bpw}");
    assert!(v["tensor_types"]["Q8_0"].as_u64().unwrap() > 0);
}

#[test]
fn unknown_level_and_format_are_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("llama");
    let r = lq(
        dir.path(),
        &[
            "--format",
            "json",
            "quantize",
            model.to_str().unwrap(),
            "gguf",
            "-q",
            "Q9_K",
        ],
    );
    assert_eq!(r.code, 2);
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["error_code"], 2);
    assert!(v["message"].as_str().unwrap().contains("Q9_K"));
    assert!(!v["suggestion"].as_str().unwrap().is_empty());
    let r = lq(
        dir.path(),
        &["quantize", model.to_str().unwrap(), "zip", "-q", "Q4_K_M"],
    );
    assert_eq!(r.code, 2);
    let r = lq(dir.path(), &["quantize", model.to_str().unwrap(), "gguf"]);
    assert_eq!(r.code, 2, "missing -q must be an argument error");
    assert!(files_ending(dir.path(), ".gguf").is_empty());
}
