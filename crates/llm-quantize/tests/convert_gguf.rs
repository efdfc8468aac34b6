//! `convert` with a GGUF input, on GGUF files that `quantize` makes from the shared
//! models: Q8_0 and Q4_0 → GPTQ / compressed-tensors are lossless, a K-quant is
//! requantized with its estimate; all are checked against transformers' own GGUF loader
//! (`tests/py/gguf_reference.py`: weights name by name, logits, tokenizer). The other
//! architectures whose GGUF `quantize` writes are converted and run by our engine, GGUF
//! → GGUF keeps or requantizes types, and what is not reversed exits 8.

mod common;

use common::{lq, shared, shared_model, Run};
use llmq_formats::gguf::{GgufFile, GgufPlan, GgufStreamWriter, GgufValue, PlannedTensor};
use llmq_formats::GgmlType;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// GGUF files made once: (model, level) → file.
fn gguf(model: &str, level: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let name = format!("{model}-{level}.gguf");
    let path = dir.join(&name);
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    if !path.is_file() {
        let m = shared_model(model);
        let r = lq(
            dir,
            &[
                "quantize",
                m.to_str().unwrap(),
                "gguf",
                "-q",
                level,
                "--no-checkpoints",
                "-n",
                &name,
                "-o",
                dir.to_str().unwrap(),
            ],
        );
        assert_eq!(r.code, 0, "quantize {model} {level}: {}", r.stderr);
    }
    path
}

/// `--format json convert SRC FORMAT ARGS… -o OUT`
fn convert(out: &Path, source: &Path, format: &str, args: &[&str]) -> Run {
    let mut a = vec![
        "--format",
        "json",
        "convert",
        source.to_str().unwrap(),
        format,
    ];
    a.extend_from_slice(args);
    let o = out.to_str().unwrap().to_string();
    a.extend_from_slice(&["-o", &o]);
    lq(out, &a)
}

fn python() -> PathBuf {
    std::env::var_os("LLMQ_HFQUANT_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let p = PathBuf::from(home).join(".cache/llm-quantize/py-test-deps/venv/bin/python");
            p.exists().then_some(p)
        })
        .expect("no Python with transformers/gguf: run scripts/install-py-test-deps.sh")
}

/// One output for the reference script, with the numbers the conversion reported.
fn output_case(r: &Run, format: &str) -> serde_json::Value {
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let m = &v["metadata"];
    serde_json::json!({
        "dir": v["output_path"], "format": format, "lossless": v["lossless"],
        "mean_relative_rmse": m["mean_relative_rmse"],
        "worst_relative_rmse": m["worst_tensors"][0]["relative_rmse"].as_f64().unwrap_or(0.0),
        "max_kl": 0.05, "min_top1": 0.8,
    })
}

#[test]
fn gguf_to_gptq_and_compressed_tensors_agree_with_transformers_gguf_loader() {
    let t = tempfile::tempdir().unwrap();
    let text: String = std::fs::read_to_string(shared().join("data/corpus/test.txt"))
        .unwrap()
        .chars()
        .take(1500)
        .collect::<String>()
        + " <|im_start|>user\nhi<|im_end|>";
    let mut cases = Vec::new();
    // Q4_0 and Q8_0 are 4-/8-bit groups of 32 with symmetric f16 scales: held exactly
    for (level, grid) in [
        ("Q8_0", Some("8bit g32 sym")),
        ("Q4_0", Some("4bit g32 sym")),
        ("Q4_K_M", None),
    ] {
        let lossless = grid.is_some();
        let src = gguf("llama", level);
        let force: &[&str] = if lossless { &[] } else { &["--force"] };
        let mut outputs = Vec::new();
        for fmt in ["gptq", "compressed-tensors"] {
            let name = format!("{level}-{fmt}");
            let mut args = vec!["-n", &name];
            args.extend_from_slice(force);
            let r = convert(t.path(), &src, fmt, &args);
            let case = output_case(&r, fmt);
            assert_eq!(case["lossless"], lossless, "{}", r.stdout);
            let v = r.json();
            assert_eq!(v["metadata"]["input_format"], "gguf");
            if let Some(g) = grid {
                assert_eq!(v["metadata"]["target_grid"], g, "{v}");
                assert_eq!(v["metadata"]["mean_relative_rmse"], 0.0);
            } else {
                let rmse = v["metadata"]["mean_relative_rmse"].as_f64().unwrap();
                assert!(rmse > 0.0 && rmse < 0.1, "{rmse}");
            }
            outputs.push(case);
        }
        let ids = lq(
            t.path(),
            &[
                "tokenize",
                src.to_str().unwrap(),
                "-p",
                &text,
                "--ids",
                "--no-bos",
            ],
        );
        assert_eq!(ids.code, 0, "{}", ids.stderr);
        cases.push(serde_json::json!({
            "gguf_dir": src.parent().unwrap(), "gguf_file": src.file_name().unwrap().to_str(),
            "text": text, "our_ids": ids.json(), "outputs": outputs,
        }));
    }
    let spec = t.path().join("spec.json");
    std::fs::write(&spec, serde_json::json!({ "cases": cases }).to_string()).unwrap();
    let py = python();
    let pysrc = py.ancestors().nth(3).unwrap().join("src");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/gguf_reference.py");
    let o = Command::new(&py)
        .arg(&script)
        .arg(&spec)
        .env("LLMQ_HFQUANT_PYSRC", &pysrc)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "gguf_reference.py: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{out}");
}

#[test]
fn lossy_gguf_conversion_exits_9_without_force() {
    let t = tempfile::tempdir().unwrap();
    let r = convert(t.path(), &gguf("llama", "Q4_K_M"), "gptq", &["-q", "4bit"]);
    assert_eq!(r.code, 9, "{}\n{}", r.stdout, r.stderr);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("relative RMSE"));
    let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Every other architecture whose GGUF `quantize` writes (and `convert` reverses):
/// Q8_0 → GPTQ is lossless and our engine gives the output the GGUF's perplexity.
#[test]
fn every_reversed_architecture_converts_losslessly_and_runs() {
    let t = tempfile::tempdir().unwrap();
    let data = shared().join("data/corpus/test.txt");
    let ppl = |model: &Path| -> f64 {
        let r = lq(
            t.path(),
            &[
                "--format",
                "json",
                "eval",
                model.to_str().unwrap(),
                "--dataset",
                data.to_str().unwrap(),
                "--samples",
                "2",
            ],
        );
        assert_eq!(r.code, 0, "eval {}: {}", model.display(), r.stderr);
        r.json()["perplexity"].as_f64().unwrap()
    };
    for model in ["qwen2", "qwen3", "qwen3-moe", "mixtral", "gemma3", "phi3"] {
        let src = gguf(model, "Q8_0");
        let r = convert(t.path(), &src, "gptq", &["-n", model]);
        assert_eq!(r.code, 0, "{model}: {}", r.stderr);
        assert_eq!(r.json()["lossless"], true, "{model}: {}", r.stdout);
        let out = t.path().join(model);
        let (a, b) = (ppl(&src), ppl(&out));
        eprintln!("{model}: perplexity GGUF {a:.4}, converted GPTQ {b:.4}");
        // same weights; only the kernels' activation rounding differs
        assert!((a - b).abs() / a < 2e-3, "{model}: {a} vs {b}");
    }
}

#[test]
fn gguf_to_gguf_keeps_or_requantizes_types() {
    let t = tempfile::tempdir().unwrap();
    let src = gguf("llama", "Q8_0");
    let r = convert(t.path(), &src, "gguf", &["-n", "same.gguf"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lossless"], true, "{v}");
    assert_eq!(v["quantization_level"], "Q8_0");
    let (a, b) = (
        GgufFile::open(&src).unwrap(),
        GgufFile::open(t.path().join("same.gguf")).unwrap(),
    );
    for ta in a.tensors() {
        let tb = b.tensor(&ta.name).unwrap();
        assert_eq!(a.tensor_bytes(ta), b.tensor_bytes(tb), "{}", ta.name);
    }
    let r = convert(t.path(), &src, "gguf", &["-q", "Q4_K_M"]);
    assert_eq!(r.code, 9, "{}", r.stdout);
    let r = convert(
        t.path(),
        &src,
        "gguf",
        &["-q", "Q4_K_M", "--force", "-n", "k.gguf"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lossless"], false);
    let rmse = v["metadata"]["mean_relative_rmse"].as_f64().unwrap();
    assert!(rmse > 0.0 && rmse < 0.1, "{rmse}");
}

/// A copy of `src` with metadata `extra` added and tensor `retype` (if any) stored as
/// `IQ2_XXS` (zero bytes).
fn doctored(src: &Path, dst: &Path, extra: &[(&str, GgufValue)], retype: Option<&str>) {
    let f = GgufFile::open(src).unwrap();
    let mut metadata: Vec<(String, GgufValue)> = f.metadata().to_vec();
    metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let tensors: Vec<PlannedTensor> = f
        .tensors()
        .iter()
        .map(|t| {
            let ty = if Some(t.name.as_str()) == retype {
                GgmlType::IQ2XXS
            } else {
                t.ggml_type
            };
            PlannedTensor::new(t.name.clone(), t.shape_ne.clone(), ty)
        })
        .collect();
    let plan = GgufPlan {
        metadata,
        tensors,
        alignment: f.alignment(),
    };
    let w = GgufStreamWriter::create(dst, &plan).unwrap();
    for (t, p) in f.tensors().iter().zip(&plan.tensors) {
        let bytes = if p.ggml_type == t.ggml_type {
            f.tensor_bytes(t).to_vec()
        } else {
            let n = p.shape_ne.iter().product::<u64>() as usize;
            vec![0u8; n / p.ggml_type.block_size() * p.ggml_type.type_size()]
        };
        w.write_tensor(t.name.as_str(), &bytes).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn gguf_inputs_not_reversed_exit_8_naming_what() {
    let t = tempfile::tempdir().unwrap();
    let message = |r: &Run| r.json()["message"].as_str().unwrap().to_string();
    // an architecture not reversed (MLA)
    let r = convert(t.path(), &gguf("deepseek-v3", "Q8_0"), "gptq", &[]);
    assert_eq!(r.code, 8, "{}", r.stdout);
    assert!(message(&r).contains("deepseek2"), "{}", r.stdout);
    // a metadata key nothing reads
    let src = gguf("llama", "Q8_0");
    let key = t.path().join("key.gguf");
    doctored(
        &src,
        &key,
        &[("llama.rope.scaling.type", GgufValue::from("linear"))],
        None,
    );
    let r = convert(t.path(), &key, "gptq", &[]);
    assert_eq!(r.code, 8, "{}", r.stdout);
    assert!(
        message(&r).contains("llama.rope.scaling.type"),
        "{}",
        r.stdout
    );
    // a tensor type we do not dequantize
    let ty = t.path().join("type.gguf");
    doctored(&src, &ty, &[], Some("blk.2.attn_v.weight"));
    let r = convert(t.path(), &ty, "compressed-tensors", &[]);
    assert_eq!(r.code, 8, "{}", r.stdout);
    let m = message(&r);
    assert!(
        m.contains("blk.2.attn_v.weight") && m.contains("IQ2_XXS"),
        "{m}"
    );
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
