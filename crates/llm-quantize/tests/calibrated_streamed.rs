//! Layer-streamed calibration (issue 17): the engine holds one block at a time. Its
//! output is byte-identical to calibrating on the whole model loaded at once (kept
//! behind a test hook as the reference), its peak RSS is lower by at least the
//! blocks it does not hold, and a RAM budget that cannot hold a block is exit 5.

mod calibrated_support;
mod common;

use calibrated_support::*;
use common::*;
use llmq_formats::safetensors::SafetensorsModel;
use std::collections::BTreeMap;
use std::path::Path;

/// Bytes of each block's tensors as stored (`model.layers.N.*`).
fn block_bytes(model: &Path) -> Vec<u64> {
    let st = SafetensorsModel::open(model).unwrap();
    let mut per: BTreeMap<usize, u64> = BTreeMap::new();
    for t in st.tensors() {
        let Some(rest) = t.name.strip_prefix("model.layers.") else {
            continue;
        };
        let n: usize = rest.split('.').next().unwrap().parse().unwrap();
        *per.entry(n).or_default() += t.nbytes() as u64;
    }
    per.into_values().collect()
}

/// Quantizes `model` with `args` (streamed, or the whole model with the hook) into
/// `cwd/name`; returns the reported peak RSS.
fn run(cwd: &Path, model: &Path, args: &[&str], name: &str, whole: bool) -> u64 {
    let calib = calib_file(cwd);
    let mut a = vec!["--format", "json", "quantize", model.to_str().unwrap()];
    a.extend_from_slice(args);
    a.extend([
        "--calibration-data",
        calib.to_str().unwrap(),
        "--calibration-samples",
        "8",
        "--calibration-seq-len",
        "128",
        "--no-checkpoints",
        "-o",
        ".",
        "-n",
        name,
    ]);
    let env: &[(&str, &str)] = if whole {
        &[("LLM_QUANTIZE_TEST_WHOLE_MODEL", "1")]
    } else {
        &[]
    };
    let r = lq_env(cwd, &a, env);
    assert_eq!(r.code, 0, "{args:?}:\n{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["validation_status"], "valid");
    v["peak_memory_bytes"].as_u64().expect("peak_memory_bytes")
}

/// Every file of two output folders, byte for byte.
fn assert_same_files(a: &Path, b: &Path) {
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b));
    for n in names(a) {
        assert!(
            std::fs::read(a.join(&n)).unwrap() == std::fs::read(b.join(&n)).unwrap(),
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// GPTQ on the largest shared model (MLA + MoE): byte-identical to the whole-model
/// run, and the peak RSS at least the other blocks' stored bytes below it (the
/// whole-model run holds every block in the engine and their mapped source pages;
/// the streamed one only the current block).
#[test]
fn streamed_gptq_on_the_largest_model_matches_whole_model_and_holds_one_block() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let model = shared_model("glm4-moe-lite");
    let args = ["gptq", "-q", "4bit"];
    let whole = run(t, &model, &args, "whole", true);
    let streamed = run(t, &model, &args, "streamed", false);
    assert_same_files(&t.join("whole"), &t.join("streamed"));
    let blocks = block_bytes(&model);
    assert!(blocks.len() >= 2, "{blocks:?}");
    let not_held = blocks.iter().sum::<u64>() - blocks.iter().max().unwrap();
    assert!(
        streamed + not_held <= whole,
        "streamed peak {streamed} B is not {not_held} B (the blocks not held) below the whole-model peak {whole} B"
    );
}

/// AWQ folds scales into the norms of the block it quantizes: byte-identical too.
#[test]
fn streamed_awq_matches_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let model = shared_model("llama");
    let args = ["awq", "-q", "4bit"];
    run(t, &model, &args, "whole", true);
    run(t, &model, &args, "streamed", false);
    assert_same_files(&t.join("whole"), &t.join("streamed"));
}

/// A RAM budget below what one block needs: exit 5 with the numbers, nothing written.
#[test]
fn ram_budget_below_one_block_is_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let model = shared_model("llama");
    let r = lq(
        t,
        &[
            "--format",
            "json",
            "quantize",
            model.to_str().unwrap(),
            "gptq",
            "-q",
            "4bit",
            "--calibration-samples",
            "4",
            "--calibration-seq-len",
            "64",
            "--ram-budget-gb",
            "0.001",
            "--no-checkpoints",
            "-o",
            "out",
        ],
    );
    assert_eq!(r.code, 5, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["error_type"], "OutOfMemoryError");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("block") && msg.contains("GB"), "{msg}");
    assert!(
        !t.join("out").exists() || std::fs::read_dir(t.join("out")).unwrap().next().is_none(),
        "a refused run must not write output"
    );
}
