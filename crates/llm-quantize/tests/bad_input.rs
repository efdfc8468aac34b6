//! Bad input: each case gets a clear message, the contract's exit code, and no output
//! left that looks complete (no `.gguf` under the final name).

mod common;
use common::*;
use std::path::Path;

fn quantize_json(cwd: &Path, model: &Path) -> Run {
    lq(
        cwd,
        &[
            "--format",
            "json",
            "quantize",
            model.to_str().unwrap(),
            "gguf",
            "-q",
            "Q4_K_M",
            "-o",
            "out",
        ],
    )
}

fn assert_failed(r: &Run, code: i32, needle: &str, cwd: &Path) {
    assert_eq!(r.code, code, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["error_code"], code);
    let msg = v["message"].as_str().unwrap().to_lowercase();
    assert!(
        msg.contains(&needle.to_lowercase()),
        "message {msg:?} lacks {needle:?}"
    );
    assert!(!v["suggestion"].as_str().unwrap().is_empty());
    assert!(
        files_ending(&cwd.join("out"), ".gguf").is_empty(),
        "a complete-looking output was left"
    );
}

fn st_header(path: &Path) -> (u64, serde_json::Value, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n as usize]).unwrap();
    (n, h, b[8 + n as usize..].to_vec())
}

fn write_st(path: &Path, header: &serde_json::Value, data: &[u8]) {
    let mut h = serde_json::to_vec(header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn missing_path_and_missing_weights() {
    let dir = tempfile::tempdir().unwrap();
    let r = quantize_json(dir.path(), &dir.path().join("no/such/model"));
    assert_failed(&r, 3, "does not exist", dir.path());
    let m = copy_model(&shared_model("llama"), &dir.path().join("m"));
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    let r = quantize_json(dir.path(), &m);
    assert_failed(&r, 3, "safetensors", dir.path());
}

#[test]
fn truncated_and_lying_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_model(&shared_model("llama"), &dir.path().join("m"));
    let st = m.join("model.safetensors");
    let full = std::fs::read(&st).unwrap();
    std::fs::write(&st, &full[..full.len() / 2]).unwrap();
    let r = quantize_json(dir.path(), &m);
    assert_failed(&r, 6, "model.safetensors", dir.path());

    // A header whose offsets point past the data.
    let (_, mut h, data) = {
        std::fs::write(&st, &full).unwrap();
        st_header(&st)
    };
    let name = h
        .as_object()
        .unwrap()
        .keys()
        .find(|k| *k != "__metadata__")
        .unwrap()
        .clone();
    h[&name]["data_offsets"][1] = serde_json::json!(data.len() as u64 * 4);
    write_st(&st, &h, &data);
    let r = quantize_json(dir.path(), &m);
    assert_failed(&r, 6, "model.safetensors", dir.path());
}

#[test]
fn unknown_dtype_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_model(&shared_model("llama"), &dir.path().join("m"));
    let st = m.join("model.safetensors");
    let (_, mut h, data) = st_header(&st);
    // Relabel one bf16 tensor as I16 (same size): a dtype we do not quantize.
    h["model.layers.0.mlp.down_proj.weight"]["dtype"] = serde_json::json!("I16");
    write_st(&st, &h, &data);
    let r = quantize_json(dir.path(), &m);
    assert_failed(&r, 8, "I16", dir.path());
}

#[test]
fn config_problems() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_model(&shared_model("llama"), &dir.path().join("m"));
    let cfg_path = m.join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();

    let mut c = cfg.clone();
    c.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let r = quantize_json(dir.path(), &m);
    assert_failed(&r, 6, "num_hidden_layers", dir.path());

    let mut c = cfg.clone();
    c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let r = quantize_json(dir.path(), &m);
    assert_failed(&r, 8, "GPTNeoXForCausalLM", dir.path());

    std::fs::write(&cfg_path, "{ not json").unwrap();
    let r = quantize_json(dir.path(), &m);
    assert_failed(&r, 6, "json", dir.path());
}

#[test]
fn nan_weights_are_reported_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_model(&shared_model("llama"), &dir.path().join("m"));
    let st = m.join("model.safetensors");
    let (_, h, mut data) = st_header(&st);
    let off = h["model.layers.2.self_attn.v_proj.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    // bf16 NaN at element 10
    data[off + 20] = 0xC0;
    data[off + 21] = 0x7F;
    write_st(&st, &h, &data);
    let r = quantize_json(dir.path(), &m);
    assert_failed(&r, 6, "v_proj", dir.path());
}

#[test]
fn unwritable_output_dir() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the output directory should be.
    std::fs::write(dir.path().join("out"), b"x").unwrap();
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
            "-o",
            "out",
        ],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.json()["message"].as_str().unwrap().contains("out"));
}

#[test]
fn full_output_filesystem() {
    // RLIMIT_FSIZE makes writes past 64 KiB fail (EFBIG) like a full disk would,
    // without needing to mount anything.
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("llama");
    let mut c = std::process::Command::new(bin());
    c.current_dir(dir.path()).args([
        "--format",
        "json",
        "quantize",
        model.to_str().unwrap(),
        "gguf",
        "-q",
        "Q8_0",
        "-o",
        "out",
        "--no-checkpoints",
    ]);
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            Ok(())
        });
    }
    let r = output(c.output().unwrap());
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert!(files_ending(&dir.path().join("out"), ".gguf").is_empty());
    assert!(
        files_ending(&dir.path().join("out"), ".tmp").is_empty(),
        "temp file left without checkpoints"
    );
}

/// Our own F16 GGUF of the shared Llama with `blk.0.attn_q.weight` relabelled as
/// `ty` (zero bytes of that type's size): a well-formed file holding a type the engine
/// does not compute.
fn gguf_with_uncomputable_tensor(dir: &Path, ty: llmq_formats::GgmlType) -> std::path::PathBuf {
    use llmq_formats::gguf::{GgufFile, GgufPlan, GgufStreamWriter, PlannedTensor};
    let r = lq(
        dir,
        &[
            "quantize",
            shared_model("llama").to_str().unwrap(),
            "gguf",
            "-q",
            "F16",
            "-o",
            "f16",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let src = GgufFile::open(&files_ending(&dir.join("f16"), ".gguf")[0]).unwrap();
    let target = "blk.0.attn_q.weight";
    let mut plan = GgufPlan::new();
    plan.metadata = src.metadata().to_vec();
    plan.alignment = src.alignment();
    for t in src.tensors() {
        let ggml_type = if t.name == target { ty } else { t.ggml_type };
        plan = plan.with_tensor(PlannedTensor::new(&t.name, t.shape_ne.clone(), ggml_type));
    }
    let out = dir.join(format!("relabelled-{}.gguf", ty.name()));
    let w = GgufStreamWriter::create(&out, &plan).unwrap();
    for t in src.tensors() {
        if t.name == target {
            let ne0 = t.shape_ne[0] as usize;
            let rows = (t.n_elements() as usize) / ne0;
            let n = ty.row_bytes(ne0).expect("whole blocks") * rows;
            w.write_tensor(t.name.as_str(), &vec![0u8; n]).unwrap();
        } else {
            w.write_tensor(t.name.as_str(), src.tensor_bytes(t))
                .unwrap();
        }
    }
    w.finish().unwrap();
    out
}

#[test]
fn gguf_with_a_type_we_do_not_compute_is_unsupported() {
    use llmq_formats::GgmlType;
    let dir = tempfile::tempdir().unwrap();
    let dataset = shared().join("data/corpus/valid.txt");
    for ty in [GgmlType::IQ2XXS, GgmlType::TQ1_0] {
        let m = gguf_with_uncomputable_tensor(dir.path(), ty);
        let m = m.to_str().unwrap();
        let commands: [&[&str]; 5] = [
            &["eval", m, "--dataset", dataset.to_str().unwrap()],
            &["generate", m, "--prompt", "Once upon", "--max-tokens", "2"],
            &["bench", "--models", m, "-p", "8", "-n", "2", "-r", "1"],
            &["serve", m, "--port", "0"],
            &["quantize", m, "gguf", "-q", "Q4_K_M", "-o", "out"],
        ];
        for args in commands {
            let mut full = vec!["--format", "json"];
            full.extend_from_slice(args);
            let r = lq(dir.path(), &full);
            assert_eq!(
                r.code, 8,
                "{args:?}\nstdout:\n{}\nstderr:\n{}",
                r.stdout, r.stderr
            );
            let msg = r.json()["message"].as_str().unwrap().to_string();
            assert!(
                msg.contains("blk.0.attn_q.weight") && msg.contains(ty.name()),
                "{args:?}: message {msg:?} names neither tensor nor type"
            );
        }
        // `info` still describes the file, naming the type.
        let r = lq(dir.path(), &["info", m]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains(ty.name()), "{}", r.stdout);
    }
}
