//! `convert` end to end on the shared `llama` model, from round-to-nearest sources
//! made once per run (GPTQ 4-bit g128 and g32 symmetric, AWQ 4-bit g128,
//! compressed-tensors W4A16): every supported pair, lossless pairs proven bit-exact by
//! reading both folders back (GPTQ → GGUF Q4_0 → GPTQ included), lossy pairs refused
//! with exit 9 unless `--force` (nothing written), unsupported pairs exit 8, `info` on
//! every output, and each output checked by its home reader (gguf-py for GGUF; the
//! compressed-tensors / GPTQModel / AutoAWQ unpacking code of `llmq-hfquant/tests/py`
//! for the rest). GGUF inputs are tested in `convert_gguf.rs`.

mod common;

use common::{lq, shared_model, Run};
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::read::{HfCheckpoint, HfWeight};
use llmq_hfquant::writer::write_safetensors;
use llmq_hfquant::HfTensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Sources made once: name → folder.
fn sources() -> &'static BTreeMap<&'static str, PathBuf> {
    static S: OnceLock<(tempfile::TempDir, BTreeMap<&'static str, PathBuf>)> = OnceLock::new();
    &S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model = shared_model("llama");
        let m = model.to_str().unwrap();
        let mut out = BTreeMap::new();
        let specs: [(&str, &[&str]); 4] = [
            ("gptq-g128", &["gptq", "-q", "4bit", "--group-size", "128"]),
            ("gptq-g32", &["gptq", "-q", "4bit", "--group-size", "32"]),
            ("awq", &["awq", "-q", "4bit"]),
            ("ct", &["compressed-tensors", "-q", "W4A16"]),
        ];
        for (name, args) in specs {
            let mut a = vec!["quantize", m];
            a.extend_from_slice(args);
            a.extend_from_slice(&["--method", "rtn", "--no-checkpoints", "-n", name, "-o"]);
            let o = dir.path().to_str().unwrap().to_string();
            a.push(&o);
            let r = lq(dir.path(), &a);
            assert_eq!(r.code, 0, "source {name}: {}", r.stderr);
            out.insert(name, dir.path().join(name));
        }
        (dir, out)
    })
    .1
}

fn src(name: &str) -> String {
    sources()[name].to_str().unwrap().to_string()
}

/// `--format json convert SRC FORMAT ARGS… -o OUT`
fn convert(out: &Path, source: &str, format: &str, args: &[&str]) -> Run {
    let mut a = vec!["--format", "json", "convert", source, format];
    a.extend_from_slice(args);
    let o = out.to_str().unwrap().to_string();
    a.extend_from_slice(&["-o", &o]);
    lq(out, &a)
}

/// Every weight of a folder, dequantized, by name.
type Weights = BTreeMap<String, (Vec<f32>, bool, Vec<usize>)>;

fn weights(dir: &Path) -> Weights {
    let st = SafetensorsModel::open(dir).unwrap();
    let ck = HfCheckpoint::from_parts(dir, st).unwrap();
    ck.tensors()
        .into_iter()
        .map(|(n, _)| {
            let w = ck.read(&n).unwrap();
            let quantized = matches!(w, HfWeight::Int(_));
            (n, (w.to_f32(), quantized, w.shape()))
        })
        .collect()
}

fn bit_identical(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Asserts two folders hold bit-identical dequantized weights (same names).
fn assert_same_weights(a: &Path, b: &Path) {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(
        wa.keys().collect::<Vec<_>>(),
        wb.keys().collect::<Vec<_>>(),
        "tensor names differ"
    );
    let mut quantized = 0;
    for (n, (va, qa, _)) in &wa {
        assert!(bit_identical(va, &wb[n].0), "{n} differs");
        quantized += *qa as usize;
    }
    assert!(quantized > 0, "no quantized modules compared");
}

fn info_ok(path: &Path) -> serde_json::Value {
    let r = lq(
        path.parent().unwrap(),
        &["--format", "json", "info", path.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "info {}: {}", path.display(), r.stderr);
    let v = r.json();
    assert_eq!(v["num_layers"], 4, "{v}");
    v
}

#[test]
fn lossless_gptq_to_compressed_tensors_and_back_is_bit_exact() {
    let t = tempfile::tempdir().unwrap();
    let r = convert(t.path(), &src("gptq-g128"), "compressed-tensors", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lossless"], true, "{v}");
    assert_eq!(v["quantization_level"], "W4A16");
    let ct = PathBuf::from(v["output_path"].as_str().unwrap());
    assert_same_weights(&sources()["gptq-g128"], &ct);
    info_ok(&ct);
    // and back to GPTQ v2
    let back = tempfile::tempdir().unwrap();
    let r = convert(
        back.path(),
        ct.to_str().unwrap(),
        "gptq",
        &["--checkpoint-format", "gptq_v2", "-n", "rt"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["lossless"], true);
    assert_same_weights(&sources()["gptq-g128"], &back.path().join("rt"));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(back.path().join("rt/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["quantization_config"]["checkpoint_format"], "gptq_v2");
}

#[test]
fn lossless_awq_to_w4a16_asym_and_gptq_g32_to_q4_0() {
    let t = tempfile::tempdir().unwrap();
    let r = convert(
        t.path(),
        &src("awq"),
        "compressed-tensors",
        &["-q", "W4A16_ASYM"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lossless"], true, "{v}");
    assert_same_weights(
        &sources()["awq"],
        Path::new(v["output_path"].as_str().unwrap()),
    );

    // 4-bit g32 symmetric is exactly Q4_0; no -q needed
    let r = convert(t.path(), &src("gptq-g32"), "gguf", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lossless"], true, "{v}");
    assert_eq!(v["quantization_level"], "Q4_0");
    let gguf = PathBuf::from(v["output_path"].as_str().unwrap());
    let info = info_ok(&gguf);
    assert!(info["tensor_types"]["Q4_0"].as_u64().unwrap() > 0, "{info}");
    gguf_py_dequantizes_like_source(&gguf, &sources()["gptq-g32"]);
}

/// gguf-py (llama.cpp's Python reader) dequantizes the Q4_0 tensors of `gguf` to the
/// source's values: the attention output and MLP projections, which need no permutation.
fn gguf_py_dequantizes_like_source(gguf: &Path, source: &Path) {
    let w = weights(source);
    let d = tempfile::tempdir().unwrap();
    let pairs = [
        (
            "blk.0.attn_output.weight",
            "model.layers.0.self_attn.o_proj.weight",
        ),
        (
            "blk.1.ffn_down.weight",
            "model.layers.1.mlp.down_proj.weight",
        ),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
    ];
    let expected: Vec<(String, HfTensor)> = pairs
        .iter()
        .map(|(g, h)| {
            let (v, _, _) = &w[*h];
            (g.to_string(), HfTensor::from_f32(&[v.len()], v))
        })
        .collect();
    let exp = d.path().join("expected.safetensors");
    write_safetensors(&exp, &expected).unwrap();
    let script = r#"
import sys, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file
r = GGUFReader(sys.argv[1])
want = load_file(sys.argv[2])
by = {t.name: t for t in r.tensors}
for name, w in want.items():
    t = by[name]
    assert t.tensor_type.name == "Q4_0", t.tensor_type.name
    got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    assert np.array_equal(got.view(np.uint32), w.view(np.uint32)), name
print("ok", len(want))
"#;
    let o = Command::new("python3")
        .args(["-c", script, gguf.to_str().unwrap(), exp.to_str().unwrap()])
        .output()
        .expect("python3 with gguf and safetensors (scripts/test.sh installs them)");
    assert!(
        o.status.success(),
        "gguf-py: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn lossy_pair_exits_9_without_force_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    // json mode
    let r = convert(t.path(), &src("awq"), "gguf", &["-q", "Q4_K_M"]);
    assert_eq!(r.code, 9, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["error_code"], 9);
    assert!(
        v["message"].as_str().unwrap().contains("relative RMSE"),
        "{v}"
    );
    // human mode without a terminal (stdin is not a TTY here)
    let o = t.path().to_str().unwrap();
    let r = lq(
        t.path(),
        &["convert", &src("awq"), "gguf", "-q", "Q4_K_M", "-o", o],
    );
    assert_eq!(r.code, 9, "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn force_writes_a_lossy_conversion_with_its_estimate() {
    let t = tempfile::tempdir().unwrap();
    let r = convert(t.path(), &src("awq"), "gguf", &["-q", "Q4_K_M", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lossless"], false);
    let rmse = v["metadata"]["mean_relative_rmse"].as_f64().unwrap();
    assert!(rmse > 0.0 && rmse < 0.2, "{rmse}");
    let gguf = PathBuf::from(v["output_path"].as_str().unwrap());
    assert!(gguf.is_file());
    info_ok(&gguf);
    // with calibration text, the estimate adds KL-divergence
    let data = common::shared().join("data/corpus");
    let text = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "txt"))
        .expect("a corpus text file");
    let r = convert(
        t.path(),
        &src("gptq-g128"),
        "awq",
        &[
            "--group-size",
            "64",
            "-q",
            "4bit",
            "--force",
            "-n",
            "g64",
            "--calibration-data",
            text.to_str().unwrap(),
            "--calibration-samples",
            "2",
        ],
    );
    // g128 -> g64 keeps every scale: lossless after all, so no estimate is needed
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["lossless"], true);
    let r = convert(
        t.path(),
        &src("awq"),
        "gptq",
        &[
            "-q",
            "2bit",
            "--force",
            "-n",
            "two",
            "--calibration-data",
            text.to_str().unwrap(),
            "--calibration-samples",
            "2",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lossless"], false);
    let kl = v["metadata"]["kl_divergence"]["mean"].as_f64().unwrap();
    assert!(kl > 0.0 && kl.is_finite(), "{v}");
}

#[test]
fn unsupported_pairs_exit_8() {
    let t = tempfile::tempdir().unwrap();
    // an unquantized model is for `quantize`
    let llama = shared_model("llama");
    let r = convert(t.path(), llama.to_str().unwrap(), "gptq", &[]);
    assert_eq!(r.code, 8, "{}", r.stdout);
    assert!(
        r.json()["suggestion"].as_str().unwrap().contains("gptq"),
        "{}",
        r.stdout
    );
    // a target format convert does not write
    let r = convert(t.path(), &src("gptq-g128"), "exl3", &[]);
    assert_eq!(r.code, 8, "{}", r.stdout);
}

/// GPTQ 4-bit g32 symmetric → GGUF Q4_0 → GPTQ: both steps exact, so the round trip
/// gives the source's weights back bit for bit (the GGUF reader undoes the Q/K
/// permutation the GGUF writer applied).
#[test]
fn gptq_g32_to_q4_0_and_back_is_bit_exact() {
    let t = tempfile::tempdir().unwrap();
    let g = convert(t.path(), &src("gptq-g32"), "gguf", &[]);
    assert_eq!(g.code, 0, "{}", g.stderr);
    let gguf = g.json()["output_path"].as_str().unwrap().to_string();
    let r = convert(t.path(), &gguf, "gptq", &["-n", "back"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lossless"], true, "{v}");
    assert_eq!(v["metadata"]["target_grid"], "4bit g32 sym", "{v}");
    assert_same_weights(&sources()["gptq-g32"], &t.path().join("back"));
}

/// Every supported pair (sources × targets), forced where lossy, each output read by
/// `info` and, for the Hugging Face targets, by the reference Python unpackers.
#[test]
fn every_supported_pair_loads_in_its_home_reader() {
    let t = tempfile::tempdir().unwrap();
    let targets: [(&str, &[&str]); 4] = [
        ("gguf", &["-q", "Q4_K_M"]),
        ("gptq", &["-q", "4bit"]),
        ("awq", &["-q", "4bit"]),
        ("compressed-tensors", &["-q", "W4A16_ASYM"]),
    ];
    let mut hf_outputs: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for s in ["gptq-g128", "awq", "ct"] {
        for (fmt, args) in targets {
            let name = format!("{s}-to-{fmt}");
            let mut a = args.to_vec();
            a.extend_from_slice(&["--force", "-n", &name]);
            let r = convert(t.path(), &src(s), fmt, &a);
            assert_eq!(r.code, 0, "{name}: {}", r.stderr);
            let out = PathBuf::from(r.json()["output_path"].as_str().unwrap());
            info_ok(&out);
            if fmt != "gguf" {
                hf_outputs.push((fmt.to_string(), out, sources()[s].clone()));
            }
        }
    }
    python_home_readers(&hf_outputs);
}

/// Lays the outputs out as the cross-check scripts of llmq-hfquant expect (`case.json`,
/// `expected.safetensors` with our dequantization) and runs them.
fn python_home_readers(outputs: &[(String, PathBuf, PathBuf)]) {
    let py = std::env::var_os("LLMQ_HFQUANT_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let p = PathBuf::from(home).join(".cache/llm-quantize/py-test-deps/venv/bin/python");
            p.exists().then_some(p)
        })
        .expect("no Python with compressed-tensors/GPTQModel/AutoAWQ: run scripts/install-py-test-deps.sh");
    let pysrc = py
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("src");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../llmq-hfquant/tests/py");
    for (fmt, script) in [
        ("gptq", "check_gptq.py"),
        ("awq", "check_awq.py"),
        ("compressed-tensors", "check_compressed_tensors.py"),
    ] {
        let root = tempfile::tempdir().unwrap();
        for (i, (_, out, _)) in outputs.iter().filter(|(f, _, _)| f == fmt).enumerate() {
            let case_dir = root.path().join(format!("case{i}"));
            std::fs::create_dir_all(&case_dir).unwrap();
            for f in ["config.json", "model.safetensors", "quantize_config.json"] {
                if out.join(f).is_file() {
                    std::fs::copy(out.join(f), case_dir.join(f)).unwrap();
                }
            }
            let cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                    .unwrap();
            let qc = &cfg["quantization_config"];
            let case = match fmt {
                "gptq" => serde_json::json!({"bits": qc["bits"], "symmetric": qc["sym"],
                    "group_size": qc["group_size"], "act_order": qc["desc_act"], "format": qc["checkpoint_format"]}),
                "awq" => {
                    serde_json::json!({"bits": 4, "symmetric": false, "group_size": qc["group_size"]})
                }
                _ => {
                    let w = &qc["config_groups"]["group_0"]["weights"];
                    serde_json::json!({"preset": null, "bits": w["num_bits"], "symmetric": w["symmetric"], "group_size": w["group_size"]})
                }
            };
            std::fs::write(case_dir.join("case.json"), case.to_string()).unwrap();
            let expected: Vec<(String, HfTensor)> = weights(out)
                .into_iter()
                .filter(|(_, (_, q, _))| *q)
                .map(|(n, (v, _, shape))| {
                    let prefix = n.strip_suffix(".weight").unwrap().to_string();
                    (prefix, HfTensor::from_f32(&shape, &v))
                })
                .collect();
            write_safetensors(&case_dir.join("expected.safetensors"), &expected).unwrap();
        }
        let o = Command::new(&py)
            .arg(scripts.join(script))
            .arg(root.path())
            .env("LLMQ_HFQUANT_PYSRC", &pysrc)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("TRANSFORMERS_VERBOSITY", "error")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("{script}: {}", String::from_utf8_lossy(&o.stdout));
    }
}
