//! `quantize llama gptq|compressed-tensors --target-bpw X` (the measured allocator on
//! integer layouts), with a small calibration and measurement:
//!
//! - the written modules' code bits (`Σ numel·bits`, read back by our reader) are the
//!   allocation's, at most `⌊X · Σ numel⌋`, with several widths in use;
//! - a second run gives the same bytes (deterministic);
//! - our engine loads the folder and runs it (`eval` against the original);
//! - GPTQModel resolves each module's width from `dynamic` and its dequantizer, and the
//!   compressed-tensors package (its own target matcher and decompressor), give
//!   exactly our dequantized weights (`llmq-hfquant/tests/py/check_mixed_bits.py`).

mod common;
use common::*;
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::read::{HfCheckpoint, HfWeight};
use llmq_hfquant::writer::write_safetensors;
use llmq_hfquant::HfTensor;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
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

fn pysrc(py: &Path) -> PathBuf {
    std::env::var_os("LLMQ_HFQUANT_PYSRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| py.parent().unwrap().join("../../src"))
}

/// Runs the quantization into `dir/out`, returns the JSON result and the folder.
fn quantize(dir: &Path, format: &str, target: &str, out: &str) -> (Value, PathBuf) {
    let r = lq(
        dir,
        &[
            "--format",
            "json",
            "quantize",
            shared_model("llama").to_str().unwrap(),
            format,
            "--target-bpw",
            target,
            "--measure-windows",
            "4",
            "--calibration-samples",
            "8",
            "--calibration-seq-len",
            "64",
            "-o",
            out,
            "--no-checkpoints",
        ],
    );
    assert_eq!(r.code, 0, "{format}: {}", r.stderr);
    let folder = std::fs::read_dir(dir.join(out))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    (r.json(), folder)
}

/// Every quantized module of the folder through our reader: prefix → (bits, numel,
/// dequantized values, shape).
#[allow(clippy::type_complexity)]
fn modules(folder: &Path) -> BTreeMap<String, (u8, u64, Vec<f32>, Vec<usize>)> {
    let st = SafetensorsModel::open(folder).unwrap();
    let ck = HfCheckpoint::from_parts(folder, st).unwrap();
    let mut out = BTreeMap::new();
    for (name, shape) in ck.tensors() {
        if !ck.is_quantized(&name) {
            continue;
        }
        let HfWeight::Int(q) = ck.read(&name).unwrap() else {
            panic!("{name} is not an integer module");
        };
        let prefix = name.strip_suffix(".weight").unwrap().to_string();
        let numel = (q.out_features * q.in_features) as u64;
        out.insert(prefix, (q.bits, numel, q.dequantize(), shape));
    }
    out
}

#[test]
fn gptq_and_compressed_tensors_meet_the_budget_load_and_match_the_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = tmp.path().join("cases");
    let model = shared_model("llama");
    let test = shared().join("data/corpus/test.txt");
    let mut total = 0;
    for (format, target) in [("gptq", "3.5"), ("compressed-tensors", "4.5")] {
        let (j, folder) = quantize(tmp.path(), format, target, &format!("out-{format}"));
        let a = &j["metadata"]["allocation"];
        let m = modules(&folder);
        assert!(m.len() >= 28, "{format}: {} modules", m.len());
        let numel: u64 = m.values().map(|v| v.1).sum();
        let bits: u64 = m.values().map(|v| v.1 * v.0 as u64).sum();
        let budget = (target.parse::<f64>().unwrap() * numel as f64).floor() as u64;
        assert_eq!(a["budget_bits"].as_u64(), Some(budget), "{format}: {a}");
        assert_eq!(
            a["decoder_bits"].as_u64(),
            Some(bits),
            "{format}: written bits"
        );
        assert!(bits <= budget, "{format}: {bits} > {budget}");
        let widths: BTreeSet<u8> = m.values().map(|v| v.0).collect();
        assert!(widths.len() >= 2, "{format}: widths {widths:?}");
        eprintln!(
            "{format} --target-bpw {target}: {:.4} code bits per weight, widths {widths:?}",
            bits as f64 / numel as f64
        );
        // one width per measured group: q/k/v together, gate/up together
        for l in 0..4 {
            let w = |p: &str| m[&format!("model.layers.{l}.{p}")].0;
            assert_eq!(w("self_attn.q_proj"), w("self_attn.k_proj"));
            assert_eq!(w("self_attn.q_proj"), w("self_attn.v_proj"));
            assert_eq!(w("mlp.gate_proj"), w("mlp.up_proj"));
        }
        // deterministic: the same bytes again
        if format == "gptq" {
            let (_, again) = quantize(tmp.path(), format, target, "again");
            for f in ["model.safetensors", "config.json"] {
                assert!(
                    std::fs::read(folder.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(),
                    "{f} differs between two runs"
                );
            }
        }
        // our engine runs it
        let r = lq(
            tmp.path(),
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
                "128",
                "--format",
                "json",
            ],
        );
        assert_eq!(r.code, 0, "eval {format}: {}", r.stderr);
        let kl = r.json()["kl"]["mean_kl_divergence"].as_f64().unwrap();
        eprintln!("{format}: mean KL {kl:.5}");
        assert!(kl.is_finite() && kl > 0.0, "{format}: KL {kl}");
        // a case for the packages
        let case = cases.join(format);
        std::fs::create_dir_all(&case).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(folder.join(f), case.join(f)).unwrap();
        }
        let expected: Vec<(String, HfTensor)> = m
            .iter()
            .map(|(p, v)| (p.clone(), HfTensor::from_f32(&v.3, &v.2)))
            .collect();
        write_safetensors(&case.join("expected.safetensors"), &expected).unwrap();
        let widths: BTreeMap<&String, u8> = m.iter().map(|(p, v)| (p, v.0)).collect();
        std::fs::write(
            case.join("case.json"),
            serde_json::json!({ "format": format, "bits": widths }).to_string(),
        )
        .unwrap();
        total += m.len();
    }
    let py = python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../llmq-hfquant/tests/py/check_mixed_bits.py");
    let o = Command::new(&py)
        .arg(&script)
        .arg(&cases)
        .env("LLMQ_HFQUANT_PYSRC", pysrc(&py))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "check_mixed_bits.py: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains(&format!("ok: {total} modules")), "{stdout}");
}

#[test]
fn refuses_what_the_integer_layouts_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = shared_model("llama");
    let llama = llama.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut a = vec!["--format", "json", "quantize", llama];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", ".", "--no-checkpoints"]);
        lq(tmp.path(), &a)
    };
    let r = run(&["gptq", "-q", "4bit", "--target-bpw", "4.5"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.contains("not both"), "{}", r.stdout);
    // GPTQ's widths are 2…8
    for t in ["1.5", "8.5"] {
        let r = run(&["gptq", "--target-bpw", t]);
        assert_eq!(r.code, 2, "{t}: {}", r.stderr);
        assert!(r.stdout.contains("out of range"), "{}", r.stdout);
    }
    // AWQ stores 4 bits only; AWQ's method into gptq has no allocation
    let r = run(&["awq", "-q", "4bit", "--target-bpw", "4.5"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run(&["gptq", "--target-bpw", "4.5", "--method", "awq"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}
