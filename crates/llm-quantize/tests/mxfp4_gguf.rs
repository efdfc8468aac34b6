//! GGUF MXFP4 (GGML type 39) against the pinned llama.cpp (`LLAMA_CPP_BIN`, built by
//! scripts/peer-llama-cpp.sh):
//!
//! - `quantize qwen3-moe gguf -q MXFP4_MOE` gives every tensor the type and the bytes
//!   `llama-quantize … MXFP4_MOE` gives it (from our F16 GGUF of the same model);
//! - `llama-perplexity` on our MXFP4_MOE (qwen3-moe) and MXFP4 (llama: every Linear in
//!   MXFP4) files equals our engine's llama.cpp-protocol perplexity within 0.5 %;
//! - the same for our NVFP4 file (GGML type 40, llama: every Linear in NVFP4), and
//!   gguf-py (`GGUFReader` + `gguf.quants.dequantize`, the venv's python,
//!   `LLMQ_HFQUANT_PYTHON`) reads every NVFP4 tensor of it to exactly our dequantized
//!   values.

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

/// The test venv's python (gguf-py 0.19 knows NVFP4).
fn venv_python() -> PathBuf {
    std::env::var_os("LLMQ_HFQUANT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/llm-quantize/py-test-deps/venv/bin/python")
        })
}

/// gguf-py's dequantized values of every NVFP4 tensor of `file`, written as
/// `DIR/NAME.f32`; returns the tensor names it wrote.
fn gguf_py_nvfp4(file: &Path, dir: &Path) -> Vec<String> {
    let script = r#"
import sys, numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
for t in r.tensors:
    if t.tensor_type == GGMLQuantizationType.NVFP4:
        v = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
        v.astype("<f4").tofile(f"{sys.argv[2]}/{t.name}.f32")
        print(t.name)
"#;
    let o = Command::new(venv_python())
        .args(["-c", script])
        .arg(file)
        .arg(dir)
        .output()
        .expect("run the venv's python");
    assert!(
        o.status.success(),
        "gguf-py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn dense_nvfp4_perplexity_matches_llama_perplexity_and_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    let ours = quantize(dir.path(), "llama", "NVFP4");
    let g = GgufFile::open(&ours).unwrap();
    let nv: Vec<_> = g
        .tensors()
        .iter()
        .filter(|t| t.ggml_type == llmq_formats::GgmlType::NVFP4)
        .collect();
    assert!(nv.len() >= 7, "only {} NVFP4 tensors", nv.len());
    let py_dir = dir.path().join("gguf-py");
    std::fs::create_dir(&py_dir).unwrap();
    let mut names = gguf_py_nvfp4(&ours, &py_dir);
    names.sort();
    let mut want: Vec<String> = nv.iter().map(|t| t.name.clone()).collect();
    want.sort();
    assert_eq!(names, want, "gguf-py saw other NVFP4 tensors");
    for t in &nv {
        let bytes = g.tensor_bytes(t);
        let mut mine = vec![0.0f32; bytes.len() / 36 * 64];
        llmq_quant::dequantize(llmq_formats::GgmlType::NVFP4, bytes, &mut mine).unwrap();
        let theirs: Vec<f32> = std::fs::read(py_dir.join(format!("{}.f32", t.name)))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(theirs.len(), mine.len(), "{}", t.name);
        let same = mine
            .iter()
            .zip(&theirs)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{}: gguf-py's values differ from ours", t.name);
        assert!(mine.iter().any(|&v| v != 0.0), "{} is all zeros", t.name);
    }
    compare_perplexity(dir.path(), &ours);
}
