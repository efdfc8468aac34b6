//! llama.cpp's own loader (`gguf_init_from_file`, strict about contiguous offsets and
//! alignment) accepts what `GgufStreamWriter` writes: a tiny Llama in F32 is
//! quantized to Q8_0 by the pinned `llama-quantize`, and its output is read back with
//! `GgufFile`. The binary is looked up in `$LLAMA_CPP_BIN` or
//! `~/.cache/llm-quantize/peer/llama.cpp-0.3.36/bin`; without it the test fails and
//! says how to build it (`bash scripts/peer-llama-cpp.sh`).

use llmq_formats::gguf::{GgufFile, GgufPlan, GgufStreamWriter, GgufValue, PlannedTensor};
use llmq_formats::GgmlType;
use std::path::PathBuf;
use std::process::Command;

fn llama_quantize() -> PathBuf {
    let dir = std::env::var_os("LLAMA_CPP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/llm-quantize/peer/llama.cpp-0.3.36/bin")
        });
    let bin = dir.join("llama-quantize");
    assert!(
        bin.exists(),
        "{} missing: run `bash scripts/peer-llama-cpp.sh` (or set LLAMA_CPP_BIN)",
        bin.display()
    );
    bin
}

#[test]
fn llama_quantize_accepts_our_file() {
    let bin = llama_quantize();
    let (n_embd, n_ff, n_vocab, n_layer) = (64u64, 128u64, 32u64, 2u32);
    let mut plan = GgufPlan::new()
        .with_kv("general.architecture", "llama")
        .with_kv("general.name", "tiny")
        .with_kv("general.file_type", 0u32)
        .with_kv("llama.context_length", 128u32)
        .with_kv("llama.embedding_length", n_embd as u32)
        .with_kv("llama.block_count", n_layer)
        .with_kv("llama.feed_forward_length", n_ff as u32)
        .with_kv("llama.attention.head_count", 4u32)
        .with_kv("llama.attention.head_count_kv", 4u32)
        .with_kv("llama.rope.dimension_count", 16u32)
        .with_kv("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .with_kv("llama.vocab_size", n_vocab as u32)
        .with_kv("tokenizer.ggml.model", "llama")
        .with_kv(
            "tokenizer.ggml.tokens",
            GgufValue::string_array((0..n_vocab).map(|i| format!("<t{i}>"))),
        )
        .with_kv("tokenizer.ggml.scores", vec![0.0f32; n_vocab as usize])
        .with_kv("tokenizer.ggml.token_type", vec![1i32; n_vocab as usize]);
    let mut add = |name: String, ne: Vec<u64>| {
        plan.tensors
            .push(PlannedTensor::new(name, ne, GgmlType::F32));
    };
    add("token_embd.weight".into(), vec![n_embd, n_vocab]);
    add("output_norm.weight".into(), vec![n_embd]);
    add("output.weight".into(), vec![n_embd, n_vocab]);
    for l in 0..n_layer {
        add(format!("blk.{l}.attn_norm.weight"), vec![n_embd]);
        for w in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            add(format!("blk.{l}.{w}.weight"), vec![n_embd, n_embd]);
        }
        add(format!("blk.{l}.ffn_norm.weight"), vec![n_embd]);
        add(format!("blk.{l}.ffn_gate.weight"), vec![n_embd, n_ff]);
        add(format!("blk.{l}.ffn_up.weight"), vec![n_embd, n_ff]);
        add(format!("blk.{l}.ffn_down.weight"), vec![n_ff, n_embd]);
    }

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tiny-f32.gguf");
    let w = GgufStreamWriter::create(&input, &plan).unwrap();
    for (i, t) in plan.tensors.iter().enumerate() {
        let n: u64 = t.shape_ne.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|j| (((j * 37 + i as u64 * 11) % 101) as f32 / 100.0 - 0.5).to_le_bytes())
            .collect();
        w.write_tensor(i, &data).unwrap();
    }
    w.finish().unwrap();

    let output = dir.path().join("tiny-q8_0.gguf");
    let out = Command::new(&bin)
        .arg(&input)
        .arg(&output)
        .arg("Q8_0")
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "llama-quantize failed:\n{log}");

    let q = GgufFile::open(&output).unwrap();
    assert_eq!(q.architecture(), Some("llama"));
    assert_eq!(q.file_type(), Some(7), "LLAMA_FTYPE_MOSTLY_Q8_0");
    assert_eq!(q.tensors().len(), plan.tensors.len());
    assert_eq!(
        q.tensor("blk.1.ffn_down.weight").unwrap().ggml_type,
        GgmlType::Q8_0
    );
    assert_eq!(
        q.tensor("blk.0.attn_norm.weight").unwrap().ggml_type,
        GgmlType::F32
    );
    assert_eq!(
        q.tensor("blk.0.attn_q.weight").unwrap().shape_ne,
        vec![n_embd, n_embd]
    );
}
