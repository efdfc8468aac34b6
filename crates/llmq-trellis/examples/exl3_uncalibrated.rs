//! Prototype converter, **without calibration** (H = I: no LDLQ feedback), from a Hugging Face
//! folder to an EXL3 folder, for checking the format with exllamav3 and measuring our decoder
//! before the calibrated pipeline method exists. Optionally also writes a Hugging Face folder whose
//! linears hold our own reconstruction (f32), which `llm-quantize eval --base` can compare.
//! `cargo run --release -p llmq-trellis --example exl3_uncalibrated SRC OUT BITS HEAD_BITS [DEQUANT]`;
//! with `EXL3_HESSIANS=FILE` (from the `exl3_hessians` example) the decoder's linears get LDLQ with
//! their Hessian (the head stays uncalibrated).
use half::{bf16, f16};
use llmq_trellis::decode::reconstruct;
use llmq_trellis::exl3_format::{self, linear_tensors, StoredTensor};
use llmq_trellis::quantize::{quantize_linear, Exl3Config};
use llmq_trellis::Codebook;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

type Out = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn to_f32(t: &TensorView<'_>) -> Vec<f32> {
    let d = t.data();
    match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("unsupported dtype {other:?}"),
    }
}

fn stored(t: &StoredTensor) -> (Dtype, Vec<usize>, Vec<u8>) {
    let d = match t.dtype {
        exl3_format::Dtype::I16 => Dtype::I16,
        exl3_format::Dtype::I32 => Dtype::I32,
        exl3_format::Dtype::F16 => Dtype::F16,
    };
    (d, t.shape.clone(), t.data.clone())
}

fn write(path: &Path, out: &Out) {
    let views: Vec<(String, TensorView<'_>)> = out
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (src, dst) = (Path::new(&a[0]), Path::new(&a[1]));
    let (bits, head_bits): (u32, u32) = (a[2].parse().unwrap(), a[3].parse().unwrap());
    let deq = a.get(4).map(Path::new);
    let cb = Codebook::Mul1;
    std::fs::create_dir_all(dst).unwrap();
    if let Some(d) = deq {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    let files: Vec<Vec<u8>> = std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with("model") && f.ends_with(".safetensors")
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let sts: Vec<SafeTensors<'_>> = files
        .iter()
        .map(|b| SafeTensors::deserialize(b).unwrap())
        .collect();
    let mut all: BTreeMap<String, TensorView<'_>> = BTreeMap::new();
    for st in &sts {
        for (n, t) in st.tensors() {
            all.insert(n, t);
        }
    }
    let mut jobs: Vec<(String, String, u32)> = Vec::new(); // (source weight, module, K)
    for (n, t) in &all {
        let linear =
            n.starts_with("model.layers.") && n.ends_with("_proj.weight") && t.shape().len() == 2;
        if linear {
            jobs.push((n.clone(), n.trim_end_matches(".weight").to_string(), bits));
        }
    }
    if head_bits < 16 {
        if all.contains_key("lm_head.weight") {
            jobs.push(("lm_head.weight".into(), "lm_head".into(), head_bits));
        } else if tied {
            jobs.push((
                "model.embed_tokens.weight".into(),
                "lm_head".into(),
                head_bits,
            ));
        }
    }
    let hess_bytes = std::env::var("EXL3_HESSIANS")
        .ok()
        .map(|p| std::fs::read(p).unwrap());
    let hess = hess_bytes
        .as_ref()
        .map(|b| SafeTensors::deserialize(b).unwrap());
    let mut exl3: Out = BTreeMap::new();
    let mut dq: Out = BTreeMap::new();
    let mut storage = Map::new();
    let quantized: std::collections::BTreeSet<String> = jobs.iter().map(|j| j.0.clone()).collect();
    let (mut numel, mut bits_sum) = (0f64, 0f64);
    let t0 = std::time::Instant::now();
    for (idx, (name, module, k)) in jobs.iter().enumerate() {
        let t = &all[name];
        let (o, i) = (t.shape()[0], t.shape()[1]);
        let w = to_f32(t);
        let bias = all.get(&format!("{module}.bias")).map(to_f32);
        let ts = std::time::Instant::now();
        let mut qc = Exl3Config::new(*k, cb, idx as u64);
        qc.scale_sample_cap = std::env::var("EXL3_SCALE_SAMPLE_CAP")
            .ok()
            .and_then(|v| v.parse().ok());
        let h: Option<Vec<f64>> = hess.as_ref().and_then(|h| h.tensor(module).ok()).map(|t| {
            t.data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect()
        });
        let q = quantize_linear(&w, o, i, h.as_deref(), &qc).unwrap();
        let r = reconstruct(&q.trellis, &q.suh, &q.svh, q.k, cb);
        let mut back = vec![0f32; o * i];
        let (mut num, mut den) = (0f64, 0f64);
        for oo in 0..o {
            for ii in 0..i {
                let v = r[ii * q.out_features + oo];
                back[oo * i + ii] = v;
                num += ((v - w[oo * i + ii]) as f64).powi(2);
                den += (w[oo * i + ii] as f64).powi(2);
            }
        }
        println!(
            "{module}: K={k} {o}x{i} rel err {:.5} proxy {} g {:.3} {:.1}s",
            num / den,
            q.proxy_err.map_or("-".to_string(), |p| format!("{p:.5}")),
            q.g_scale,
            ts.elapsed().as_secs_f64()
        );
        let tensors = linear_tensors(module, &q, bias.as_deref());
        storage.insert(
            module.clone(),
            exl3_format::storage_entry(&tensors, Some(&q)),
        );
        for st in &tensors {
            exl3.insert(st.name.clone(), stored(st));
        }
        if module != "lm_head" || all.contains_key("lm_head.weight") {
            if *k == bits {
                numel += (o * i) as f64;
                bits_sum += (o * i) as f64 * *k as f64;
            }
            let bytes: Vec<u8> = back.iter().flat_map(|v| v.to_le_bytes()).collect();
            dq.insert(name.clone(), (Dtype::F32, vec![o, i], bytes));
        }
    }
    for (n, t) in &all {
        if quantized.contains(n) && n != "model.embed_tokens.weight" {
            continue;
        }
        let entry = (t.dtype(), t.shape().to_vec(), t.data().to_vec());
        let module = n.rsplit_once('.').map(|x| x.0).unwrap_or(n);
        if !n.ends_with(".bias") || !storage.contains_key(module) {
            exl3.insert(n.clone(), entry.clone());
            let e = storage
                .entry(module.to_string())
                .or_insert_with(|| json!({"stored_tensors": {}}));
            e["stored_tensors"][n] = json!({"shape": t.shape(), "n_bytes": t.data().len(), "dtype": format!("torch.{}", match t.dtype() { Dtype::BF16 => "bfloat16", Dtype::F16 => "float16", Dtype::F32 => "float32", _ => "other" })});
        }
        dq.insert(n.clone(), entry);
    }
    println!(
        "quantized {} linears in {:.1}s",
        jobs.len(),
        t0.elapsed().as_secs_f64()
    );
    write(&dst.join("model.safetensors"), &exl3);
    let orig_cfg = cfg.clone();
    let qc = exl3_format::quantization_config(
        "llm-quantize-prototype",
        bits_sum / numel.max(1.0),
        head_bits,
        None,
        true,
        cb,
    );
    if cfg.get("tie_word_embeddings").is_some() {
        cfg["tie_word_embeddings"] = json!(false);
    }
    cfg["quantization_config"] = qc.clone();
    std::fs::write(
        dst.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let mut qcj = qc;
    qcj["tensor_storage"] = Value::Object(storage);
    std::fs::write(
        dst.join("quantization_config.json"),
        serde_json::to_string_pretty(&qcj).unwrap(),
    )
    .unwrap();
    for e in std::fs::read_dir(src).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        let f = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_file()
            && !f.ends_with(".safetensors")
            && f != "config.json"
            && f != "model.safetensors.index.json"
        {
            std::fs::copy(&p, dst.join(&f)).unwrap();
            if let Some(d) = deq {
                std::fs::copy(&p, d.join(&f)).unwrap();
            }
        }
    }
    if let Some(d) = deq {
        write(&d.join("model.safetensors"), &dq);
        std::fs::write(
            d.join("config.json"),
            serde_json::to_string_pretty(&orig_cfg).unwrap(),
        )
        .unwrap();
    }
}
