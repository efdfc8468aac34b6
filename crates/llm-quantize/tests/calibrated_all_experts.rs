//! `--calibrate-all-experts` (issue 17): every calibration token reaches every expert's
//! statistics, so no expert falls back for lack of tokens; the report keeps the count
//! the router sent each expert, and the block output (the next block's inputs) is
//! the routed one (the engine side is in `all_experts_forward.rs`).

mod calibrated_support;
mod common;

use calibrated_support::*;
use common::*;
use serde_json::Value;
use std::path::Path;

/// GPTQ 4-bit of the tiny Qwen3-MoE on few tokens (so routed experts starve);
/// returns the per-tensor report.
fn run(t: &Path, name: &str, extra: &[&str]) -> Vec<Value> {
    let calib = calib_file(t);
    let model = shared_model("qwen3-moe");
    let mut a = vec![
        "gptq",
        "-q",
        "4bit",
        "--calibration-data",
        calib.to_str().unwrap(),
        "--calibration-samples",
        "2",
        "--calibration-seq-len",
        "16",
        "--no-checkpoints",
        "-o",
        ".",
        "-n",
        name,
    ];
    a.extend_from_slice(extra);
    let v = quantize(t, &model, &a);
    v["metadata"]["tensors_report"].as_array().unwrap().clone()
}

fn is_fallback(r: &Value) -> bool {
    let m = r["method"].as_str().unwrap();
    m.contains("all-tokens-hessian") || m.contains("few-tokens") || m.contains("no-tokens")
}

#[test]
fn all_experts_has_no_fallback_and_keeps_the_routed_output() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let routed = run(t, "routed", &[]);
    let all = run(t, "all", &["--calibrate-all-experts"]);
    // the setup starves some experts without the option
    assert!(
        routed.iter().any(is_fallback),
        "no fallback without the option"
    );
    assert!(
        !all.iter().any(is_fallback),
        "a fallback with --calibrate-all-experts"
    );
    let total = all
        .iter()
        .filter(|r| r["name"].as_str().unwrap().contains(".mlp.experts."))
        .map(|r| {
            assert_eq!(r["method"], "gptq", "{r}");
            let note = r["note"].as_str().unwrap_or_default();
            assert!(note.contains("the router sent it"), "{r}");
            r["tokens"].as_u64().unwrap()
        })
        .max()
        .unwrap();
    // every expert's Hessian covers all tokens: the same count everywhere
    assert!(all
        .iter()
        .filter(|r| r["name"].as_str().unwrap().contains(".mlp.experts."))
        .all(|r| r["tokens"].as_u64() == Some(total)));
    // block 0's attention is calibrated before its experts: the same bytes either way
    let (mods_r, _) = unpack_all(&t.join("routed"));
    let (mods_a, _) = unpack_all(&t.join("all"));
    let attn: Vec<&String> = mods_r
        .keys()
        .filter(|k| k.starts_with("model.layers.0.self_attn."))
        .collect();
    assert!(!attn.is_empty());
    for k in attn {
        assert!(mods_r[k] == mods_a[k], "{k} differs");
    }
}
