//! unpack(pack(x)) == x for random quantized tensors of every bit width and group
//! size (with and without act-order g_idx) in every layout, RTN output through the
//! layouts, and the sharded writer read back with the `safetensors` crate.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{random_iq, rng};
use llmq_hfquant::compressed_tensors::{self as ct, CtWeightScheme};
use llmq_hfquant::gptq::{self, GptqFormat, GptqTensors};
use llmq_hfquant::rtn::{quantize_rtn, RtnConfig};
use llmq_hfquant::writer::{self, ShardedWriter};
use llmq_hfquant::{awq, Error, HfTensor};
use rand::Rng;

#[test]
fn gptq_roundtrip_all_bits_groups_act_order() {
    let mut r = rng(1);
    for bits in [2u8, 3, 4, 8] {
        for gs in [Some(32), Some(128), Some(512), None] {
            for sym in [false, true] {
                for act in [false, true] {
                    for fmt in [GptqFormat::V1, GptqFormat::V2] {
                        let q = random_iq(&mut r, bits, 64, 512, gs, sym, act, 0);
                        let t = gptq::pack(&q, fmt).unwrap();
                        assert_eq!(t.qweight_shape(), [512 * bits as usize / 32, 64]);
                        let back = gptq::unpack(&t, gs, sym, fmt).unwrap();
                        assert!(
                            back == q,
                            "bits {bits} gs {gs:?} sym {sym} act {act} {fmt:?}"
                        );
                        // and through HfTensor
                        let ts: BTreeMap<String, HfTensor> =
                            t.to_hf_tensors("m").into_iter().collect();
                        let t2 = GptqTensors::from_hf_tensors(bits, |n| ts.get(n).cloned(), "m")
                            .unwrap();
                        assert!(t2 == t);
                    }
                }
            }
        }
    }
}

#[test]
fn compressed_tensors_roundtrip_all_bits_groups() {
    let mut r = rng(2);
    for bits in [2u8, 3, 4, 5, 8] {
        for gs in [Some(32), Some(128), None] {
            for sym in [false, true] {
                for (out, inp) in [(64usize, 256usize), (37, 384)] {
                    let q = random_iq(&mut r, bits, out, inp, gs, sym, false, 0);
                    let t = ct::pack(&q, false).unwrap();
                    let back = ct::unpack(&t, &CtWeightScheme::for_quantized(&q)).unwrap();
                    assert!(back == q, "bits {bits} gs {gs:?} sym {sym} [{out}, {inp}]");
                }
            }
        }
    }
    // act-order only with the legacy flag
    let q = random_iq(&mut r, 4, 64, 256, Some(64), false, true, 0);
    assert!(matches!(
        ct::pack(&q, false),
        Err(Error::Unsupported { .. })
    ));
    let t = ct::pack(&q, true).unwrap();
    assert!(t.weight_g_idx.is_some());
    assert_eq!(
        ct::unpack(&t, &CtWeightScheme::for_quantized(&q)).unwrap(),
        q
    );
    let c = ct::quantization_config(&CtWeightScheme::for_quantized(&q), &[], true);
    assert_eq!(
        c["config_groups"]["group_0"]["weights"]["actorder"],
        "group"
    );
}

#[test]
fn awq_roundtrip_and_limits() {
    let mut r = rng(3);
    for gs in [32usize, 64, 128] {
        let q = random_iq(&mut r, 4, 128, 256, Some(gs), false, false, 0);
        assert_eq!(awq::unpack(&awq::pack(&q).unwrap()).unwrap(), q);
    }
    let act = random_iq(&mut r, 4, 128, 256, Some(64), false, true, 0);
    assert!(awq::pack(&act).is_err());
    let three = random_iq(&mut r, 3, 128, 256, Some(64), false, false, 0);
    assert!(awq::pack(&three).is_err());
}

#[test]
fn rtn_output_survives_every_layout() {
    let mut r = rng(4);
    let (out, inp) = (128usize, 256usize);
    let w: Vec<f32> = (0..out * inp).map(|_| r.gen_range(-0.1f32..0.1)).collect();
    for bits in [2u8, 3, 4, 8] {
        for gs in [Some(64), Some(128), None] {
            for sym in [false, true] {
                let cfg = RtnConfig {
                    bits,
                    group_size: gs,
                    symmetric: sym,
                };
                let q = quantize_rtn(&w, out, inp, &cfg).unwrap();
                q.validate().unwrap();
                let fmt = GptqFormat::V2;
                let back = gptq::unpack(&gptq::pack(&q, fmt).unwrap(), gs, sym, fmt).unwrap();
                assert_eq!(back.dequantize(), q.dequantize());
                let back = ct::unpack(
                    &ct::pack(&q, false).unwrap(),
                    &CtWeightScheme::for_quantized(&q),
                )
                .unwrap();
                assert_eq!(back, q);
                if bits == 4 && !sym && gs.is_some() {
                    assert_eq!(awq::unpack(&awq::pack(&q).unwrap()).unwrap(), q);
                }
                // RTN error is small relative to the weights
                let d = q.dequantize();
                let mse: f32 = w
                    .iter()
                    .zip(&d)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    / w.len() as f32;
                let bound = (0.2f32 / ((1u32 << bits) - 1) as f32).powi(2);
                assert!(
                    mse <= bound,
                    "bits {bits} gs {gs:?} sym {sym}: mse {mse} > {bound}"
                );
            }
        }
    }
}

#[test]
fn sharded_writer_reads_back_with_safetensors_crate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // a stale shard from an earlier run must disappear
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("model-00001-of-00009.safetensors"), "old").unwrap();
    let mut w = ShardedWriter::new(&out, 10_000).unwrap();
    let mut want = BTreeMap::new();
    for i in 0..10 {
        let v: Vec<i32> = (0..1000 + i).map(|x| x * 3 - i).collect();
        let t = HfTensor::from_i32(&[v.len()], &v);
        want.insert(format!("t{i}"), t.clone());
        w.add(format!("t{i}"), t).unwrap();
    }
    assert!(w.add("t0", HfTensor::from_i32(&[1], &[0])).is_err());
    let s = w.finish().unwrap();
    assert_eq!(s.files.len(), 5); // 4000-byte tensors, two per 10 kB shard
    assert_eq!(s.n_tensors, 10);
    assert!(!out.join("model-00001-of-00009.safetensors").exists());
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(s.index.unwrap()).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], s.total_bytes);
    let mut seen = 0;
    for f in &s.files {
        let bytes = fs::read(f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let fname = f.file_name().unwrap().to_str().unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(index["weight_map"][&name], fname);
            let t = &want[&name];
            assert_eq!(view.dtype(), safetensors::Dtype::I32);
            assert_eq!(view.shape(), &t.shape[..]);
            assert_eq!(view.data(), &t.data[..]);
            seen += 1;
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
    }
    assert_eq!(seen, 10);
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // one shard: plain model.safetensors, no index
    let single = dir.path().join("single");
    let mut w = ShardedWriter::new(&single, writer::DEFAULT_MAX_SHARD_BYTES).unwrap();
    w.add("a", HfTensor::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]))
        .unwrap();
    let s = w.finish().unwrap();
    assert_eq!(s.files, vec![single.join("model.safetensors")]);
    assert!(s.index.is_none());
}

#[test]
fn copy_model_files_inserts_quantization_config() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("config.json"),
        r#"{"model_type": "llama", "quantization_config": {"old": 1}}"#,
    )
    .unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        fs::write(src.join(f), f).unwrap();
    }
    fs::write(src.join("model.safetensors"), "weights").unwrap();
    let qc = awq::quantization_config(128, None);
    let written = writer::copy_model_files(&src, &dst, &qc).unwrap();
    assert_eq!(written.len(), 7);
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dst.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"], qc);
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(
        fs::read_to_string(dst.join("tokenizer.model")).unwrap(),
        "tokenizer.model"
    );
    assert!(!dst.join("model.safetensors").exists());
}
