//! Cross-checks against code nobody here wrote: our checkpoints go through the
//! published Python implementations (installed by scripts/install-py-test-deps.sh):
//! - compressed-tensors 0.20.0 (`PackedQuantizationCompressor.decompress/compress`,
//!   config parsing via transformers' `CompressedTensorsConfig`),
//! - GPTQModel 7.7.0 `gptqmodel/utils/model_dequant.py::convert_gptq_file`,
//! - AutoAWQ 0.2.9 `awq/utils/packing_utils.py::dequantize_gemm`,
//! - the `safetensors` package on a sharded folder.
//!
//! Each must reproduce `IntQuantized::dequantize()` exactly (f32, and f16-rounded
//! where the package computes in the stored f16). Without the Python environment the
//! tests print SKIPPED and pass, except under CI (`CI` set), where they fail.

mod common;

use std::fs;
use std::path::Path;

use common::{base_config, python, random_iq, rng, run_py, write_expected};
use half::f16;
use llmq_hfquant::compressed_tensors::{self as ct, CtPreset, CtWeightScheme};
use llmq_hfquant::gptq::{self, GptqConfig, GptqFormat};
use llmq_hfquant::writer::{write_json, write_safetensors, ShardedWriter, DEFAULT_MAX_SHARD_BYTES};
use llmq_hfquant::{awq, writer, HfTensor, IntQuantized};
use serde_json::json;

fn write_case(
    dir: &Path,
    layers: &[(String, IntQuantized)],
    tensors: Vec<(String, HfTensor)>,
    qc: serde_json::Value,
    case: serde_json::Value,
) {
    fs::create_dir_all(dir).unwrap();
    let mut w = ShardedWriter::new(dir, DEFAULT_MAX_SHARD_BYTES).unwrap();
    w.add_all(tensors).unwrap();
    let s = w.finish().unwrap();
    assert_eq!(s.files, vec![dir.join("model.safetensors")]);
    let cfg = writer::config_with_quantization(base_config(), &qc).unwrap();
    write_json(&dir.join("config.json"), &cfg).unwrap();
    write_json(&dir.join("case.json"), &case).unwrap();
    write_expected(dir, layers);
}

#[test]
fn compressed_tensors_package_decompresses_our_pack_quantized() {
    let (py, src) = python();
    let root = tempfile::tempdir().unwrap();
    let mut r = rng(11);
    // (name, preset, bits, symmetric, group_size, [(out, in)])
    type Case<'a> = (
        &'a str,
        Option<CtPreset>,
        u8,
        bool,
        Option<usize>,
        &'a [(usize, usize)],
    );
    let cases: [Case; 7] = [
        (
            "w4a16",
            Some(CtPreset::W4A16),
            4,
            true,
            Some(128),
            &[(256, 512), (512, 256)],
        ),
        (
            "w4a16_asym",
            Some(CtPreset::W4A16Asym),
            4,
            false,
            Some(128),
            &[(256, 512), (200, 384)],
        ),
        (
            "w8a16",
            Some(CtPreset::W8A16),
            8,
            true,
            Some(128),
            &[(256, 512)],
        ),
        ("w3_sym_g64", None, 3, true, Some(64), &[(256, 512)]),
        (
            "w3_asym_channel_ragged",
            None,
            3,
            false,
            None,
            &[(200, 500), (96, 256)],
        ),
        ("w2_asym_g128", None, 2, false, Some(128), &[(256, 512)]),
        ("w8_asym_channel", None, 8, false, None, &[(256, 512)]),
    ];
    for (name, preset, bits, sym, gs, shapes) in cases {
        if let Some(p) = preset {
            let s = p.scheme();
            assert_eq!((s.num_bits, s.symmetric), (bits, sym));
        }
        let mut layers = Vec::new();
        let mut tensors = Vec::new();
        for (li, &(o, i)) in shapes.iter().enumerate() {
            let q = random_iq(&mut r, bits, o, i, gs, sym, false, 0);
            let prefix = format!("model.layers.{li}.mlp.proj");
            let t = ct::pack(&q, false).unwrap();
            assert_eq!(
                ct::unpack(&t, &CtWeightScheme::for_quantized(&q)).unwrap(),
                q
            );
            tensors.extend(t.to_hf_tensors(&prefix));
            layers.push((prefix, q));
        }
        let scheme = preset.map_or_else(
            || CtWeightScheme::for_quantized(&layers[0].1),
            |p| p.scheme(),
        );
        let qc = ct::quantization_config(&scheme, &["lm_head".to_string()], false);
        let case = json!({"preset": preset.map(|p| p.name()), "bits": bits, "symmetric": sym, "group_size": gs});
        write_case(&root.path().join(name), &layers, tensors, qc, case);
    }
    let out = run_py(&py, &src, "check_compressed_tensors.py", root.path());
    assert!(out.contains("ok: 10 layers"), "{out}");
}

#[test]
fn gptqmodel_dequantizes_our_gptq_checkpoints() {
    let (py, src) = python();
    let root = tempfile::tempdir().unwrap();
    let mut r = rng(22);
    let mut n = 0;
    for bits in [2u8, 3, 4, 8] {
        // (symmetric, format, group, act_order, min_zero)
        let variants = [
            (true, GptqFormat::V1, Some(128), false, 0u8),
            (false, GptqFormat::V2, Some(128), true, 0),
            (false, GptqFormat::V1, Some(64), true, 1),
            // v1 with zero points of 0 (stored -1 & maxq): GPTQModel decodes per value
            (false, GptqFormat::V1, Some(128), false, 0),
            (true, GptqFormat::V2, None, false, 0),
        ];
        for (vi, (sym, fmt, gs, act, min_zero)) in variants.into_iter().enumerate() {
            let mut q = random_iq(&mut r, bits, 128, 256, gs, sym, act, min_zero);
            if !sym && min_zero == 0 {
                q.zeros[0] = 0; // make sure the wrap case is present
            }
            let prefix = "model.layers.0.self_attn.q_proj".to_string();
            let t = gptq::pack(&q, fmt).unwrap();
            assert_eq!(gptq::unpack(&t, q.group_size, sym, fmt).unwrap(), q);
            let cfg = GptqConfig::for_quantized(&q, fmt);
            assert_eq!(cfg.desc_act, act);
            let dir = root.path().join(format!("b{bits}_v{vi}"));
            let case = json!({"bits": bits, "symmetric": sym, "group_size": gs, "act_order": act,
                              "format": fmt.checkpoint_format()});
            let layers = vec![(prefix.clone(), q)];
            write_case(
                &dir,
                &layers,
                t.to_hf_tensors(&prefix),
                cfg.quantization_config(),
                case,
            );
            write_json(
                &dir.join("quantize_config.json"),
                &cfg.quantize_config_json(),
            )
            .unwrap();
            n += 1;
        }
    }
    let out = run_py(&py, &src, "check_gptq.py", root.path());
    assert!(out.contains(&format!("ok: {n} layers")), "{out}");
}

#[test]
fn autoawq_dequantizes_our_awq_checkpoints() {
    let (py, src) = python();
    let root = tempfile::tempdir().unwrap();
    let mut r = rng(33);
    for gs in [128usize, 64] {
        let mut layers = Vec::new();
        let mut tensors = Vec::new();
        for (li, (o, i)) in [(256usize, 512usize), (512, 256)].into_iter().enumerate() {
            let q = random_iq(&mut r, 4, o, i, Some(gs), false, false, 0);
            let prefix = format!("model.layers.{li}.mlp.up_proj");
            let t = awq::pack(&q).unwrap();
            assert_eq!(awq::unpack(&t).unwrap(), q);
            tensors.extend(t.to_hf_tensors(&prefix));
            layers.push((prefix, q));
        }
        let case = json!({"bits": 4, "symmetric": false, "group_size": gs});
        write_case(
            &root.path().join(format!("g{gs}")),
            &layers,
            tensors,
            awq::quantization_config(gs, None),
            case,
        );
    }
    let out = run_py(&py, &src, "check_awq.py", root.path());
    assert!(out.contains("ok: 4 layers"), "{out}");
}

#[test]
fn safetensors_python_loads_sharded_folder() {
    let (py, src_py) = python();
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_json(&src.join("config.json"), &base_config()).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        fs::write(src.join(f), "{}").unwrap();
    }
    fs::write(src.join("pytorch_model.bin"), "not copied").unwrap();
    let out = root.path().join("out");
    let mut r = rng(44);
    let mut all = Vec::new();
    let mut w = ShardedWriter::new(&out, 100_000).unwrap();
    for l in 0..4 {
        let q = random_iq(&mut r, 4, 256, 512, Some(128), true, false, 0);
        let t = gptq::pack(&q, GptqFormat::V1).unwrap();
        let mut ts = t.to_hf_tensors(&format!("model.layers.{l}.mlp.down_proj"));
        let norm: Vec<f16> = (0..256).map(|i| f16::from_f32(i as f32 / 256.0)).collect();
        ts.push((
            format!("model.layers.{l}.input_layernorm.weight"),
            HfTensor::from_f16(&[256], &norm),
        ));
        all.extend(ts.clone());
        w.add_all(ts).unwrap();
    }
    let s = w.finish().unwrap();
    assert!(s.files.len() >= 2, "{s:?}");
    let cfg = GptqConfig {
        bits: 4,
        group_size: Some(128),
        desc_act: false,
        sym: true,
        format: GptqFormat::V1,
        damp_percent: 0.01,
        true_sequential: true,
        static_groups: false,
        lm_head: false,
        quantizer: "test".into(),
    };
    writer::copy_model_files(&src, &out, &cfg.quantization_config()).unwrap();
    assert!(!out.join("pytorch_model.bin").exists());
    write_safetensors(&root.path().join("expected_tensors.safetensors"), &all).unwrap();
    run_py(&py, &src_py, "check_folder.py", &out);
}
