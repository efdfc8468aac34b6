//! `quantize llama compressed-tensors -q NVFP4|MXFP4|FP8|FP8_BLOCK` end to end:
//! - the compressed-tensors package decompresses every quantized module of the folder to
//!   exactly the weights our reader (and so our engine) computes from it
//!   (`llmq-hfquant/tests/py/check_ct_fp.py`);
//! - our engine loads the folder and its KL-divergence to the original stays within
//!   what the grid allows (bounds a few times the values measured when this was written:
//!   NVFP4 0.011, MXFP4 0.016, FP8 0.0008, FP8_BLOCK 0.0008 over 8 windows of 256).

mod common;
use common::*;
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::read::{dense_f32, HfCheckpoint, HfWeight};
use llmq_hfquant::writer::write_safetensors;
use llmq_hfquant::HfTensor;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    std::env::var_os("LLMQ_HFQUANT_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let p = PathBuf::from(home).join(".cache/llm-quantize/py-test-deps/venv/bin/python");
            p.exists().then_some(p)
        })
        .expect("no Python with compressed-tensors: run scripts/install-py-test-deps.sh")
}

/// Lays `out` out as a case of check_ct_fp.py: the folder's files, `expected.safetensors`
/// with our reader's values of every quantized module, `case.json` naming them.
fn case_from_output(out: &Path, case: &Path) -> usize {
    std::fs::create_dir_all(case).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(out.join(f), case.join(f)).unwrap();
    }
    let st = SafetensorsModel::open(out).unwrap();
    let ck = HfCheckpoint::from_parts(out, st).unwrap();
    let mut expected = Vec::new();
    let mut prefixes = Vec::new();
    for (name, shape) in ck.tensors() {
        if !ck.is_quantized(&name) {
            continue;
        }
        let v = match ck.read(&name).unwrap() {
            HfWeight::Dense(t) => dense_f32(&t),
            HfWeight::Int(q) => q.dequantize(),
        };
        let prefix = name.strip_suffix(".weight").unwrap().to_string();
        expected.push((prefix.clone(), HfTensor::from_f32(&shape, &v)));
        prefixes.push(prefix);
    }
    write_safetensors(&case.join("expected.safetensors"), &expected).unwrap();
    std::fs::write(
        case.join("case.json"),
        serde_json::json!({ "prefixes": prefixes }).to_string(),
    )
    .unwrap();
    prefixes.len()
}

#[test]
fn fp_levels_decompress_to_our_weights_and_run_in_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("llama");
    let test = shared().join("data/corpus/test.txt");
    let cases = dir.path().join("cases");
    let mut modules = 0;
    for (level, max_kl) in [
        ("NVFP4", 0.03),
        ("MXFP4", 0.05),
        ("FP8", 0.003),
        ("FP8_BLOCK", 0.003),
    ] {
        let out = format!("out-{level}");
        let r = lq(
            dir.path(),
            &[
                "quantize",
                model.to_str().unwrap(),
                "compressed-tensors",
                "-q",
                level,
                "-o",
                &out,
                "--no-checkpoints",
                "--format",
                "json",
            ],
        );
        assert_eq!(r.code, 0, "{level}: {}", r.stderr);
        assert_eq!(r.json()["status"], "success", "{level}");
        let folder = std::fs::read_dir(dir.path().join(&out))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let n = case_from_output(&folder, &cases.join(level));
        assert!(n >= 28, "{level}: only {n} quantized modules");
        modules += n;
        let r = lq(
            dir.path(),
            &[
                "eval",
                folder.to_str().unwrap(),
                "--base",
                model.to_str().unwrap(),
                "--dataset",
                test.to_str().unwrap(),
                "--samples",
                "8",
                "--max-length",
                "256",
                "--format",
                "json",
            ],
        );
        assert_eq!(r.code, 0, "eval {level}: {}", r.stderr);
        let kl = r.json()["kl"]["mean_kl_divergence"].as_f64().unwrap();
        eprintln!("{level}: mean KL {kl:.5}");
        assert!(
            kl.is_finite() && kl > 0.0 && kl < max_kl,
            "{level}: KL {kl}"
        );
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../llmq-hfquant/tests/py/check_ct_fp.py");
    let o = Command::new(python())
        .arg(&script)
        .arg(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "check_ct_fp.py: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains(&format!("{modules} modules")), "{stdout}");
}
