//! Crash safety: SIGKILL partway through, then `--resume` gives a file byte-identical
//! to an uninterrupted run; a resume against other options is refused (exit 7).

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Layers recorded in the GGUF checkpoint (`quantize-<hash>/state.json`) under `cp_dir`.
fn units_done(cp_dir: &std::path::Path) -> usize {
    let states = std::fs::read_dir(cp_dir)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("quantize-"))
                .map(|e| e.path().join("state.json"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for f in states {
        if let Ok(t) = std::fs::read_to_string(&f) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                return v["units_done"].as_array().map(|a| a.len()).unwrap_or(0);
            }
        }
    }
    0
}

#[test]
fn sigkill_then_resume_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("mixtral");
    let m = model.to_str().unwrap();

    let r = lq(
        dir.path(),
        &[
            "quantize",
            m,
            "gguf",
            "-q",
            "Q4_K_M",
            "-o",
            "ref",
            "--no-checkpoints",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let reference = std::fs::read(dir.path().join("ref/mixtral-Q4_K_M.gguf")).unwrap();

    // Slow each layer down so the kill lands in the middle.
    let mut child = std::process::Command::new(bin())
        .current_dir(dir.path())
        .args([
            "quantize",
            m,
            "gguf",
            "-q",
            "Q4_K_M",
            "-o",
            "out",
            "--max-workers",
            "1",
        ])
        .env("LLM_QUANTIZE_TEST_UNIT_DELAY_MS", "400")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cp = dir.path().join(".checkpoint");
    let t0 = Instant::now();
    while units_done(&cp) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no progress in the checkpoint"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let out = dir.path().join("out/mixtral-Q4_K_M.gguf");
    assert!(!out.exists(), "a killed run must not leave the final name");
    assert_eq!(files_ending(&dir.path().join("out"), ".tmp").len(), 1);

    // Other options: refused, and the partial state is kept.
    let r = lq(
        dir.path(),
        &[
            "--format",
            "json",
            "quantize",
            m,
            "gguf",
            "-q",
            "Q5_K_M",
            "-o",
            "out",
            "-n",
            "mixtral-Q4_K_M.gguf",
            "--resume",
        ],
    );
    assert_eq!(r.code, 7, "{}\n{}", r.stdout, r.stderr);

    let r = lq(
        dir.path(),
        &[
            "--format", "json", "quantize", m, "gguf", "-q", "Q4_K_M", "-o", "out", "--resume",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert!(
        v["metadata"]["layers_resumed"].as_u64().unwrap() >= 2,
        "{v}"
    );
    let resumed = std::fs::read(&out).unwrap();
    assert!(
        resumed == reference,
        "resumed output differs from an uninterrupted run"
    );
    assert!(files_ending(&dir.path().join("out"), ".tmp").is_empty());
}

#[test]
fn resume_without_checkpoint_is_a_checkpoint_error() {
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
            "--resume",
        ],
    );
    assert_eq!(r.code, 7, "{}", r.stdout);
    assert_eq!(r.json()["error_type"], "CheckpointError");
}

#[test]
fn output_is_independent_of_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("qwen2");
    let m = model.to_str().unwrap();
    let a = lq(
        dir.path(),
        &[
            "quantize",
            m,
            "gguf",
            "-q",
            "Q3_K_M",
            "-o",
            "a",
            "--max-workers",
            "1",
        ],
    );
    let b = lq(
        dir.path(),
        &[
            "quantize",
            m,
            "gguf",
            "-q",
            "Q3_K_M",
            "-o",
            "b",
            "--max-workers",
            "4",
        ],
    );
    assert_eq!((a.code, b.code), (0, 0), "{}{}", a.stderr, b.stderr);
    let fa = std::fs::read(dir.path().join("a/qwen2-Q3_K_M.gguf")).unwrap();
    let fb = std::fs::read(dir.path().join("b/qwen2-Q3_K_M.gguf")).unwrap();
    assert!(fa == fb, "output depends on the number of workers");
}
