//! GGUF MXFP4 (GGML type 39) against the pinned llama.cpp (`LLAMA_CPP_BIN`, built by
//! scripts/peer-llama-cpp.sh):
//!
//! - `quantize qwen3-moe gguf -q MXFP4_MOE` gives every tensor the type and the bytes
//!   `llama-quantize … MXFP4_MOE` gives it (from our F16 GGUF of the same model);
//! - `llama-perplexity` on our MXFP4_MOE (qwen3-moe) and MXFP4 (llama: every Linear in
//!   MXFP4) files equals our engine's llama.cpp-protocol perplexity within 0.5 %.

mod common;
use common::*;
use llmq_formats::gguf::GgufFile;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Windows of 256 tokens: enough for a stable comparison of two engines on one file.
const CHUNKS: usize = 8;

fn quantize(dir: &Path, model: &str, level: &str) -> PathBuf {
    let out = format!("{model}-{level}");
    let r = lq(
        dir,
        &[
            "quantize",
            shared_model(model).to_str().unwrap(),
            "gguf",
            "-q",
            level,
            "-o",
            &out,
            "--no-checkpoints",
        ],
    );
    assert_eq!(r.code, 0, "{model} {level}: {}", r.stderr);
    files_ending(&dir.join(out), ".gguf").remove(0)
}

/// llama-perplexity over the first `CHUNKS` windows of 256 tokens: `(windows, estimate)`.
/// Its log is written by a background thread whose last lines have been seen missing on
/// a loaded machine, so the estimate is the final one when printed, else the running
/// estimate after the last window it printed (at least 2).
fn llama_perplexity(model: &Path) -> (usize, f64) {
    let test = shared().join("data/corpus/test.txt");
    let o = Command::new(llama_cpp_bin("llama-perplexity"))
        .args(["-m", model.to_str().unwrap(), "-f", test.to_str().unwrap()])
        .args(["-c", "256", "-b", "256", "-t", "2"])
        .args(["--chunks", &CHUNKS.to_string(), "--no-warmup"])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "llama-perplexity: {log}");
    if let Some(v) = llama_perplexity_estimate(&log, CHUNKS) {
        return (CHUNKS, v);
    }
    (2..CHUNKS)
        .rev()
        .find_map(|k| llama_perplexity_estimate(&log, k).map(|v| (k, v)))
        .unwrap_or_else(|| panic!("no estimate from llama-perplexity:\n{log}"))
}

fn compare_perplexity(dir: &Path, file: &Path) {
    let (chunks, want) = llama_perplexity(file);
    let test = shared().join("data/corpus/test.txt");
    let got = eval_llama_cpp_protocol(dir, file, &test, 256, chunks)["perplexity"]
        .as_f64()
        .unwrap();
    let rel = (got - want).abs() / want;
    eprintln!(
        "{}: llama-perplexity {want:.4}, ours {got:.4} ({chunks} windows), relative {rel:.2e}",
        file.display()
    );
    assert!(
        rel < 5e-3,
        "{}: ours {got} vs llama-perplexity {want}",
        file.display()
    );
}

#[test]
fn mxfp4_moe_matches_llama_quantize_and_llama_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let ours = quantize(dir.path(), "qwen3-moe", "MXFP4_MOE");
    let f16 = quantize(dir.path(), "qwen3-moe", "F16");
    let theirs = dir.path().join("theirs.gguf");
    let o = Command::new(llama_cpp_bin("llama-quantize"))
        .arg(&f16)
        .arg(&theirs)
        .args(["MXFP4_MOE", "2"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "llama-quantize: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (a, b) = (
        GgufFile::open(&ours).unwrap(),
        GgufFile::open(&theirs).unwrap(),
    );
    assert_eq!(a.tensors().len(), b.tensors().len());
    let mut mxfp4 = 0;
    for t in a.tensors() {
        let u = b
            .tensors()
            .iter()
            .find(|u| u.name == t.name)
            .unwrap_or_else(|| panic!("{} missing in llama-quantize's file", t.name));
        assert_eq!(t.ggml_type, u.ggml_type, "{}", t.name);
        assert!(
            a.tensor_bytes(t) == b.tensor_bytes(u),
            "{} ({}) differs from llama-quantize's bytes",
            t.name,
            t.ggml_type.name()
        );
        mxfp4 += usize::from(t.ggml_type == llmq_formats::GgmlType::MXFP4);
    }
    assert!(mxfp4 >= 3, "only {mxfp4} MXFP4 tensors");
    compare_perplexity(dir.path(), &ours);
}

#[test]
fn dense_mxfp4_perplexity_matches_llama_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let ours = quantize(dir.path(), "llama", "MXFP4");
    let g = GgufFile::open(&ours).unwrap();
    let n = g
        .tensors()
        .iter()
        .filter(|t| t.ggml_type == llmq_formats::GgmlType::MXFP4)
        .count();
    assert!(n >= 7, "only {n} MXFP4 tensors");
    compare_perplexity(dir.path(), &ours);
}
