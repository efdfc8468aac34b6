//! llama.cpp as the peer (built by scripts/peer-llama-cpp.sh from the pinned
//! llama-cpp-python sdist). For every shared model: llama.cpp loads the F16 GGUF we
//! write and computes its perplexity on shared/data/corpus/test.txt; for Q4_K_M,
//! Q3_K_M and Q2_K our file (quantized from that same F16 GGUF) has perplexity no
//! worse than 1.01× llama-quantize's own output, and gives every tensor the type
//! llama-quantize gives it.

mod common;
use common::*;
use llmq_formats::gguf::GgufFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Windows of 256 tokens scored by llama-perplexity: enough to compare two files of one
/// model (their ratio is what is checked, and most tensors are byte-identical).
const CHUNKS: usize = 40;

/// llama-perplexity's final estimate over the first `CHUNKS` windows of 256 tokens. Its log
/// is written by a background thread; on a loaded machine the last lines have been
/// seen missing, so the run is repeated (at most 3 times) until the estimate appears.
fn perplexity(model: &Path) -> f64 {
    let test = shared().join("data/corpus/test.txt");
    let chunks = CHUNKS.to_string();
    let mut last = String::new();
    for _ in 0..3 {
        let o = Command::new(llama_cpp_bin("llama-perplexity"))
            .args([
                "-m",
                model.to_str().unwrap(),
                "-f",
                test.to_str().unwrap(),
                "-c",
                "256",
                "-b",
                "256",
                "-t",
                "2",
                "--chunks",
                chunks.as_str(),
                "--no-warmup",
            ])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "llama-perplexity failed on {}:\n{}",
            model.display(),
            tail(&text)
        );
        if let Some(v) = llama_perplexity_estimate(&text, CHUNKS) {
            assert!(v.is_finite() && v > 1.0, "{v}");
            return v;
        }
        last = text;
    }
    panic!(
        "no final estimate for {} in 3 runs:\n{}",
        model.display(),
        tail(&last)
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn tensor_types(p: &Path) -> BTreeMap<String, String> {
    let f = GgufFile::open(p).unwrap();
    f.tensors()
        .iter()
        .map(|t| (t.name.clone(), t.ggml_type.name().to_string()))
        .collect()
}

/// How many tensors hold exactly the same bytes in both files.
fn identical_tensors(a: &Path, b: &Path) -> (usize, usize) {
    let (fa, fb) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    let same = fa
        .tensors()
        .iter()
        .filter(|t| {
            fb.tensor(&t.name)
                .is_some_and(|u| fb.tensor_bytes(u) == fa.tensor_bytes(t))
        })
        .count();
    (same, fa.tensors().len())
}

fn llama_quantize(src: &Path, dst: &Path, level: &str) {
    let o = Command::new(llama_cpp_bin("llama-quantize"))
        .args([src.to_str().unwrap(), dst.to_str().unwrap(), level, "2"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "llama-quantize {level} failed:\n{}",
        tail(&String::from_utf8_lossy(&o.stderr))
    );
}

#[test]
fn llama_cpp_loads_ours_and_our_kquants_match_its_quality() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for name in MODELS {
        let model = shared_model(name);
        let wd = dir.path().join(name);
        std::fs::create_dir_all(&wd).unwrap();
        let r = lq(
            &wd,
            &[
                "quantize",
                model.to_str().unwrap(),
                "gguf",
                "-q",
                "F16",
                "-n",
                "f16.gguf",
                "--no-checkpoints",
            ],
        );
        assert_eq!(r.code, 0, "{name}: F16 export failed:\n{}", r.stderr);
        let f16 = wd.join("f16.gguf");
        let ppl_f16 = perplexity(&f16);
        report.push(format!("{name:14} F16    ours {ppl_f16:9.4}"));
        eprintln!("{}", report.last().unwrap());
        for level in ["Q4_K_M", "Q3_K_M", "Q2_K"] {
            let theirs = wd.join(format!("peer-{level}.gguf"));
            llama_quantize(&f16, &theirs, level);
            let r = lq(
                &wd,
                &[
                    "quantize",
                    f16.to_str().unwrap(),
                    "gguf",
                    "-q",
                    level,
                    "-n",
                    &format!("ours-{level}.gguf"),
                    "--no-checkpoints",
                ],
            );
            assert_eq!(r.code, 0, "{name} {level}: failed:\n{}", r.stderr);
            let ours = wd.join(format!("ours-{level}.gguf"));
            let (tt, to) = (tensor_types(&theirs), tensor_types(&ours));
            for (t, ty) in &tt {
                if to.get(t) != Some(ty) {
                    failures.push(format!(
                        "{name} {level}: {t} is {:?} in ours, {ty} in llama-quantize's",
                        to.get(t)
                    ));
                }
            }
            let (p_ours, p_theirs) = (perplexity(&ours), perplexity(&theirs));
            let ratio = p_ours / p_theirs;
            let same = identical_tensors(&ours, &theirs);
            report.push(format!(
                "{name:14} {level:6} ours {p_ours:9.4}  llama.cpp {p_theirs:9.4}  ratio {ratio:.4}  byte-identical tensors {}/{}",
                same.0, same.1
            ));
            eprintln!("{}", report.last().unwrap());
            if ratio > 1.01 {
                failures.push(format!("{name} {level}: perplexity {p_ours:.4} vs llama.cpp {p_theirs:.4} (ratio {ratio:.4} > 1.01)"));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
