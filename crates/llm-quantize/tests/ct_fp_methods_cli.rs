//! `quantize llama compressed-tensors -q NVFP4|MXFP4 --method mr-gptq|gptq` end to end
//! (issue 19), cheaply (4 calibration samples of 128 tokens):
//! - MR-GPTQ interrupted after two of four blocks and resumed gives the bytes of an
//!   uninterrupted run;
//! - the compressed-tensors package decompresses every module to exactly our values
//!   (`check_ct_fp.py` for GPTQ, `check_ct_transform.py` for MR-GPTQ's rotated ones);
//!   its own transforms, built from our `transform_config`, compute with the stored
//!   weights what our engine computes, and their weights are the tensors we store;
//! - our engine applies the rotation: the KL-divergence to the original is within the
//!   grid's bound with it, and many times that with the rotation stripped;
//! - a transform config of another shape is refused, never run without it.

mod common;
use common::*;
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::read::{HfQuantScheme, QuantizedModules};
use llmq_hfquant::writer::write_safetensors;
use llmq_hfquant::{Dtype, HfTensor};
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

fn quantize(dir: &Path, level: &str, extra: &[&str]) -> Run {
    let model = shared_model("llama");
    let train = shared().join("data/corpus/train.txt");
    let mut a = vec![
        "quantize",
        model.to_str().unwrap(),
        "compressed-tensors",
        "-q",
        level,
        "--calibration-data",
        train.to_str().unwrap(),
        "--calibration-samples",
        "4",
        "--calibration-seq-len",
        "128",
        "--format",
        "json",
    ];
    a.extend_from_slice(extra);
    lq(dir, &a)
}

fn kl(dir: &Path, folder: &Path) -> Run {
    let model = shared_model("llama");
    let test = shared().join("data/corpus/test.txt");
    lq(
        dir,
        &[
            "eval",
            folder.to_str().unwrap(),
            "--base",
            model.to_str().unwrap(),
            "--dataset",
            test.to_str().unwrap(),
            "--samples",
            "4",
            "--max-length",
            "256",
            "--format",
            "json",
        ],
    )
}

fn kl_value(r: &Run) -> f64 {
    assert_eq!(r.code, 0, "eval: {}", r.stderr);
    r.json()["kl"]["mean_kl_divergence"].as_f64().unwrap()
}

fn dtype(d: StDtype) -> Dtype {
    match d {
        StDtype::F32 => Dtype::F32,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::BF16,
        StDtype::Other("U8") => Dtype::U8,
        StDtype::Other("F8_E4M3") => Dtype::F8E4M3,
        d => panic!("dtype {d:?}"),
    }
}

/// A case for the Python checks: the folder's files, `expected.safetensors` with every
/// module's stored (rotated) values under its prefix and the engine's dense weight
/// under `<prefix>.dense`, `case.json` naming them. Returns the module count.
fn case_from_output(out: &Path, case: &Path) -> usize {
    std::fs::create_dir_all(case).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(out.join(f), case.join(f)).unwrap();
    }
    let st = SafetensorsModel::open(out).unwrap();
    let scheme = HfQuantScheme::detect(out).unwrap().unwrap();
    let m = QuantizedModules::scan(scheme, &st).unwrap();
    let mut expected = Vec::new();
    let mut prefixes = Vec::new();
    for (prefix, [o, i]) in m.modules() {
        let stored = m.fp_quantized(&st, prefix).unwrap().dequantize();
        let dense = m.fp_dense(&st, prefix).unwrap();
        expected.push((prefix.to_string(), HfTensor::from_f32(&[o, i], &stored)));
        expected.push((
            format!("{prefix}.dense"),
            HfTensor::from_f32(&[o, i], &dense),
        ));
        prefixes.push(prefix.to_string());
    }
    write_safetensors(&case.join("expected.safetensors"), &expected).unwrap();
    std::fs::write(
        case.join("case.json"),
        serde_json::json!({ "prefixes": prefixes }).to_string(),
    )
    .unwrap();
    prefixes.len()
}

/// `src` copied to `dst` with `edit` applied to its `quantization_config` and the
/// tensors `keep` refuses left out.
fn edited_copy(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&mut serde_json::Value),
    keep: impl Fn(&str) -> bool,
) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name != "model.safetensors" && name != "config.json" {
            std::fs::copy(&p, dst.join(&name)).unwrap();
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg["quantization_config"]);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    let st = SafetensorsModel::open(src).unwrap();
    let tensors: Vec<(String, HfTensor)> = st
        .tensors()
        .filter(|t| keep(&t.name))
        .map(|t| {
            let v = st.get(&t.name).unwrap();
            let t = HfTensor::from_raw(dtype(v.info.dtype), &v.info.shape, v.bytes.to_vec());
            (v.info.name.clone(), t)
        })
        .collect();
    write_safetensors(&dst.join("model.safetensors"), &tensors).unwrap();
}

fn run_check(script: &str, cases: &Path) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../llmq-hfquant/tests/py")
        .join(script);
    let o = Command::new(python())
        .arg(&script)
        .arg(cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{}: {stdout}{}",
        script.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

#[test]
fn mr_gptq_and_gptq_on_fp_grids_resume_decompress_and_run_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // MR-GPTQ NVFP4, interrupted after two blocks (a kill stands in), then resumed
    let mr = ["--method", "mr-gptq", "-o", "mr", "--checkpoint-dir", "ck"];
    let r = quantize(
        d,
        "NVFP4",
        &[&mr[..], &["--stop-after-layers", "2"]].concat(),
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    let r = quantize(d, "NVFP4", &[&mr[..], &["--resume"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    let meta = &j["metadata"];
    assert_eq!(meta["method"], "mr-gptq");
    assert_eq!(meta["layers_resumed"], 2);
    let report = meta["tensors_report"].as_array().unwrap();
    assert_eq!(report.len(), 28, "7 Linears × 4 blocks");
    for t in report {
        assert_eq!(t["type"], "NVFP4 hadamard128", "{}", t["name"]);
        assert_eq!(t["method"], "mr-gptq", "{}", t["name"]);
        assert_eq!(t["tokens"], 512, "{}", t["name"]);
        let rel = t["relative_rmse"].as_f64().unwrap();
        assert!(rel > 0.0 && rel < 0.3, "{}: relative RMSE {rel}", t["name"]);
    }
    let mr_out = d.join("mr/llama-compressed-tensors-NVFP4");
    // the same run uninterrupted writes the same bytes
    let r = quantize(
        d,
        "NVFP4",
        &["--method", "mr-gptq", "-o", "mr2", "--no-checkpoints"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bytes = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(bytes(&mr_out) == bytes(&d.join("mr2/llama-compressed-tensors-NVFP4")));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mr_out.join("config.json")).unwrap())
            .unwrap();
    let t = &cfg["quantization_config"]["transform_config"]["config_groups"]["mr_gptq"];
    assert_eq!(t["type"], "hadamard");
    assert_eq!(t["head_dim"], 128);
    assert_eq!(
        cfg["quantization_config"]["ignore"],
        serde_json::json!(["lm_head"])
    );

    // GPTQ MXFP4: no rotation
    let r = quantize(
        d,
        "MXFP4",
        &["--method", "gptq", "-o", "g", "--no-checkpoints"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["metadata"]["method"], "gptq");
    let g_out = d.join("g/llama-compressed-tensors-MXFP4");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g_out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["quantization_config"]["transform_config"],
        serde_json::json!({})
    );

    // the compressed-tensors package: decompression, and its transforms
    let n = case_from_output(&g_out, &d.join("plain/MXFP4-gptq"));
    assert_eq!(n, 28);
    let out = run_check("check_ct_fp.py", &d.join("plain"));
    assert!(out.contains("28 modules"), "{out}");
    let n = case_from_output(&mr_out, &d.join("rotated/NVFP4-mr-gptq"));
    assert_eq!(n, 28);
    let out = run_check("check_ct_transform.py", &d.join("rotated"));
    assert!(out.contains("28 rotated modules"), "{out}");

    // the engine: bounded KL with the rotation, far worse without it
    let kl_mr = kl_value(&kl(d, &mr_out));
    let kl_g = kl_value(&kl(d, &g_out));
    eprintln!("MR-GPTQ NVFP4: KL {kl_mr:.5}; GPTQ MXFP4: KL {kl_g:.5}");
    assert!(kl_mr > 0.0 && kl_mr < 0.03, "MR-GPTQ NVFP4 KL {kl_mr}");
    assert!(kl_g > 0.0 && kl_g < 0.05, "GPTQ MXFP4 KL {kl_g}");
    let stripped = d.join("stripped");
    edited_copy(
        &mr_out,
        &stripped,
        |qc| qc["transform_config"] = serde_json::json!({}),
        |n| !n.ends_with(".mr_gptq_input.weight"),
    );
    let kl_none = kl_value(&kl(d, &stripped));
    eprintln!("MR-GPTQ NVFP4 without its rotation: KL {kl_none:.5}");
    assert!(
        kl_none > 20.0 * kl_mr,
        "without rotation KL {kl_none} vs {kl_mr}"
    );

    // a transform our engine does not compute is refused, not ignored (exit 6, as every
    // unsupported quantized checkpoint the engine meets)
    let random = d.join("random");
    edited_copy(
        &mr_out,
        &random,
        |qc| qc["transform_config"]["config_groups"]["mr_gptq"]["randomize"] = true.into(),
        |_| true,
    );
    let r = kl(d, &random);
    let said = format!("{}{}", r.stdout, r.stderr);
    assert_eq!(r.code, 6, "{said}");
    assert!(said.contains("transform_config: a randomized"), "{said}");
}

#[test]
fn fp_method_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (level, extra, why) in [
        ("W4A16", &["--method", "mr-gptq"][..], "mr-gptq"),
        (
            "NVFP4",
            &["--method", "mr-gptq", "--hadamard-size", "48"][..],
            "--hadamard-size 48",
        ),
        (
            "NVFP4",
            &["--method", "mr-gptq", "--hadamard-size", "256"][..],
            "--hadamard-size 256",
        ),
        (
            "MXFP4",
            &["--method", "gptq", "--hadamard-size", "64"][..],
            "--hadamard-size",
        ),
        ("MXFP4", &["--method", "awq"][..], "--method awq"),
    ] {
        let r = quantize(d, level, extra);
        let said = format!("{}{}", r.stdout, r.stderr);
        assert_eq!(r.code, 2, "{level} {extra:?}: {said}");
        assert!(said.contains(why), "{level} {extra:?}: {said}");
    }
}
