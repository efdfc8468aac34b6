//! EXL3 folders run as trellis codes (`llmq_kernels` `WeightType::Trellis`: decoded inside
//! the product, `llmq_trellis::bands`) and give the logits of the load-time f32 expansion
//! (`WeightSource::with_exl3_expanded`, `llmq_trellis::decode::reconstruct`, what the
//! engine ran before) to float rounding: mean KL ≤ 1e-6 and the same greedy token at every
//! position. The folder is the shared llama with every Linear replaced by a trellis of
//! pseudo-random codes (K = 2…6 and the head at 6, all three codebooks, suh random signs,
//! svh the row's RMS so the activations keep their scale): the products' function does not
//! depend on how the codes were found, and a calibrated quantization takes minutes.

mod common;
use common::{logits, shared, test_tokens};
use half::f16;
use llmq_engine::{Model, WeightSource};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::writer::{config_with_quantization, write_json, ShardedWriter};
use llmq_hfquant::{Dtype, HfTensor};
use llmq_kernels::WeightType;
use llmq_trellis::exl3_format::{linear_tensors, quantization_config, Dtype as XDtype};
use llmq_trellis::quantize::Exl3Linear;
use llmq_trellis::Codebook;
use serde_json::Value;
use std::path::Path;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn write_exl3(model: &Path, dir: &Path) {
    let st = SafetensorsModel::open(model).unwrap();
    let mut wr = ShardedWriter::new(dir, 1 << 40).unwrap();
    let mut names: Vec<String> = st.tensors().map(|t| t.name.clone()).collect();
    names.sort();
    let mut rng = 0x1234_5678_9abc_def0u64;
    for (i, name) in names.into_iter().enumerate() {
        let view = st.get(&name).unwrap();
        let shape = view.info.shape.clone();
        let linear = shape.len() == 2 && (name.contains("_proj.") || name == "lm_head.weight");
        if !linear {
            let dt = match view.info.dtype {
                StDtype::BF16 => Dtype::BF16,
                StDtype::F16 => Dtype::F16,
                StDtype::F32 => Dtype::F32,
                d => panic!("{name}: {d:?}"),
            };
            wr.add(name, HfTensor::from_raw(dt, &shape, view.bytes.to_vec()))
                .unwrap();
            continue;
        }
        let (out, inp) = (shape[0], shape[1]);
        let w = view.to_f32().unwrap();
        let head = name == "lm_head.weight";
        let k = if head { 6 } else { 2 + (i % 5) as u32 };
        let codebook = [Codebook::Mul1, Codebook::Inst3, Codebook::Mcg][i % 3];
        let trellis = (0..inp / 16 * out / 16 * 16 * k as usize)
            .map(|_| xorshift(&mut rng) as i16)
            .collect();
        let suh = (0..inp)
            .map(|_| {
                f16::from_f32(if xorshift(&mut rng) & 1 == 0 {
                    1.0
                } else {
                    -1.0
                })
            })
            .collect();
        let svh = (0..out)
            .map(|o| {
                let row = &w[o * inp..(o + 1) * inp];
                let rms = (row.iter().map(|v| v * v).sum::<f32>() / inp as f32).sqrt();
                f16::from_f32(rms.max(1e-3))
            })
            .collect();
        let q = Exl3Linear {
            in_features: inp,
            out_features: out,
            k,
            codebook,
            trellis,
            suh,
            svh,
            proxy_err: None,
            g_scale: 1.0,
        };
        let module = name.strip_suffix(".weight").unwrap();
        for t in linear_tensors(module, &q, None) {
            let dt = match t.dtype {
                XDtype::I16 => Dtype::I16,
                XDtype::I32 => Dtype::I32,
                XDtype::F16 => Dtype::F16,
            };
            wr.add(t.name, HfTensor::from_raw(dt, &t.shape, t.data))
                .unwrap();
        }
    }
    wr.finish().unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let qc = quantization_config("0.0.1", 4.0, 6, None, true, Codebook::Mul1);
    write_json(
        &dir.join("config.json"),
        &config_with_quantization(config, &qc).unwrap(),
    )
    .unwrap();
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

#[test]
fn llama_exl3_runs_fused_as_expanded() {
    let model = shared().join("models/llama");
    let tokens = test_tokens(&model, 40);
    let tmp = tempfile::tempdir().unwrap();
    write_exl3(&model, tmp.path());
    let expanded = WeightSource::open_hf(tmp.path())
        .unwrap()
        .with_exl3_expanded(true);
    let fused = WeightSource::open_hf(tmp.path()).unwrap();
    // the fused source keeps codes (q with llama's row order, the head at K = 6); the
    // expanded one holds f32
    for name in [
        "blk.0.attn_q.weight",
        "blk.1.ffn_down.weight",
        "output.weight",
    ] {
        let w = fused.require(name).unwrap();
        assert!(
            matches!(w.ty, WeightType::Trellis(_)),
            "{name}: {}",
            w.ty.name()
        );
        let e = expanded.require(name).unwrap();
        assert_eq!(e.ty.name(), "F32");
        let (a, b) = (w.to_f32(), e.to_f32());
        let rel = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
            / b.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(rel < 1e-5, "{name}: decoded weights differ by {rel:e}");
    }
    let want = logits(&Model::load(&expanded).unwrap(), &tokens);
    let got = logits(&Model::load(&fused).unwrap(), &tokens);
    let vocab = want.len() / tokens.len();
    let (kl, greedy) = kl_and_greedy(&got, &want, vocab);
    eprintln!("llama exl3 fused vs expanded: mean KL {kl:.3e}, same greedy {greedy}");
    assert!(kl <= 1e-6 && greedy, "mean KL {kl:e}, same greedy {greedy}");
    // a single decode step (one row) through the fused product too
    let one = logits(&Model::load(&fused).unwrap(), &tokens[..1]);
    let (kl1, g1) = kl_and_greedy(&one, &want[..vocab], vocab);
    assert!(kl1 <= 1e-6 && g1, "one token: KL {kl1:e}");
}
