//! Our compressed-tensors FP layouts (`nvfp4-pack-quantized`, `mxfp4-pack-quantized`,
//! `float-quantized` per channel, per tensor and 128×128 blocks), decompressed by the
//! `compressed-tensors` package's own compressors (`tests/py/check_ct_fp.py`), equal
//! our dequantized weights exactly, for round-to-nearest with and without the MSE
//! scale search, on random weights with outliers and on a real tensor of the shared
//! Llama. Needs the Python of scripts/install-py-test-deps.sh; fails without it.

mod common;

use common::{python, run_py};
use llmq_formats::safetensors::SafetensorsModel;
use llmq_hfquant::ct_fp::{pack, quantization_config};
use llmq_hfquant::fp_quantized::rtn_fp;
use llmq_hfquant::writer::write_safetensors;
use llmq_hfquant::{FpScheme, HfTensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

fn random_weight(seed: u64, out: usize, inp: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..out * inp)
        .map(|k| {
            let v: f32 = rng.gen_range(-0.05..0.05);
            // a few outlier input channels, as real activations-facing weights have
            if k % inp < 3 {
                v * 40.0
            } else {
                v
            }
        })
        .collect()
}

fn llama_weight() -> (Vec<f32>, usize, usize) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/llama/model.safetensors");
    let m = SafetensorsModel::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let name = "model.layers.0.self_attn.q_proj.weight";
    let info = m.tensors().find(|t| t.name == name).unwrap().clone();
    (m.f32(name).unwrap(), info.shape[0], info.shape[1])
}

fn write_case(
    dir: &Path,
    scheme: FpScheme,
    mse: bool,
    weights: &[(String, Vec<f32>, usize, usize)],
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut tensors = Vec::new();
    let mut expected = Vec::new();
    let mut prefixes = Vec::new();
    for (prefix, w, o, i) in weights {
        let q = rtn_fp(w, *o, *i, scheme, mse);
        tensors.extend(pack(prefix, &q));
        expected.push((
            prefix.clone(),
            HfTensor::from_f32(&[*o, *i], &q.dequantize()),
        ));
        prefixes.push(prefix.clone());
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    write_safetensors(&dir.join("expected.safetensors"), &expected).unwrap();
    let qc = quantization_config(scheme, &["lm_head".to_string()]);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "quantization_config": qc })).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("case.json"),
        serde_json::json!({ "prefixes": prefixes }).to_string(),
    )
    .unwrap();
}

#[test]
fn compressed_tensors_decompresses_our_fp_layouts_to_our_weights() {
    let (py, src) = python();
    let root = tempfile::tempdir().unwrap();
    let (lw, lo, li) = llama_weight();
    let weights = vec![
        (
            "model.layers.0.mlp.up_proj".to_string(),
            random_weight(1, 96, 256),
            96,
            256,
        ),
        ("model.layers.0.self_attn.q_proj".to_string(), lw, lo, li),
        (
            "model.layers.1.mlp.down_proj".to_string(),
            random_weight(2, 256, 384),
            256,
            384,
        ),
    ];
    let mut n = 0;
    for scheme in [
        FpScheme::Nvfp4,
        FpScheme::Mxfp4,
        FpScheme::Fp8Channel,
        FpScheme::Fp8Tensor,
        FpScheme::Fp8Block,
    ] {
        for mse in [false, true] {
            write_case(
                &root.path().join(format!("case{n:02}")),
                scheme,
                mse,
                &weights,
            );
            n += 1;
        }
    }
    let out = run_py(&py, &src, "check_ct_fp.py", root.path());
    assert!(
        out.contains(&format!("{} modules", n * weights.len())),
        "{out}"
    );
}
