//! Prototype Hessian collection for the trellis converter example (Llama/Qwen2-style names only):
//! runs the original model block by block through the engine on calibration text, accumulates
//! `XᵀX/n` per Linear input, and writes one f64 `in × in` matrix per Hugging Face module
//! (`model.layers.N.self_attn.q_proj`, …) to a safetensors file. Unlike exllamav3 (and our
//! GPTQ), the Hessians come from the *original* model's activations, not the quantized one's.
//! `cargo run --release -p llmq-trellis --example exl3_hessians MODEL_DIR TEXT SAMPLES SEQ OUT`
use llmq_engine::{LinearObserver, LinearSite, Model, WeightSource};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;

/// Per site: the weights it feeds, Σ xᵀx, rows, width.
type Site = (Vec<&'static str>, Vec<f64>, u64, usize);

#[derive(Default)]
struct Col {
    sites: BTreeMap<&'static str, Site>,
}

impl LinearObserver for Col {
    fn observe(&mut self, site: &LinearSite<'_>, x: &[f32], rows: usize) {
        if rows == 0 || site.expert.is_some() {
            return;
        }
        let c = x.len() / rows;
        let e = self
            .sites
            .entry(site.weights[0])
            .or_insert_with(|| (site.weights.to_vec(), vec![0.0; c * c], 0, c));
        for r in x.chunks_exact(c) {
            for i in 0..c {
                let xi = r[i] as f64;
                let row = &mut e.1[i * c..(i + 1) * c];
                for (h, &xj) in row.iter_mut().zip(r) {
                    *h += xi * xj as f64;
                }
            }
        }
        e.2 += rows as u64;
    }
}

fn hf_module(layer: usize, gguf: &str) -> Option<String> {
    let m = match gguf {
        "attn_q.weight" => "self_attn.q_proj",
        "attn_k.weight" => "self_attn.k_proj",
        "attn_v.weight" => "self_attn.v_proj",
        "attn_output.weight" => "self_attn.o_proj",
        "ffn_gate.weight" => "mlp.gate_proj",
        "ffn_up.weight" => "mlp.up_proj",
        "ffn_down.weight" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{m}"))
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (dir, text) = (&a[0], std::fs::read_to_string(&a[1]).unwrap());
    let (samples, seq): (usize, usize) = (a[2].parse().unwrap(), a[3].parse().unwrap());
    let tok = llmq_tokenizer::Tokenizer::from_hf_dir(dir).unwrap();
    let ids = tok.encode(&text, false, false).unwrap();
    let n = samples.min(ids.len() / seq);
    let model = Model::load(&WeightSource::open_hf(std::path::Path::new(dir)).unwrap()).unwrap();
    let mut hidden = Vec::new();
    for s in 0..n {
        hidden.extend(model.embed(&ids[s * seq..(s + 1) * seq]).unwrap());
    }
    let lens = vec![seq; n];
    let mut out: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for layer in 0..model.hp.n_layer {
        let mut col = Col::default();
        model
            .forward_block(layer, &mut hidden, &lens, Some(&mut col))
            .unwrap();
        for (ws, h, rows, c) in col.sites.into_values() {
            let bytes: Vec<u8> = h
                .iter()
                .flat_map(|v| (v / rows as f64).to_le_bytes())
                .collect();
            for w in ws {
                if let Some(m) = hf_module(layer, w) {
                    out.insert(m, (vec![c, c], bytes.clone()));
                }
            }
        }
    }
    let views: Vec<(String, TensorView<'_>)> = out
        .iter()
        .map(|(k, (s, b))| {
            (
                k.clone(),
                TensorView::new(Dtype::F64, s.clone(), b).unwrap(),
            )
        })
        .collect();
    println!("{} Hessians from {n} samples x {seq} tokens", views.len());
    safetensors::serialize_to_file(views, None, std::path::Path::new(&a[4])).unwrap();
}
