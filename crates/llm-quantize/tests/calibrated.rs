//! End to end: `quantize MODEL gptq|awq|compressed-tensors` on the shared models.
//! Every output is read back through llmq-hfquant's unpackers (not the pipeline's own
//! values), dequantized into an f32 safetensors copy, and run by llmq-engine on the
//! shared test split: the mean KL-divergence against the original model must be lower
//! for the calibrated method than for round-to-nearest at the same bits and groups.

mod calibrated_support;
mod common;

use calibrated_support::*;
use common::*;
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::{Dtype, HfTensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[test]
fn qwen3_gptq_and_awq_beat_rtn_at_4_and_3_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    calib_file(t);
    let model = shared_model("qwen3");
    let probe = KlProbe::new(&model, 12);

    let (g4, v, mods, qc) = measure(t, &probe, &model, "g4", &["gptq", "-q", "4bit"]);
    // GPTQModel layout, v1, symmetric 4-bit g128
    assert_eq!(v["format"], "gptq");
    assert_eq!(qc["bits"], 4);
    assert_eq!(qc["group_size"], 128);
    assert_eq!(qc["desc_act"], false);
    assert_eq!(qc["sym"], true);
    assert_eq!(qc["checkpoint_format"], "gptq");
    let qcf: Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("g4/quantize_config.json")).unwrap())
            .unwrap();
    assert_eq!(qcf["bits"], 4);
    assert!(t.join("g4/tokenizer.json").is_file());
    assert!(!t.join(".g4.partial").exists());
    // 4 layers x 7 Linears, all reported, all GPTQ'd with calibration tokens
    assert_eq!(mods.len(), 28);
    let rep = v["metadata"]["tensors_report"].as_array().unwrap();
    assert_eq!(rep.len(), 28);
    assert!(rep
        .iter()
        .all(|r| r["method"] == "gptq" && r["tokens"].as_u64().unwrap() == 8192));
    let st = SafetensorsModel::open(&t.join("g4")).unwrap();
    let qz = tensor(&st, "model.layers.0.self_attn.q_proj.qzeros").unwrap();
    assert!(qz.to_u32_words().unwrap().iter().all(|&w| w == 0x7777_7777));

    let (r4, ..) = measure(
        t,
        &probe,
        &model,
        "r4",
        &["gptq", "-q", "4bit", "--method", "rtn"],
    );
    let (g3, ..) = measure(t, &probe, &model, "g3", &["gptq", "-q", "3bit"]);
    let (r3, ..) = measure(
        t,
        &probe,
        &model,
        "r3",
        &["gptq", "-q", "3bit", "--method", "rtn"],
    );
    assert!(g4 < r4, "GPTQ 4-bit KL {g4} should beat RTN {r4}");
    assert!(g3 < r3, "GPTQ 3-bit KL {g3} should beat RTN {r3}");
    assert!(g3 > g4 && r3 > r4, "3 bits should cost more than 4");

    // AWQ GEMM, 4-bit asymmetric g128, vs the same format quantized with RTN
    let (a4, v, _, qc) = measure(t, &probe, &model, "a4", &["awq", "-q", "4bit"]);
    assert_eq!(v["format"], "awq");
    assert_eq!(qc["quant_method"], "awq");
    assert_eq!(qc["version"], "gemm");
    assert_eq!(qc["zero_point"], true);
    let (ra4, ..) = measure(
        t,
        &probe,
        &model,
        "ra4",
        &["awq", "-q", "4bit", "--method", "rtn"],
    );
    assert!(a4 < ra4, "AWQ 4-bit KL {a4} should beat RTN {ra4}");
    // AWQ at 3 bits, stored as asymmetric GPTQ v2
    let asym3 = [
        "gptq",
        "-q",
        "3bit",
        "--checkpoint-format",
        "gptq_v2",
        "--symmetric",
        "false",
    ];
    let mut a = asym3.to_vec();
    a.extend(["--method", "awq"]);
    let (a3, ..) = measure(t, &probe, &model, "a3", &a);
    let mut a = asym3.to_vec();
    a.extend(["--method", "rtn"]);
    let (ra3, ..) = measure(t, &probe, &model, "ra3", &a);
    assert!(a3 < ra3, "AWQ 3-bit KL {a3} should beat RTN {ra3}");
}

/// Rewrites one tensor of a (single-file) safetensors model folder.
fn edit_tensor(dir: &Path, name: &str, f: impl Fn(&mut [f32])) {
    let path = dir.join("model.safetensors");
    let st = SafetensorsModel::open(dir).unwrap();
    let mut all: Vec<(String, HfTensor)> = Vec::new();
    for t in st.tensors() {
        let mut h = tensor(&st, &t.name).unwrap();
        if t.name == name {
            let mut v: Vec<f32> = match h.dtype {
                Dtype::F32 => h.to_f32_vec().unwrap(),
                Dtype::BF16 => h
                    .to_bf16_vec()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_f32())
                    .collect(),
                d => panic!("{name} has dtype {d:?}"),
            };
            f(&mut v);
            h = match h.dtype {
                Dtype::F32 => HfTensor::from_f32(&h.shape, &v),
                _ => {
                    let b: Vec<half::bf16> = v.iter().map(|x| half::bf16::from_f32(*x)).collect();
                    HfTensor::from_bf16(&h.shape, &b)
                }
            };
        }
        all.push((t.name.clone(), h));
    }
    assert!(
        all.iter().any(|(n, _)| n == name),
        "{name} not in the model"
    );
    drop(st);
    llmq_hfquant::writer::write_safetensors(&path, &all).unwrap();
}

#[test]
fn llama_act_order_and_mixtral_compressed_tensors_beat_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    calib_file(t);
    let llama = shared_model("llama");
    let probe = KlProbe::new(&llama, 8);
    let (g, _, mods, qc) = measure(
        t,
        &probe,
        &llama,
        "lg",
        &["gptq", "-q", "4bit", "--act-order"],
    );
    assert_eq!(qc["desc_act"], true);
    assert!(
        mods.values().filter(|q| !q.has_default_g_idx()).count() > 20,
        "act-order should permute the groups of most tensors"
    );
    let (r, ..) = measure(
        t,
        &probe,
        &llama,
        "lr",
        &["gptq", "-q", "4bit", "--method", "rtn"],
    );
    assert!(g < r, "GPTQ act-order KL {g} should beat RTN {r}");

    let mixtral = shared_model("mixtral");
    let probe = KlProbe::new(&mixtral, 8);
    let (c, v, mods, qc) = measure(
        t,
        &probe,
        &mixtral,
        "mc",
        &["compressed-tensors", "-q", "W4A16"],
    );
    assert_eq!(v["format"], "compressed-tensors");
    assert_eq!(qc["quant_method"], "compressed-tensors");
    assert_eq!(qc["format"], "pack-quantized");
    let w = &qc["config_groups"]["group_0"]["weights"];
    assert_eq!(
        (w["num_bits"].as_u64(), w["symmetric"].as_bool()),
        (Some(4), Some(true))
    );
    assert_eq!(
        (w["strategy"].as_str(), w["group_size"].as_u64()),
        (Some("group"), Some(128))
    );
    let ignore: Vec<&str> = qc["ignore"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(ignore.contains(&"lm_head"));
    for l in 0..4 {
        // routers stay in bf16 and are listed as not quantized
        let router = format!("model.layers.{l}.block_sparse_moe.gate");
        assert!(
            ignore.contains(&router.as_str()),
            "{router} not ignored: {ignore:?}"
        );
        assert!(!mods.contains_key(&router));
    }
    // 4 layers x (q, k, v, o + 8 experts x 3)
    assert_eq!(mods.len(), 4 * (4 + 24));
    let rep = v["metadata"]["tensors_report"].as_array().unwrap();
    let experts: Vec<&Value> = rep
        .iter()
        .filter(|r| r["name"].as_str().unwrap().contains(".experts."))
        .collect();
    assert_eq!(experts.len(), 96);
    // every expert got tokens on this text, and is GPTQ'd with its own Hessian
    assert!(experts
        .iter()
        .all(|r| r["method"] == "gptq" && r["tokens"].as_u64().unwrap() >= 16));
    let (cr, ..) = measure(
        t,
        &probe,
        &mixtral,
        "mr",
        &["compressed-tensors", "-q", "W4A16", "--method", "rtn"],
    );
    assert!(
        c < cr,
        "compressed-tensors GPTQ KL {c} should beat RTN {cr}"
    );
}

#[test]
fn dead_experts_get_a_reported_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    calib_file(t);
    // DeepSeek-V3 tiny: a very negative routing bias on expert 3 of layer 1 kills its
    // group (experts 2 and 3: groups of 2, a group scores its top-2 biased scores)
    let m = copy_model(&shared_model("deepseek-v3"), &t.join("dsv3"));
    edit_tensor(&m, "model.layers.1.mlp.gate.e_score_correction_bias", |b| {
        b[3] = -1.0e4
    });
    let probe = KlProbe::new(&m, 6);
    let (kl, v, mods, _) = measure(t, &probe, &m, "dg", &["gptq", "-q", "4bit"]);
    let rtn_args = ["gptq", "-q", "4bit", "--method", "rtn"];
    let (kl_rtn, ..) = measure(t, &probe, &m, "dr", &rtn_args);
    let rep = v["metadata"]["tensors_report"].as_array().unwrap();
    let find = |n: &str| {
        rep.iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("{n} not in the report"))
    };
    for e in [2, 3] {
        for p in ["gate_proj", "up_proj"] {
            let r = find(&format!("model.layers.1.mlp.experts.{e}.{p}.weight"));
            assert_eq!(r["method"], "gptq:all-tokens-hessian", "{r}");
            assert_eq!(r["tokens"], 0);
            assert!(r["note"]
                .as_str()
                .unwrap()
                .contains("no calibration tokens"));
        }
        let r = find(&format!("model.layers.1.mlp.experts.{e}.down_proj.weight"));
        assert_eq!(r["method"], "rtn:no-tokens", "{r}");
        assert!(mods.contains_key(&format!("model.layers.1.mlp.experts.{e}.down_proj")));
    }
    // the other experts of that layer are calibrated normally
    let r = find("model.layers.1.mlp.experts.0.gate_proj.weight");
    assert_eq!(r["method"], "gptq");
    // MLA projections and the shared expert are quantized too
    for n in [
        "self_attn.q_a_proj",
        "self_attn.kv_b_proj",
        "mlp.shared_experts.down_proj",
    ] {
        assert!(mods.contains_key(&format!("model.layers.1.{n}")), "{n}");
    }
    assert!(rep
        .iter()
        .all(|r| r["relative_rmse"].as_f64().unwrap().is_finite()));
    assert!(
        kl < kl_rtn,
        "GPTQ with fallbacks KL {kl} should still beat RTN {kl_rtn}"
    );
}

#[test]
fn bad_calibration_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let llama = shared_model("llama");
    let m = llama.to_str().unwrap();
    let o = t.to_str().unwrap();
    // empty file
    std::fs::write(t.join("empty.txt"), "").unwrap();
    let r = lq(
        t,
        &[
            "--format",
            "json",
            "quantize",
            m,
            "gptq",
            "-q",
            "4bit",
            "-o",
            o,
            "--calibration-data",
            "empty.txt",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.json()["message"].as_str().unwrap().contains("empty"));
    // shorter than one sample
    std::fs::write(t.join("short.txt"), "Just a few words.").unwrap();
    let r = lq(
        t,
        &[
            "--format",
            "json",
            "quantize",
            m,
            "gptq",
            "-q",
            "4bit",
            "-o",
            o,
            "--calibration-data",
            "short.txt",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("shorter than one sample"));
    // unknown level, AWQ at 3 bits, bad group size
    for args in [
        &["gptq", "-q", "5bit"][..],
        &["awq", "-q", "3bit"][..],
        &["gptq", "-q", "4bit", "--group-size", "100"][..],
    ] {
        let mut a = vec!["--format", "json", "quantize", m];
        a.extend_from_slice(args);
        a.extend(["-o", o]);
        let r = lq(t, &a);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(r.json()["error_type"], "InvalidArgumentError");
    }
    // samples longer than the context (2048): JSONL documents are truncated, and the
    // sequence length is cut to the context, both said in the result
    let text = std::fs::read_to_string(shared().join("data/corpus/train.txt")).unwrap();
    let docs: String = (0..2)
        .map(|k| {
            let d: String = text.chars().skip(k * 20_000).take(16_000).collect();
            serde_json::json!({ "text": d }).to_string() + "\n"
        })
        .collect();
    std::fs::write(t.join("long.jsonl"), docs).unwrap();
    let v = quantize(
        t,
        &llama,
        &[
            "gptq",
            "-q",
            "4bit",
            "-o",
            o,
            "-n",
            "long",
            "--calibration-data",
            "long.jsonl",
            "--calibration-seq-len",
            "4096",
        ],
    );
    let cal = &v["metadata"]["calibration"];
    assert_eq!(cal["seq_len"], 2048);
    assert_eq!(cal["tokens"], 4096);
    let notes = cal["notes"].to_string();
    assert!(
        notes.contains("exceeds the model's context of 2048"),
        "{notes}"
    );
    assert!(notes.contains("2 of 2 documents were truncated"), "{notes}");
}

#[test]
fn dead_channel_is_damped_nonfinite_activations_name_the_tensor_and_spilling_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let calib = calib_file(t);
    let c = calib.to_str().unwrap();
    let o = t.to_str().unwrap();
    let small = [
        "--calibration-data",
        c,
        "--calibration-samples",
        "8",
        "--calibration-seq-len",
        "128",
        "-o",
        o,
    ];
    // a dead input channel (norm weight 0): H has a zero row and column
    let m = copy_model(&shared_model("llama"), &t.join("dead"));
    edit_tensor(&m, "model.layers.0.input_layernorm.weight", |w| w[5] = 0.0);
    let mut a = vec!["gptq", "-q", "4bit", "-n", "dead-q"];
    a.extend_from_slice(&small);
    let v = quantize(t, &m, &a);
    let (mods, _) = unpack_all(&t.join("dead-q"));
    for p in ["q_proj", "k_proj", "v_proj"] {
        let q = &mods[&format!("model.layers.0.self_attn.{p}")];
        let w = q.dequantize();
        assert!(
            (0..q.out_features).all(|r| w[r * q.in_features + 5] == 0.0),
            "{p}: the dead column is zeroed as GPTQ does"
        );
    }
    assert!(v["metadata"]["tensors_report"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["damp_percent"].as_f64() == Some(0.01)));
    // spilling activations to disk gives the same bytes
    // (test hook: a RAM budget small enough to force it cannot hold a block, exit 5)
    let mut a = vec![
        "--format",
        "json",
        "quantize",
        m.to_str().unwrap(),
        "gptq",
        "-q",
        "4bit",
        "-n",
        "spilled",
    ];
    a.extend_from_slice(&small);
    let r = lq_env(t, &a, &[("LLM_QUANTIZE_TEST_SPILL_ACTIVATIONS", "1")]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(
        v["metadata"]["calibration"]["activations_spilled_to_disk"],
        true
    );
    assert_eq!(
        std::fs::read(t.join("dead-q/model.safetensors")).unwrap(),
        std::fs::read(t.join("spilled/model.safetensors")).unwrap()
    );
    // activations that overflow: a clear error naming the tensor, nothing left behind
    let m = copy_model(&shared_model("llama"), &t.join("inf"));
    edit_tensor(&m, "model.layers.0.input_layernorm.weight", |w| {
        w[7] = 3.0e38
    });
    let mut a = vec![
        "--format",
        "json",
        "quantize",
        m.to_str().unwrap(),
        "gptq",
        "-q",
        "4bit",
        "-n",
        "inf-q",
    ];
    a.extend_from_slice(&small);
    let r = lq(t, &a);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("tensor 'model.layers.0."), "{msg}");
    assert!(msg.contains("NaN or infinite"), "{msg}");
    assert!(!t.join("inf-q").exists());
    assert!(!t.join(".inf-q.partial").exists());
    // the source folder is never the output
    let mut a = vec![
        "--format",
        "json",
        "quantize",
        m.to_str().unwrap(),
        "gptq",
        "-q",
        "4bit",
        "-n",
        "inf",
    ];
    a.extend_from_slice(&small);
    assert_eq!(lq(t, &a).code, 2);
}

/// AWQ's scales folded into Gemma-3's `1 + w` norms and MLA's latent norms (DeepSeek-V3):
/// the result must still beat RTN.
#[test]
fn awq_folding_on_gemma3_and_deepseek_beats_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    calib_file(t);
    for name in ["gemma3", "deepseek-v3"] {
        let m = shared_model(name);
        let probe = KlProbe::new(&m, 6);
        let (a, v, ..) = measure(t, &probe, &m, &format!("{name}-a"), &["awq", "-q", "4bit"]);
        let rep = v["metadata"]["tensors_report"].as_array().unwrap();
        assert!(
            rep.iter()
                .any(|r| r["awq_ratio"].as_f64().is_some_and(|x| x > 0.0)),
            "{name}: some scales should be searched"
        );
        let rtn = ["awq", "-q", "4bit", "--method", "rtn"];
        let (r, ..) = measure(t, &probe, &m, &format!("{name}-r"), &rtn);
        assert!(a < r, "{name}: AWQ KL {a} should beat RTN {r}");
    }
}

/// GGUF k-quants with importance weights computed from calibration text beat plain
/// k-quants; the saved imatrix given back with `--imatrix` reproduces the file.
#[test]
fn gguf_imatrix_from_calibration_beats_plain_k_quants() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let calib = calib_file(t);
    let model = shared_model("qwen3");
    let probe = KlProbe::new(&model, 8);
    let o = t.to_str().unwrap();
    let mut kls = Vec::new();
    for (name, extra) in [
        ("plain.gguf", vec![]),
        (
            "imat.gguf",
            vec![
                "--calibration-data",
                calib.to_str().unwrap(),
                "--calibration-samples",
                "32",
                "--calibration-seq-len",
                "256",
            ],
        ),
    ] {
        let mut a = vec![
            "gguf",
            "-q",
            "Q3_K_S",
            "-o",
            o,
            "-n",
            name,
            "--no-checkpoints",
        ];
        a.extend(extra);
        quantize(t, &model, &a);
        let kl = probe.kl(&t.join(name));
        eprintln!("{name}: mean KL {kl:.5}");
        kls.push(kl);
    }
    assert!(
        kls[1] < kls[0],
        "imatrix Q3_K_S KL {} should beat plain {}",
        kls[1],
        kls[0]
    );
    let im = t.join("imat.imatrix.gguf");
    assert!(im.is_file());
    let a = [
        "gguf",
        "-q",
        "Q3_K_S",
        "-o",
        o,
        "-n",
        "again.gguf",
        "--no-checkpoints",
        "--imatrix",
        im.to_str().unwrap(),
    ];
    quantize(t, &model, &a);
    assert_eq!(
        std::fs::read(t.join("imat.gguf")).unwrap(),
        std::fs::read(t.join("again.gguf")).unwrap()
    );
}

/// Measurement helper, not run by default: `LQ_QDIR=<quantized folder>
/// LQ_DEQ=<new folder> cargo test --release -p llm-quantize --test calibrated --
/// --ignored dequantize_folder` writes the f32 dequantized copy the tests evaluate.
#[test]
#[ignore]
fn dequantize_folder() {
    let q = PathBuf::from(std::env::var("LQ_QDIR").expect("LQ_QDIR"));
    let d = PathBuf::from(std::env::var("LQ_DEQ").expect("LQ_DEQ"));
    let (mods, _) = dequantized_copy(&q, &d);
    eprintln!("{} modules dequantized into {}", mods.len(), d.display());
}

/// Q4_K_M with importance weights: ours from `--calibration-data` beats our plain
/// Q4_K_M, and is no worse than llama.cpp's own pipeline (`llama-imatrix` on the same
/// calibration text and token budget, then `llama-quantize --imatrix`) on the same
/// F16 source. KL against the original safetensors model, same windows for all three.
#[test]
fn imatrix_q4_k_m_against_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let calib = calib_file(t);
    let model = shared_model("qwen3");
    let probe = KlProbe::new(&model, 8);
    let o = t.to_str().unwrap();
    let (samples, seq) = ("32", "256");
    quantize(
        t,
        &model,
        &[
            "gguf",
            "-q",
            "F16",
            "-o",
            o,
            "-n",
            "f16.gguf",
            "--no-checkpoints",
        ],
    );
    quantize(
        t,
        &model,
        &[
            "gguf",
            "-q",
            "Q4_K_M",
            "-o",
            o,
            "-n",
            "plain.gguf",
            "--no-checkpoints",
        ],
    );
    let mut a = vec![
        "gguf",
        "-q",
        "Q4_K_M",
        "-o",
        o,
        "-n",
        "ours.gguf",
        "--no-checkpoints",
    ];
    a.extend(["--calibration-data", calib.to_str().unwrap()]);
    a.extend([
        "--calibration-samples",
        samples,
        "--calibration-seq-len",
        seq,
    ]);
    quantize(t, &model, &a);

    let run = |tool: &str, args: &[&str]| {
        let o = std::process::Command::new(llama_cpp_bin(tool))
            .current_dir(t)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{tool} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(
        "llama-imatrix",
        &[
            "-m",
            "f16.gguf",
            "-f",
            "calib.txt",
            "-c",
            seq,
            "--chunks",
            samples,
            "-t",
            "2",
            "--no-ppl",
            "-o",
            "llama.imatrix.gguf",
        ],
    );
    run(
        "llama-quantize",
        &[
            "--imatrix",
            "llama.imatrix.gguf",
            "f16.gguf",
            "llama.gguf",
            "Q4_K_M",
            "2",
        ],
    );

    let kl = |n: &str| {
        let k = probe.kl(&t.join(n));
        eprintln!("{n}: mean KL {k:.6}");
        k
    };
    let (plain, ours, llama) = (kl("plain.gguf"), kl("ours.gguf"), kl("llama.gguf"));
    assert!(
        ours < plain,
        "imatrix Q4_K_M KL {ours} should beat plain {plain}"
    );
    assert!(
        ours <= llama * 1.02,
        "our imatrix Q4_K_M KL {ours} is worse than llama.cpp's {llama}"
    );
}
