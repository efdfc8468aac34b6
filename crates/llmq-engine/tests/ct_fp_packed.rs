//! compressed-tensors floating-point checkpoints (NVFP4, MXFP4, FP8 per channel, per
//! tensor and in 128×128 blocks) run packed in the engine (`llmq_kernels::fp_blocks`):
//! every Linear of a shared model (llama, and qwen3-moe for stacked experts) is RTN-
//! quantized with `llmq_hfquant::fp_quantized`, written with `ct_fp`, and loaded; its
//! logits must equal those of the same engine on a safetensors copy holding the
//! dequantized weights (what the engine loaded before) to float rounding: KL ≤ 1e-5
//! and the same greedy token at every position. Checkpoints stored under MR-GPTQ's
//! block-Hadamard input rotation (compressed-tensors `transform_config`) stay packed
//! too, the rotation applied to the activations. MXFP4 by default runs as ggml's MXFP4
//! (Q8_0 activations), which is checked for closeness.

mod common;
use common::{logits, shared, test_tokens};
use llmq_engine::{Model, WeightSource};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::ct_fp;
use llmq_hfquant::fp_quantized::rtn_fp;
use llmq_hfquant::hadamard::unrotate;
use llmq_hfquant::writer::{config_with_quantization, write_json, ShardedWriter};
use llmq_hfquant::{Dtype, FpScheme, HfTensor};
use llmq_kernels::{FpType, IntAct, WeightType};
use serde_json::Value;
use std::path::Path;

fn is_linear(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && name.ends_with(".weight") && name.contains("_proj.")
}

/// The checkpoint in `qdir` and its dequantized twin in `ddir`.
fn write_pair(model: &Path, scheme: FpScheme, rot: Option<usize>, qdir: &Path, ddir: &Path) {
    let st = SafetensorsModel::open(model).unwrap();
    let mut qw = ShardedWriter::new(qdir, 1 << 40).unwrap();
    let mut dw = ShardedWriter::new(ddir, 1 << 40).unwrap();
    let mut names: Vec<String> = st.tensors().map(|t| t.name.clone()).collect();
    names.sort();
    for name in names {
        let view = st.get(&name).unwrap();
        let shape = view.info.shape.clone();
        if !is_linear(&name, &shape) {
            let dt = match view.info.dtype {
                StDtype::BF16 => Dtype::BF16,
                StDtype::F16 => Dtype::F16,
                StDtype::F32 => Dtype::F32,
                d => panic!("{name}: {d:?}"),
            };
            let t = HfTensor::from_raw(dt, &shape, view.bytes.to_vec());
            qw.add(name.clone(), t.clone()).unwrap();
            dw.add(name, t).unwrap();
            continue;
        }
        let (out, inp) = (shape[0], shape[1]);
        let mut w = view.to_f32().unwrap();
        if let Some(b) = rot {
            w = unrotate(&w, inp, b); // W·R (R is its own inverse)
        }
        let q = rtn_fp(&w, out, inp, scheme, false);
        let prefix = name.strip_suffix(".weight").unwrap();
        qw.add_all(ct_fp::pack(prefix, &q)).unwrap();
        let mut deq = q.dequantize();
        if let Some(b) = rot {
            deq = unrotate(&deq, inp, b);
            let (n, t) = ct_fp::rotation_tensor(prefix, b);
            qw.add(n, t).unwrap();
        }
        dw.add(name, HfTensor::from_f32(&[out, inp], &deq)).unwrap();
    }
    qw.finish().unwrap();
    dw.finish().unwrap();
    let ignore = ["lm_head".to_string()];
    let qc = match rot {
        Some(b) => ct_fp::quantization_config_rotated(scheme, &ignore, b),
        None => ct_fp::quantization_config(scheme, &ignore),
    };
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    write_json(
        &qdir.join("config.json"),
        &config_with_quantization(config.clone(), &qc).unwrap(),
    )
    .unwrap();
    write_json(&ddir.join("config.json"), &config).unwrap();
}

/// Mean KL(p_want ‖ p_got) over positions, and whether every argmax agrees.
fn kl_and_greedy(got: &[f32], want: &[f32], vocab: usize) -> (f64, bool) {
    let logp = |l: &[f32]| -> Vec<f64> {
        let m = l.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
        let z = l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        l.iter().map(|&x| x as f64 - z).collect()
    };
    let argmax = |l: &[f32]| {
        l.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    };
    let (mut kl, mut same, mut n) = (0.0, true, 0);
    for (g, w) in got.chunks(vocab).zip(want.chunks(vocab)) {
        let (lg, lw) = (logp(g), logp(w));
        kl += lw
            .iter()
            .zip(&lg)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        same &= argmax(g) == argmax(w);
        n += 1;
    }
    (kl / n as f64, same)
}

fn check_model(name: &str, up_proj: &str) {
    let model = shared().join("models").join(name);
    let tokens = test_tokens(&model, 40);
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (scheme, rot)) in [
        (FpScheme::Nvfp4, None),
        (FpScheme::Mxfp4, None),
        (FpScheme::Fp8Channel, None),
        (FpScheme::Fp8Tensor, None),
        (FpScheme::Fp8Block, None),
        // stored under MR-GPTQ's input rotation, applied online
        (FpScheme::Nvfp4, Some(64)),
        (FpScheme::Mxfp4, Some(32)),
        (FpScheme::Fp8Block, Some(128)),
    ]
    .into_iter()
    .enumerate()
    {
        let (qdir, ddir) = (
            tmp.path().join(format!("q{i}")),
            tmp.path().join(format!("d{i}")),
        );
        write_pair(&model, scheme, rot, &qdir, &ddir);
        let deq = Model::load(&WeightSource::open_hf(&ddir).unwrap()).unwrap();
        let want = logits(&deq, &tokens);
        let vocab = want.len() / tokens.len();
        let exact = WeightSource::open_hf(&qdir)
            .unwrap()
            .with_int_activations(IntAct::F32);
        // the Linears stay packed (the experts stacked), not dequantized
        let w = exact.require(up_proj).unwrap();
        let ty = w.ty;
        let packed = w.input_rotation == rot
            && match scheme {
                FpScheme::Nvfp4 => ty == WeightType::Fp(FpType::Nvfp4),
                FpScheme::Mxfp4 => ty == WeightType::Fp(FpType::Mxfp4),
                _ => matches!(ty, WeightType::Fp(FpType::Fp8 { .. })),
            };
        let (kl, greedy) = kl_and_greedy(
            &logits(&Model::load(&exact).unwrap(), &tokens),
            &want,
            vocab,
        );
        let fast = WeightSource::open_hf(&qdir).unwrap();
        let fast_ty = fast.require(up_proj).unwrap().ty.name();
        let (kl_fast, _) =
            kl_and_greedy(&logits(&Model::load(&fast).unwrap(), &tokens), &want, vocab);
        eprintln!(
            "{name:10} {scheme:?} rotation {rot:?}: {} KL {kl:.2e} same greedy {greedy}; default ({fast_ty}) KL {kl_fast:.2e}",
            ty.name()
        );
        if !packed || kl > 1e-5 || !greedy || kl_fast > 1e-3 {
            failures.push(format!(
                "{scheme:?} {rot:?}: {} KL {kl:.2e} greedy {greedy}, default KL {kl_fast:.2e}",
                ty.name()
            ));
        }
    }
    assert!(failures.is_empty(), "{name}: {failures:#?}");
}

#[test]
fn llama_fp_checkpoints_run_packed_as_dequantized() {
    check_model("llama", "blk.0.ffn_up.weight");
}

#[test]
fn qwen3_moe_experts_run_packed_as_dequantized() {
    check_model("qwen3-moe", "blk.0.ffn_up_exps.weight");
}
