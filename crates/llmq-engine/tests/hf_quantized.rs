//! GPTQ (v1, v2, act-order), AWQ and compressed-tensors checkpoints through the engine:
//! every Linear of a shared model is RTN-quantized with `llmq_hfquant`, written in the
//! layout, and loaded; its logits must equal (to float rounding) those of the same
//! engine on a safetensors copy holding the dequantized weights, i.e. the loader and
//! the integer kernels implement exactly the dequantization of the reference packages.
//! The fast path (Q8_0 activations) is checked for closeness and perplexity.

mod common;
use common::{logits, shared, test_tokens};
use llmq_engine::perplexity::{perplexity, PplOptions, PplProtocol};
use llmq_engine::{Model, WeightSource};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::compressed_tensors::{self as ct, CtWeightScheme};
use llmq_hfquant::gptq::{self, GptqConfig, GptqFormat};
use llmq_hfquant::rtn::{quantize_rtn, RtnConfig};
use llmq_hfquant::writer::{config_with_quantization, write_json, ShardedWriter};
use llmq_hfquant::{awq, Dtype, HfTensor, IntQuantized};
use llmq_kernels::IntAct;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug)]
enum Layout {
    Gptq(GptqFormat),
    Awq,
    Ct,
}

#[derive(Clone, Copy, Debug)]
struct Variant {
    layout: Layout,
    bits: u8,
    group_size: Option<usize>,
    sym: bool,
    act_order: bool,
}

/// A Linear that the quantizers touch (routers, embeddings, norms and lm_head stay).
fn is_linear(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2
        && name.ends_with(".weight")
        && (name.contains("_proj.")
            || name.contains(".w1.")
            || name.contains(".w2.")
            || name.contains(".w3."))
}

/// RTN, with GPTQ act-order's structure when asked: columns in a random order, group
/// `k / group_size` for the `k`-th of them (`g_idx[perm[k]] = k / group_size`).
fn quantize(w: &[f32], out: usize, inp: usize, v: &Variant, rng: &mut ChaCha8Rng) -> IntQuantized {
    let cfg = RtnConfig {
        bits: v.bits,
        group_size: v.group_size,
        symmetric: v.sym,
    };
    if !v.act_order {
        return quantize_rtn(w, out, inp, &cfg).unwrap();
    }
    let gs = v.group_size.expect("act-order needs groups");
    let mut perm: Vec<usize> = (0..inp).collect();
    for i in (1..inp).rev() {
        perm.swap(i, rng.gen_range(0..=i));
    }
    let mut wp = vec![0.0; out * inp];
    for o in 0..out {
        for k in 0..inp {
            wp[o * inp + k] = w[o * inp + perm[k]];
        }
    }
    let qp = quantize_rtn(&wp, out, inp, &cfg).unwrap();
    let mut q = qp.clone();
    let mut g_idx = vec![0u32; inp];
    for (k, &p) in perm.iter().enumerate() {
        g_idx[p] = (k / gs) as u32;
        for o in 0..out {
            q.q[o * inp + p] = qp.q[o * inp + k];
        }
    }
    q.g_idx = Some(g_idx);
    q.validate().unwrap();
    q
}

/// Writes the quantized checkpoint and a copy with the dequantized weights as f32.
fn write_pair(model: &Path, v: &Variant, qdir: &Path, ddir: &Path) {
    let st = SafetensorsModel::open(model).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut qw = ShardedWriter::new(qdir, 1 << 40).unwrap();
    let mut dw = ShardedWriter::new(ddir, 1 << 40).unwrap();
    let mut first: Option<IntQuantized> = None;
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
        let q = quantize(&view.to_f32().unwrap(), out, inp, v, &mut rng);
        let prefix = name.strip_suffix(".weight").unwrap();
        let tensors = match v.layout {
            Layout::Gptq(f) => gptq::pack(&q, f).unwrap().to_hf_tensors(prefix),
            Layout::Awq => awq::pack(&q).unwrap().to_hf_tensors(prefix),
            Layout::Ct => ct::pack(&q, false).unwrap().to_hf_tensors(prefix),
        };
        qw.add_all(tensors).unwrap();
        dw.add(name, HfTensor::from_f32(&[out, inp], &q.dequantize()))
            .unwrap();
        first.get_or_insert(q);
    }
    qw.finish().unwrap();
    dw.finish().unwrap();
    let q = first.unwrap();
    let qc = match v.layout {
        Layout::Gptq(f) => GptqConfig::for_quantized(&q, f).quantization_config(),
        Layout::Awq => awq::quantization_config(v.group_size.unwrap(), None),
        Layout::Ct => ct::quantization_config(
            &CtWeightScheme::for_quantized(&q),
            &["lm_head".to_string()],
            false,
        ),
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

/// max |a − b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |e, (x, y)| e.max((x - y).abs()))
        / m
}

fn check_model(name: &str, variants: &[Variant]) {
    let model = shared().join("models").join(name);
    let tokens = test_tokens(&model, 48);
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let (qdir, ddir) = (
            tmp.path().join(format!("q{i}")),
            tmp.path().join(format!("d{i}")),
        );
        write_pair(&model, v, &qdir, &ddir);
        let deq = Model::load(&WeightSource::open_hf(&ddir).unwrap()).unwrap();
        let want = logits(&deq, &tokens);
        let exact = WeightSource::open_hf(&qdir)
            .unwrap()
            .with_int_activations(IntAct::F32);
        assert!(exact.hf_quant_scheme().is_some(), "{v:?}: not detected");
        let got = logits(&Model::load(&exact).unwrap(), &tokens);
        let e_exact = rel_err(&got, &want);
        let fast = WeightSource::open_hf(&qdir).unwrap();
        let got = logits(&Model::load(&fast).unwrap(), &tokens);
        let e_fast = rel_err(&got, &want);
        eprintln!("{name:10} {v:?}: exact {e_exact:.2e}, Q8_0 activations {e_fast:.2e}");
        if e_exact > 1e-4 || e_fast > 3e-2 {
            failures.push(format!("{v:?}: exact {e_exact:.2e} fast {e_fast:.2e}"));
        }
    }
    assert!(failures.is_empty(), "{name}: {failures:#?}");
}

const fn var(layout: Layout, bits: u8, gs: Option<usize>, sym: bool, ao: bool) -> Variant {
    Variant {
        layout,
        bits,
        group_size: gs,
        sym,
        act_order: ao,
    }
}

const V1: Layout = Layout::Gptq(GptqFormat::V1);
const V2: Layout = Layout::Gptq(GptqFormat::V2);

#[test]
fn llama_gptq_awq_compressed_tensors_match_dequantized() {
    check_model(
        "llama",
        &[
            var(V1, 4, Some(128), true, false),
            var(V1, 4, Some(64), false, true),
            var(V2, 8, None, false, false),
            var(V1, 3, Some(128), false, false),
            var(V2, 2, Some(32), true, true),
            var(Layout::Awq, 4, Some(128), false, false),
            var(Layout::Ct, 4, Some(128), true, false),
            var(Layout::Ct, 4, Some(128), false, false),
            var(Layout::Ct, 8, Some(128), true, false),
            var(Layout::Ct, 4, None, false, false),
        ],
    );
}

#[test]
fn qwen3_and_moe_match_dequantized() {
    check_model(
        "qwen3",
        &[
            var(V1, 4, Some(128), true, true),
            var(Layout::Awq, 4, Some(64), false, false),
            var(Layout::Ct, 8, None, true, false),
        ],
    );
    check_model(
        "qwen3-moe",
        &[
            var(V1, 4, Some(128), false, true),
            var(Layout::Ct, 4, Some(128), true, false),
        ],
    );
}

/// 4-bit g128 RTN costs a little perplexity, not a lot.
#[test]
fn gptq_4bit_perplexity_is_sane() {
    let model = shared().join("models/llama");
    let tokens = test_tokens(&model, 2048);
    let tmp = tempfile::tempdir().unwrap();
    let (qdir, ddir) = (tmp.path().join("q"), tmp.path().join("d"));
    write_pair(&model, &var(V1, 4, Some(128), true, false), &qdir, &ddir);
    let o = PplOptions {
        protocol: PplProtocol::Golden,
        max_length: 256,
        max_windows: None,
        batch_size: 4,
        bos: None,
    };
    let base = Model::load(&WeightSource::open_hf(&model).unwrap()).unwrap();
    let q = Model::load(&WeightSource::open_hf(&qdir).unwrap()).unwrap();
    let p0 = perplexity(&base, None, &tokens, &o, &mut |_, _| {})
        .unwrap()
        .perplexity;
    let p1 = perplexity(&q, None, &tokens, &o, &mut |_, _| {})
        .unwrap()
        .perplexity;
    eprintln!("llama ppl: bf16 {p0:.3}, GPTQ 4-bit g128 RTN {p1:.3}");
    assert!(p1 > p0 * 0.95 && p1 < p0 * 1.5, "{p0} vs {p1}");
}

#[test]
fn unsupported_variants_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = shared().join("models/llama");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    for (qc, want) in [
        (
            serde_json::json!({"quant_method": "compressed-tensors", "format": "float-quantized",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float"}}}}),
            "float-quantized",
        ),
        (
            serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"}),
            "marlin",
        ),
        (
            serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}),
            "gemv",
        ),
        (
            serde_json::json!({"quant_method": "bitsandbytes"}),
            "bitsandbytes",
        ),
    ] {
        write_json(
            &tmp.path().join("config.json"),
            &config_with_quantization(config.clone(), &qc).unwrap(),
        )
        .unwrap();
        let err = WeightSource::open_hf(tmp.path())
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains(want), "{err}");
    }
}
