//! The harness of the calibrated-format tests: every output read back through
//! llmq-hfquant's unpackers into a dequantized f32 copy, and the KL-divergence probe
//! that runs the copies with llmq-engine against the original model.
#![allow(dead_code)]

use super::common::*;
use llmq_engine::{KvCache, Logits, Model, SeqStep, WeightSource};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::compressed_tensors::{self as ct, CtStrategy, CtWeightScheme};
use llmq_hfquant::gptq::{GptqFormat, GptqTensors};
use llmq_hfquant::{Dtype, HfTensor, IntQuantized};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Calibration text: the start of the shared train split (the test split is disjoint).
pub(crate) fn calib_file(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shared().join("data/corpus/train.txt")).unwrap();
    let cut: String = text.chars().take(200_000).collect();
    let p = dir.join("calib.txt");
    std::fs::write(&p, cut).unwrap();
    p
}

pub(crate) fn tensor(st: &SafetensorsModel, name: &str) -> Option<HfTensor> {
    let v = st.get(name).ok()?;
    let dt = match v.info.dtype {
        StDtype::F32 => Dtype::F32,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::BF16,
        StDtype::Other("I32") => Dtype::I32,
        StDtype::Other("I64") => Dtype::I64,
        d => panic!("unexpected dtype {d:?} of {name}"),
    };
    Some(HfTensor::from_raw(dt, &v.info.shape, v.bytes.to_vec()))
}

/// Unpack every quantized module of a GPTQ / AWQ / compressed-tensors folder.
pub(crate) fn unpack_all(dir: &Path) -> (BTreeMap<String, IntQuantized>, Value) {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let qc = cfg["quantization_config"].clone();
    let st = SafetensorsModel::open(dir).unwrap();
    let get = |n: &str| tensor(&st, n);
    let mut out = BTreeMap::new();
    let method = qc["quant_method"].as_str().unwrap().to_string();
    let names: Vec<String> = st.tensors().map(|t| t.name.clone()).collect();
    for n in &names {
        let q = match method.as_str() {
            "gptq" => {
                let Some(prefix) = n.strip_suffix(".qweight") else {
                    continue;
                };
                let bits = qc["bits"].as_u64().unwrap() as u8;
                let gs = qc["group_size"].as_i64().unwrap();
                let fmt =
                    GptqFormat::from_checkpoint_format(qc["checkpoint_format"].as_str().unwrap())
                        .unwrap();
                let t = GptqTensors::from_hf_tensors(bits, get, prefix).unwrap();
                let q = llmq_hfquant::gptq::unpack(
                    &t,
                    (gs > 0).then_some(gs as usize),
                    qc["sym"].as_bool().unwrap(),
                    fmt,
                )
                .unwrap();
                (prefix.to_string(), q)
            }
            "awq" => {
                let Some(prefix) = n.strip_suffix(".qweight") else {
                    continue;
                };
                let qw = get(n).unwrap();
                let sc = get(&format!("{prefix}.scales")).unwrap();
                let t = llmq_hfquant::awq::AwqTensors {
                    in_features: qw.shape[0],
                    out_features: sc.shape[1],
                    group_size: qc["group_size"].as_u64().unwrap() as usize,
                    qweight: qw.to_u32_words().unwrap(),
                    qzeros: get(&format!("{prefix}.qzeros"))
                        .unwrap()
                        .to_u32_words()
                        .unwrap(),
                    scales: sc.to_f16_vec().unwrap(),
                };
                (prefix.to_string(), llmq_hfquant::awq::unpack(&t).unwrap())
            }
            "compressed-tensors" => {
                let Some(prefix) = n.strip_suffix(".weight_packed") else {
                    continue;
                };
                let w = &qc["config_groups"]["group_0"]["weights"];
                let shape = get(&format!("{prefix}.weight_shape"))
                    .unwrap()
                    .to_i64_vec()
                    .unwrap();
                let sc = get(&format!("{prefix}.weight_scale")).unwrap();
                let scheme = CtWeightScheme {
                    num_bits: w["num_bits"].as_u64().unwrap() as u8,
                    symmetric: w["symmetric"].as_bool().unwrap(),
                    strategy: match w["strategy"].as_str().unwrap() {
                        "group" => CtStrategy::Group(w["group_size"].as_u64().unwrap() as usize),
                        _ => CtStrategy::Channel,
                    },
                };
                let t = ct::CtTensors {
                    num_bits: scheme.num_bits,
                    out_features: shape[0] as usize,
                    in_features: shape[1] as usize,
                    n_groups: sc.shape[1],
                    weight_packed: get(n).unwrap().to_u32_words().unwrap(),
                    weight_scale: sc.to_f16_vec().unwrap(),
                    weight_zero_point: get(&format!("{prefix}.weight_zero_point"))
                        .map(|z| z.to_u32_words().unwrap()),
                    weight_g_idx: get(&format!("{prefix}.weight_g_idx"))
                        .map(|g| g.to_i32_vec().unwrap()),
                };
                (prefix.to_string(), ct::unpack(&t, &scheme).unwrap())
            }
            m => panic!("unknown quant_method {m}"),
        };
        out.insert(q.0, q.1);
    }
    (out, qc)
}

/// An f32 copy of a quantized folder with dequantized weights (loadable by the engine).
pub(crate) fn dequantized_copy(qdir: &Path, dst: &Path) -> (BTreeMap<String, IntQuantized>, Value) {
    let (mods, qc) = unpack_all(qdir);
    std::fs::create_dir_all(dst).unwrap();
    let st = SafetensorsModel::open(qdir).unwrap();
    let mut tensors: Vec<(String, HfTensor)> = Vec::new();
    for t in st.tensors() {
        let is_packed = mods
            .keys()
            .any(|p| t.name.starts_with(&format!("{p}.")) && !t.name.ends_with(".bias"));
        if is_packed {
            continue;
        }
        tensors.push((t.name.clone(), tensor(&st, &t.name).unwrap()));
    }
    for (p, q) in &mods {
        let w = q.dequantize();
        assert!(
            w.iter().all(|v| v.is_finite()),
            "{p} dequantizes to non-finite values"
        );
        tensors.push((
            format!("{p}.weight"),
            HfTensor::from_f32(&[q.out_features, q.in_features], &w),
        ));
    }
    llmq_hfquant::writer::write_safetensors(&dst.join("model.safetensors"), &tensors).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(qdir.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(qdir.join(f), dst.join(f)).unwrap();
    }
    (mods, qc)
}

/// Logits of evenly spaced 256-token windows of the test split.
pub(crate) struct KlProbe {
    pub(crate) windows: Vec<Vec<u32>>,
    pub(crate) base: Vec<Vec<f32>>,
}

pub(crate) fn logits(model: &Model, w: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(model, w.len());
    let mut steps = [SeqStep {
        tokens: w,
        cache: &mut cache,
        logits: Logits::All,
    }];
    model.forward(&mut steps).unwrap().remove(0)
}

pub(crate) fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    let l = s.ln() + m;
    x.iter().map(|&v| v as f64 - l).collect()
}

impl KlProbe {
    pub(crate) fn new(base_dir: &Path, n_windows: usize) -> KlProbe {
        let tok = llmq_tokenizer::Tokenizer::from_hf_dir(base_dir).unwrap();
        let text = std::fs::read_to_string(shared().join("data/corpus/test.txt")).unwrap();
        let ids = tok.encode(&text, false, false).unwrap();
        let n_all = ids.len() / 256;
        let windows: Vec<Vec<u32>> = (0..n_windows)
            .map(|k| {
                let s = k * n_all / n_windows * 256;
                ids[s..s + 256].to_vec()
            })
            .collect();
        let model = Model::load(&WeightSource::open_hf(base_dir).unwrap()).unwrap();
        let base = windows.iter().map(|w| logits(&model, w)).collect();
        KlProbe { windows, base }
    }

    /// Mean KL(base ‖ model) over all positions.
    pub(crate) fn kl(&self, dir: &Path) -> f64 {
        let model = Model::load(&WeightSource::open(dir).unwrap()).unwrap();
        let v = model.n_vocab();
        let (mut s, mut n) = (0.0f64, 0usize);
        for (w, b) in self.windows.iter().zip(&self.base) {
            let l = logits(&model, w);
            for t in 0..w.len() {
                let p = log_softmax(&b[t * v..(t + 1) * v]);
                let q = log_softmax(&l[t * v..(t + 1) * v]);
                s += p
                    .iter()
                    .zip(&q)
                    .map(|(a, b)| a.exp() * (a - b))
                    .sum::<f64>();
                n += 1;
            }
        }
        assert!(s.is_finite());
        s / n as f64
    }
}

/// Runs `quantize` with JSON output; panics unless it succeeds.
pub(crate) fn quantize(cwd: &Path, model: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json", "quantize", model.to_str().unwrap()];
    all.extend_from_slice(args);
    let r = lq(cwd, &all);
    assert_eq!(
        r.code, 0,
        "quantize {args:?} failed:\n{}\n{}",
        r.stdout, r.stderr
    );
    let v = r.json();
    assert_eq!(v["status"], "success");
    assert_eq!(v["validation_status"], "valid");
    v
}

pub(crate) fn calib_args(calib: &Path) -> Vec<String> {
    vec![
        "--calibration-data".into(),
        calib.to_str().unwrap().into(),
        "--calibration-samples".into(),
        "32".into(),
        "--calibration-seq-len".into(),
        "256".into(),
    ]
}

/// quantize + dequantized copy + KL; returns (kl, result json, modules, quantization_config)
pub(crate) fn measure(
    tmp: &Path,
    probe: &KlProbe,
    model: &Path,
    name: &str,
    args: &[&str],
) -> (f64, Value, BTreeMap<String, IntQuantized>, Value) {
    let calib = tmp.join("calib.txt");
    let ca = calib_args(&calib);
    let mut a: Vec<&str> = args.to_vec();
    a.extend(ca.iter().map(|s| s.as_str()));
    a.extend(["-o", tmp.to_str().unwrap(), "-n", name]);
    let v = quantize(tmp, model, &a);
    let out = PathBuf::from(v["output_path"].as_str().unwrap());
    assert_eq!(out, tmp.join(name));
    let deq = tmp.join(format!("{name}-deq"));
    let (mods, qc) = dequantized_copy(&out, &deq);
    let kl = probe.kl(&deq);
    eprintln!("{name}: mean KL {kl:.5}");
    (kl, v, mods, qc)
}
