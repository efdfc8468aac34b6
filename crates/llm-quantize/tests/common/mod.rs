//! Helpers for the end-to-end tests: locating the binary, the shared models and
//! llama.cpp's tools, and running commands.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llm-quantize"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `shared/` next to the repository (as CI lays it out). Panics with a clear message
/// when absent: these tests must not pass by skipping.
pub fn shared() -> PathBuf {
    let p = repo_root().join("../shared");
    assert!(
        p.join("models").is_dir(),
        "shared/ not found at {}: the tests need ../shared/models",
        p.display()
    );
    p
}

pub fn shared_model(name: &str) -> PathBuf {
    shared().join("models").join(name)
}

/// The ten shared models.
pub const MODELS: &[&str] = &[
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma3",
    "phi3",
    "mixtral",
    "qwen3-moe",
    "deepseek-v3",
    "glm4-moe-lite",
];

/// llama.cpp's tool folder: $LLAMA_CPP_BIN, else the cache scripts/peer-llama-cpp.sh fills.
pub fn llama_cpp_bin(tool: &str) -> PathBuf {
    let dir = std::env::var_os("LLAMA_CPP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/llm-quantize/peer/llama.cpp-0.3.36/bin")
        });
    let p = dir.join(tool);
    assert!(
        p.is_file(),
        "{} missing: run `bash scripts/peer-llama-cpp.sh` (or set LLAMA_CPP_BIN)",
        p.display()
    );
    p
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn output(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Run llm-quantize with `args` in `cwd`, with checkpoints under cwd.
pub fn lq(cwd: &Path, args: &[&str]) -> Run {
    lq_env(cwd, args, &[])
}

pub fn lq_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(bin());
    c.current_dir(cwd)
        .args(args)
        .env_remove("HF_TOKEN")
        .env_remove("LLM_QUANTIZE_CHECKPOINT_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    output(c.output().unwrap())
}

/// Copy a model folder into `dst` (writable), returning the new folder.
pub fn copy_model(src: &Path, dst: &Path) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst.to_path_buf()
}

/// Files in a folder whose names end with `suffix`.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.to_string_lossy().ends_with(suffix));
    v
}

/// llama-perplexity's estimate from its log: the `Final estimate: PPL = …` line, else the
/// running estimate printed after the last of `chunks` chunks (`[chunks]value`, the same
/// number to the 4 decimals both are printed with). Its log is written by a background
/// thread, and on a loaded machine the final line has been seen missing.
pub fn llama_perplexity_estimate(log: &str, chunks: usize) -> Option<f64> {
    if let Some(v) = log.lines().find_map(|l| {
        let rest = l.split("Final estimate: PPL = ").nth(1)?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    }) {
        return Some(v);
    }
    let tag = format!("[{chunks}]");
    let at = log.rfind(&tag)? + tag.len();
    let num: String = log[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

/// `eval MODEL --dataset TEXT --ppl-protocol llama-cpp` over `chunks` windows of `ctx`
/// tokens (llama-perplexity's protocol): the JSON result, after checking it exited 0.
pub fn eval_llama_cpp_protocol(
    cwd: &Path,
    model: &Path,
    dataset: &Path,
    ctx: usize,
    chunks: usize,
) -> serde_json::Value {
    let r = lq(
        cwd,
        &[
            "eval",
            model.to_str().unwrap(),
            "--dataset",
            dataset.to_str().unwrap(),
            "--ppl-protocol",
            "llama-cpp",
            "--max-length",
            &ctx.to_string(),
            "--samples",
            &chunks.to_string(),
            "--format",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "eval {}: {}", model.display(), r.stderr);
    r.json()
}
