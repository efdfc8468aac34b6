//! Checks the GGUF plan, metadata, tokenizer export and mix choices against what
//! llama.cpp itself produced for the ten shared models: `tests/data/llama_cpp_reference.json`
//! holds the tensors/metadata of `convert_hf_to_gguf.py` output (F16, plus value probes of
//! an F32 conversion) and the per-tensor types `llama-quantize` chose for twelve mixes.

mod common;

use common::{shared_models, MODELS};
use llmq_arch::gguf_meta::{arch_metadata, llama_cpp_safe_name};
use llmq_arch::gguf_tokenizer::tokenizer_metadata;
use llmq_arch::{apply_transform, choose_types, gguf_plan, ArchConfig, MetaValue, Mix, MixModel};
use llmq_formats::safetensors::SafetensorsModel;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

fn reference() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama_cpp_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn hf_tensors(st: &SafetensorsModel) -> Vec<(String, Vec<usize>)> {
    st.tensors()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect()
}

/// (type name, JSON value) as the reference stores metadata.
fn meta_json(v: &MetaValue) -> (&'static str, Value) {
    match v {
        MetaValue::U32(x) => ("UINT32", (*x).into()),
        MetaValue::I32(x) => ("INT32", (*x).into()),
        MetaValue::F32(x) => ("FLOAT32", (*x as f64).into()),
        MetaValue::Bool(x) => ("BOOL", (*x).into()),
        MetaValue::Str(x) => ("STRING", x.clone().into()),
        MetaValue::ArrU32(x) => ("ARR_UINT32", x.clone().into()),
        MetaValue::ArrI32(x) => ("ARR_INT32", x.clone().into()),
        MetaValue::ArrF32(x) => (
            "ARR_FLOAT32",
            x.iter().map(|f| *f as f64).collect::<Vec<_>>().into(),
        ),
        MetaValue::ArrBool(x) => ("ARR_BOOL", x.clone().into()),
        MetaValue::ArrStr(x) => ("ARR_STRING", x.clone().into()),
    }
}

#[test]
fn plan_covers_every_tensor_and_matches_the_converter() {
    let dir = shared_models();
    let r = reference();
    for m in MODELS {
        let cfg = ArchConfig::from_path(&dir.join(m)).unwrap();
        let st = SafetensorsModel::open(&dir.join(m)).unwrap();
        let hf = hf_tensors(&st);
        let plan = gguf_plan(&cfg, &hf).unwrap_or_else(|e| panic!("{m}: {e}"));
        // every HF tensor is used or deliberately skipped, exactly once
        let mut used: Vec<&str> = plan
            .tensors
            .iter()
            .flat_map(|t| t.sources.iter().map(String::as_str))
            .collect();
        used.extend(plan.skipped.iter().map(|s| s.0.as_str()));
        let used_set: BTreeSet<&str> = used.iter().copied().collect();
        let kv_b_twice = plan
            .tensors
            .iter()
            .filter(|t| t.gguf_name.ends_with("attn_v_b.weight"))
            .count();
        assert_eq!(
            used.len(),
            used_set.len() + kv_b_twice,
            "{m}: a source used twice"
        );
        let all: BTreeSet<&str> = hf.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(
            used_set, all,
            "{m}: plan does not cover the safetensors file"
        );
        // names, ne shapes and order equal the converter's file
        let want: Vec<(String, Vec<usize>)> = r["models"][m]["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t[0].as_str().unwrap().to_string(),
                    t[1].as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as usize)
                        .collect(),
                )
            })
            .collect();
        let got: Vec<(String, Vec<usize>)> = plan
            .tensors
            .iter()
            .map(|t| (t.gguf_name.clone(), t.shape_ne.clone()))
            .collect();
        assert_eq!(
            got, want,
            "{m}: tensor names/shapes/order differ from convert_hf_to_gguf"
        );
        assert_eq!(
            plan.arch,
            r["models"][m]["metadata"]["general.architecture"][1]
                .as_str()
                .unwrap()
        );
    }
}

#[test]
fn transforms_reproduce_the_converter_data() {
    let dir = shared_models();
    let r = reference();
    for m in MODELS {
        let Some(probes) = r["models"][m].get("probes") else {
            panic!("{m}: no probes in the reference file")
        };
        let cfg = ArchConfig::from_path(&dir.join(m)).unwrap();
        let st = SafetensorsModel::open(&dir.join(m)).unwrap();
        let plan = gguf_plan(&cfg, &hf_tensors(&st)).unwrap();
        for spec in &plan.tensors {
            let srcs: Vec<Vec<f32>> = spec.sources.iter().map(|s| st.f32(s).unwrap()).collect();
            let data = apply_transform(spec, &srcs).unwrap();
            assert_eq!(data.len(), spec.n_elements(), "{m} {}", spec.gguf_name);
            let p = &probes[&spec.gguf_name];
            for (i, v) in p["idx"]
                .as_array()
                .unwrap()
                .iter()
                .zip(p["val"].as_array().unwrap())
            {
                let (i, v) = (i.as_u64().unwrap() as usize, v.as_f64().unwrap() as f32);
                assert_eq!(data[i], v, "{m} {} element {i}", spec.gguf_name);
            }
            let wsum: f64 = data
                .iter()
                .enumerate()
                .map(|(i, x)| *x as f64 * ((i % 97) + 1) as f64)
                .sum();
            let want = p["wsum"].as_f64().unwrap();
            assert!(
                (wsum - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{m} {}: {wsum} vs {want}",
                spec.gguf_name
            );
        }
    }
}

#[test]
fn metadata_matches_the_converter_except_documented_fixes() {
    let dir = shared_models();
    let r = reference();
    // keys the converter derives from the folder name or a size estimate
    let informational = [
        "general.size_label",
        "general.version",
        "general.basename",
        "general.name",
    ];
    for m in MODELS {
        let cfg = ArchConfig::from_path(&dir.join(m)).unwrap();
        let refm = r["models"][m]["metadata"].as_object().unwrap();
        let tok = tokenizer_metadata(&dir.join(m), cfg.family, cfg.vocab_size).unwrap();
        let Some(MetaValue::ArrStr(tokens)) = tok.get("tokenizer.ggml.tokens") else {
            panic!("{m}: no tokens")
        };
        // the converter names the model after its folder; llama.cpp cannot load "Phi3" with this vocab
        let conv_name = refm["general.name"][1].as_str().unwrap();
        let name = llama_cpp_safe_name(conv_name, tokens);
        assert_eq!(name != conv_name, m == "phi3", "{m}: {conv_name} -> {name}");
        let (meta, dev) = arch_metadata(&cfg, &name, 1).unwrap();
        let mut ours: Vec<(String, MetaValue)> = meta.0.clone();
        // the converter writes tokenizer keys after general.quantization_version
        ours.extend(tok.0.iter().cloned());
        let dev_keys: HashMap<&str, _> = dev.iter().map(|d| (d.key.as_str(), d)).collect();
        let mut got_keys = Vec::new();
        for (k, v) in &ours {
            if matches!(
                k.as_str(),
                "tokenizer.ggml.tokens" | "tokenizer.ggml.merges" | "tokenizer.ggml.token_type"
            ) {
                let (_, j) = meta_json(v);
                assert_eq!(j, r["tokenizer"][k.rsplit('.').next().unwrap()], "{m}: {k}");
                continue;
            }
            if informational.contains(&k.as_str()) {
                continue;
            }
            let (ty, j) = meta_json(v);
            if let Some(d) = dev_keys.get(k.as_str()) {
                match &d.converter {
                    Some(c) => assert_eq!(
                        refm[k.as_str()][1],
                        meta_json(c).1,
                        "{m}: {k} converter value"
                    ),
                    None => assert!(
                        !refm.contains_key(k.as_str()),
                        "{m}: {k} unexpectedly in converter output"
                    ),
                }
                continue;
            }
            got_keys.push(k.clone());
            let want = refm
                .get(k.as_str())
                .unwrap_or_else(|| panic!("{m}: we write {k}, the converter does not"));
            assert_eq!(want[0].as_str().unwrap(), ty, "{m}: type of {k}");
            if ty == "FLOAT32" {
                assert_eq!(
                    want[1].as_f64().unwrap() as f32,
                    j.as_f64().unwrap() as f32,
                    "{m}: {k}"
                );
            } else {
                assert_eq!(want[1], j, "{m}: {k}");
            }
        }
        let want_keys: Vec<String> = r["models"][m]["metadata_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .filter(|k| !informational.contains(&k.as_str()) && !dev_keys.contains_key(k.as_str()))
            .filter(|k| {
                !matches!(
                    k.as_str(),
                    "tokenizer.ggml.tokens" | "tokenizer.ggml.merges" | "tokenizer.ggml.token_type"
                )
            })
            .collect();
        assert_eq!(got_keys, want_keys, "{m}: key set/order");
        // the fixes we make on purpose
        match m {
            "gemma3" => assert_eq!(
                meta.get("gemma3.attention.sliding_window_pattern"),
                Some(&MetaValue::ArrBool(vec![true, true, true, false]))
            ),
            "deepseek-v3" | "glm4-moe-lite" => {
                assert_eq!(
                    meta.get("deepseek2.expert_gating_func"),
                    Some(&MetaValue::U32(2))
                );
                assert_eq!(
                    meta.get("deepseek2.leading_dense_block_count"),
                    Some(&MetaValue::U32(1))
                );
            }
            _ => assert!(dev.is_empty(), "{m}: {dev:?}"),
        }
    }
}

#[test]
fn mixes_match_llama_quantize() {
    let dir = shared_models();
    let r = reference();
    let mut checked = 0;
    for m in MODELS {
        let cfg = ArchConfig::from_path(&dir.join(m)).unwrap();
        let st = SafetensorsModel::open(&dir.join(m)).unwrap();
        let plan = gguf_plan(&cfg, &hf_tensors(&st)).unwrap();
        let tensors = plan.mix_tensors();
        let model = MixModel::from_config(&cfg);
        let names: Vec<&str> = r["models"][m]["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[0].as_str().unwrap())
            .collect();
        // F16: the converter's own F16 file
        let f16: Vec<&str> = r["models"][m]["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[2].as_str().unwrap())
            .collect();
        let got = choose_types(Mix::F16, &model, &tensors).unwrap();
        assert_eq!(
            got.iter().map(|t| t.name()).collect::<Vec<_>>(),
            f16,
            "{m} F16"
        );
        for (mix_name, want) in r["models"][m]["mixes"].as_object().unwrap() {
            let mix = Mix::from_name(mix_name).unwrap();
            assert_eq!(
                want["file_type"].as_u64().unwrap() as u32,
                mix.file_type(),
                "{mix_name}"
            );
            let want: BTreeMap<&str, &str> = names
                .iter()
                .copied()
                .zip(
                    want["types"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap()),
                )
                .collect();
            let got = choose_types(mix, &model, &tensors).unwrap();
            for (t, ty) in tensors.iter().zip(&got) {
                assert_eq!(
                    ty.name(),
                    want[t.name.as_str()],
                    "{m} {mix_name} {}",
                    t.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 5000, "{checked}");
}

#[test]
fn export_assembles_metadata_and_types() {
    let dir = shared_models();
    let r = reference();
    for m in MODELS {
        let cfg = ArchConfig::from_path(&dir.join(m)).unwrap();
        let st = SafetensorsModel::open(&dir.join(m)).unwrap();
        let ex = llmq_arch::gguf_export(&dir.join(m), &cfg, &hf_tensors(&st), Mix::Q4KM, "Phi3")
            .unwrap();
        assert_eq!(
            ex.metadata.get("general.file_type"),
            Some(&MetaValue::U32(15)),
            "{m}"
        );
        assert_eq!(
            ex.metadata.get("general.name"),
            Some(&MetaValue::Str("Phi 3".into())),
            "{m}"
        );
        let keys: Vec<&str> = ex.metadata.keys().collect();
        let qv = keys
            .iter()
            .position(|k| *k == "general.quantization_version")
            .unwrap();
        let tm = keys
            .iter()
            .position(|k| *k == "tokenizer.ggml.model")
            .unwrap();
        assert!(qv < tm, "{m}: tokenizer keys follow the architecture keys");
        let want = &r["models"][m]["mixes"]["Q4_K_M"]["types"];
        for (i, (spec, ty)) in ex.tensors.iter().enumerate() {
            assert_eq!(
                spec.gguf_name,
                r["models"][m]["tensors"][i][0].as_str().unwrap(),
                "{m}"
            );
            assert_eq!(
                ty.name(),
                want[i].as_str().unwrap(),
                "{m} {}",
                spec.gguf_name
            );
        }
    }
}
