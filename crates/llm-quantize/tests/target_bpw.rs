//! `quantize MODEL gguf --target-bpw X` (the measured allocator) on the shared MoE
//! model, with a small measurement (2 windows of 32 tokens):
//!
//! - the real file's bits per weight are at most X, and within one step of it: no
//!   group's next point on its measured convex hull fits in the bytes left;
//! - the file's tensor types are the reported per-group choices (experts merged per
//!   stacked tensor), every expert has its own measured curve;
//! - two runs give the same bytes.

mod common;
use common::*;
use llmq_formats::gguf::GgufFile;
use llmq_pipeline::target_bpw::chooser::{lower_hull, Point};
use serde_json::Value;
use std::path::Path;

const TARGET: &str = "4.8";

fn run(dir: &Path, name: &str) -> (Value, Vec<u8>) {
    let r = lq(
        dir,
        &[
            "--format",
            "json",
            "quantize",
            shared_model("qwen3-moe").to_str().unwrap(),
            "gguf",
            "--target-bpw",
            TARGET,
            "--measure-windows",
            "2",
            "--calibration-seq-len",
            "32",
            "-o",
            ".",
            "-n",
            name,
            "--no-checkpoints",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bytes = std::fs::read(dir.join(name)).unwrap();
    (r.json(), bytes)
}

#[test]
fn meets_the_budget_within_one_step_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, bytes) = run(tmp.path(), "a.gguf");
    let meta = &j["metadata"];
    let a = &meta["allocation"];
    let target: f64 = TARGET.parse().unwrap();
    let bpw = meta["bits_per_weight"].as_f64().unwrap();
    assert!(bpw <= target, "file at {bpw} bpw over the target {target}");
    let file = j["file_size"].as_u64().unwrap();
    assert_eq!(file, bytes.len() as u64);
    assert_eq!(a["file_bytes"].as_u64().unwrap(), file);
    let left = a["budget_bytes"].as_u64().unwrap() - file;
    let cands: Vec<&str> = a["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let groups = a["groups"].as_array().unwrap();
    let mut upgrades = 0;
    for g in groups {
        let pts: Vec<Point> = g["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .zip(g["delta_kl"].as_array().unwrap())
            .map(|(b, l)| Point {
                bytes: b.as_u64().unwrap(),
                loss: l.as_f64().unwrap(),
            })
            .collect();
        assert_eq!(pts.len(), cands.len());
        assert!(pts.iter().all(|p| p.loss.is_finite() && p.loss >= 0.0));
        let chosen = cands
            .iter()
            .position(|c| *c == g["type"].as_str().unwrap())
            .unwrap();
        let hull = lower_hull(&pts);
        let k = hull
            .iter()
            .position(|&i| i == chosen)
            .expect("the choice is on the hull");
        if let Some(&next) = hull.get(k + 1) {
            upgrades += 1;
            assert!(
                pts[next].bytes - pts[chosen].bytes > left,
                "{}: the next step fits in the {left} bytes left",
                g["group"]
            );
        }
    }
    assert!(
        upgrades > 0,
        "the target should leave some group below Q8_0"
    );
    // the file holds the reported types; experts are merged per stacked tensor
    let f = GgufFile::open(tmp.path().join("a.gguf")).unwrap();
    let type_of = |label: &str| -> String {
        groups
            .iter()
            .find(|g| g["group"] == label)
            .unwrap_or_else(|| panic!("no group {label}"))["type"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for t in f.tensors() {
        let n = &t.name;
        let want = if n == "token_embd.weight" {
            type_of("embeddings")
        } else if n == "output.weight" {
            type_of("head")
        } else if let Some(rest) = n.strip_prefix("blk.") {
            let (l, tail) = rest.split_once('.').unwrap();
            if tail.starts_with("attn") && tail.ends_with("weight") && !tail.contains("norm") {
                type_of(&format!("blk.{l}.attn"))
            } else if tail.contains("_exps") {
                type_of(&format!("blk.{l}.experts"))
            } else {
                continue;
            }
        } else {
            continue;
        };
        assert_eq!(t.ggml_type.name(), want, "{n}");
    }
    let experts = a["experts"].as_array().unwrap();
    assert_eq!(experts.len(), 4 * 8, "one measured curve per expert");
    // the same bytes twice
    let (_, again) = run(tmp.path(), "b.gguf");
    assert!(bytes == again, "two runs differ");
}

#[test]
fn refuses_targets_it_cannot_meet_and_other_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = shared_model("llama");
    let llama = llama.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut a = vec!["--format", "json", "quantize", llama];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", ".", "--no-checkpoints"]);
        lq(tmp.path(), &a)
    };
    // below what all-Q3_K gives: refused before anything is measured
    let r = run(&["gguf", "--target-bpw", "2.0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.contains("smallest file"), "{}", r.stdout);
    let r = run(&["awq", "-q", "4bit", "--target-bpw", "4.5"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.contains("gguf, exl3, gptq"), "{}", r.stdout);
    let r = run(&["gptq"]);
    assert_eq!(r.code, 2, "-q is required without --target-bpw");
    // measurements that do not belong to this model
    let bad = tmp.path().join("m.json");
    std::fs::write(
        &bad,
        r#"{"candidates": ["Q3_K","Q4_K","Q5_K","Q6_K","Q8_0"], "groups": []}"#,
    )
    .unwrap();
    let r = run(&[
        "gguf",
        "--target-bpw",
        "5",
        "--measurements",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.contains("no measured curve"), "{}", r.stdout);
    assert!(files_ending(tmp.path(), ".gguf").is_empty());
    // exl3: -q and --target-bpw together, a target outside 1…8, curves of other
    // candidates; gguf cannot hold per-expert types (flag or preset)
    let r = run(&["exl3", "-q", "3.5", "--target-bpw", "3.5"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.contains("not both"), "{}", r.stdout);
    let r = run(&["exl3", "--target-bpw", "9"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run(&[
        "exl3",
        "--target-bpw",
        "3.5",
        "--measurements",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.contains("candidates"), "{}", r.stdout);
    for extra in [["--per-expert-bits", ""], ["--mixed-precision", "moe"]] {
        let mut a = vec!["gguf", "--target-bpw", "5"];
        a.extend(extra.iter().filter(|x| !x.is_empty()));
        let r = run(&a);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stdout.contains("stacked expert"), "{}", r.stdout);
    }
    let r = run(&["exl3", "--mixed-precision", "moe"]);
    assert_eq!(r.code, 2, "the preset needs --target-bpw: {}", r.stderr);
}
