//! Measurement tool for issue 19 (not a command): RTN, GPTQ and MR-GPTQ on the FP4 grids
//! of every dense Linear of a Hugging Face model, written as a dense f32 "fake-quant"
//! copy (the dequantized weights; for MR-GPTQ `Ŵ'·Rᵀ`, which is what rotating the
//! activations at run time computes) for `llm-quantize eval OUT --base MODEL`.
//!
//! GPTQ's Hessians come from the full-precision model's activations, block by block
//! (`Model::forward_block` with an observer), not from the partly quantized model as
//! the calibrated executor does. Dense models only (MoE experts and MLA are not
//! handled here).
//!
//!   cargo run --release -p llmq-pipeline --example fp_methods_kl -- \
//!       MODEL_DIR OUT_DIR nvfp4|mxfp4 rtn|gptq|mr-gptq [HADAMARD=32] [SAMPLES=32]

use llmq_arch::{gguf_plan, ArchConfig};
use llmq_calib::fp_gptq::{mr_gptq_quantize, unrotate, FpGptqConfig};
use llmq_calib::HessianAccumulator;
use llmq_engine::{LinearObserver, LinearSite, Model, WeightSource};
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::fp_quantized::rtn_fp;
use llmq_hfquant::writer::write_safetensors;
use llmq_hfquant::{Dtype, FpScheme, HfTensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Hessian per Linear input site of one block, keyed by the GGUF weight names.
#[derive(Default)]
struct Hessians {
    sites: BTreeMap<&'static str, (Vec<&'static str>, HessianAccumulator)>,
}

impl LinearObserver for Hessians {
    fn observe(&mut self, site: &LinearSite<'_>, x: &[f32], rows: usize) {
        if rows == 0 || site.expert.is_some() {
            return;
        }
        let cols = x.len() / rows;
        let e = self
            .sites
            .entry(site.weights[0])
            .or_insert_with(|| (site.weights.to_vec(), HessianAccumulator::new(cols)));
        e.1.add(x, rows);
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        a.len() >= 4,
        "usage: MODEL_DIR OUT_DIR nvfp4|mxfp4 rtn|gptq|mr-gptq [HADAMARD] [SAMPLES]"
    );
    let (src, out) = (PathBuf::from(&a[0]), PathBuf::from(&a[1]));
    let scheme = match a[2].as_str() {
        "nvfp4" => FpScheme::Nvfp4,
        "mxfp4" => FpScheme::Mxfp4,
        s => panic!("scheme {s}"),
    };
    let method = a[3].clone();
    let had: usize = a.get(4).map_or(32, |s| s.parse().unwrap());
    let samples: usize = a.get(5).map_or(32, |s| s.parse().unwrap());

    let cfg = ArchConfig::from_path(&src).unwrap();
    let st = SafetensorsModel::open(&src).unwrap();
    let list: Vec<(String, Vec<usize>)> = st
        .tensors()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let plan = gguf_plan(&cfg, &list).unwrap();
    // GGUF name → HF source names (row permutations do not touch the input columns)
    let hf_of: BTreeMap<String, Vec<String>> = plan
        .tensors
        .iter()
        .map(|t| (t.gguf_name.clone(), t.sources.clone()))
        .collect();

    let mut weights: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let quantize = |name: &str, w: &[f32], o: usize, i: usize, h: Option<&[f64]>| -> Vec<f32> {
        match (method.as_str(), h) {
            ("rtn", _) | (_, None) => rtn_fp(w, o, i, scheme, true).dequantize(),
            ("gptq", Some(h)) => {
                mr_gptq_quantize(name, w, o, i, h, &FpGptqConfig::new(scheme), None)
                    .unwrap()
                    .quantized
                    .dequantize()
            }
            ("mr-gptq", Some(h)) => {
                let r = mr_gptq_quantize(name, w, o, i, h, &FpGptqConfig::new(scheme), Some(had))
                    .unwrap();
                unrotate(&r.quantized.dequantize(), i, had)
            }
            (m, _) => panic!("method {m}"),
        }
    };

    let model = Model::load(&WeightSource::open_hf(&src).unwrap()).unwrap();
    let tok = llmq_tokenizer::Tokenizer::from_hf_dir(&src).unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/corpus/train.txt"),
    )
    .unwrap();
    let ids = tok
        .encode(&text[..text.len().min(400_000)], false, false)
        .unwrap();
    let seq = 256;
    let n = samples.min(ids.len() / seq);
    let lens = vec![seq; n];
    let mut hidden = model.embed(&ids[..n * seq]).unwrap();
    for layer in 0..model.hp.n_layer {
        let mut obs = Hessians::default();
        if method != "rtn" {
            model
                .forward_block(layer, &mut hidden.clone(), &lens, Some(&mut obs))
                .unwrap();
        }
        let mut done = Vec::new();
        for (gguf_w, hf_names) in &hf_of {
            let Some(rest) = gguf_w.strip_prefix(&format!("blk.{layer}.")) else {
                continue;
            };
            let h = obs
                .sites
                .values()
                .find(|(ws, _)| ws.contains(&rest))
                .map(|(_, acc)| acc.clone().finish());
            for hf in hf_names {
                let info = st.tensors().find(|t| &t.name == hf).unwrap().clone();
                if info.shape.len() != 2 || !hf.ends_with("_proj.weight") {
                    continue;
                }
                let (o, i) = (info.shape[0], info.shape[1]);
                let w = st.f32(hf).unwrap();
                if method != "rtn" && h.is_none() {
                    eprintln!("{hf}: no Hessian, RTN");
                }
                weights.insert(hf.clone(), quantize(hf, &w, o, i, h.as_deref()));
                done.push(hf.clone());
            }
        }
        eprintln!("layer {layer}: {} Linears", done.len());
        model
            .forward_block(layer, &mut hidden, &lens, None)
            .unwrap();
    }
    std::fs::create_dir_all(&out).unwrap();
    let mut tensors = Vec::new();
    for t in st.tensors() {
        let v = match weights.get(&t.name) {
            Some(v) => HfTensor::from_f32(&t.shape, v),
            None => {
                let view = st.get(&t.name).unwrap();
                let dt = match view.info.dtype {
                    llmq_formats::safetensors::StDtype::BF16 => Dtype::BF16,
                    llmq_formats::safetensors::StDtype::F16 => Dtype::F16,
                    _ => Dtype::F32,
                };
                HfTensor::from_raw(dt, &t.shape, view.bytes.to_vec())
            }
        };
        tensors.push((t.name.clone(), v));
    }
    write_safetensors(&out.join("model.safetensors"), &tensors).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.contains("safetensors") && e.path().is_file() && name != "golden.json" {
            std::fs::copy(e.path(), out.join(&name)).unwrap();
        }
    }
    eprintln!(
        "wrote {} ({} quantized Linears)",
        out.display(),
        weights.len()
    );
}
