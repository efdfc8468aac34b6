//! The engine's forward pass from our own F16 and Q8_0 GGUF files of the ten shared
//! models against transformers' goldens: log-probs, argmax where the golden margin is
//! clear, greedy tokens through the KV cache; and perplexity (golden window protocol)
//! on the first `PPL_WINDOWS` test windows within 0.1 % of the safetensors model's on
//! the same windows. The safetensors path's whole-split perplexity equals
//! `golden.json` (`llmq-engine/tests/perplexity_golden.rs`), so the chain reaches
//! transformers while this test scores an eighth of the split.

mod common;
use common::*;
use llmq_engine::golden::check_against_golden;
use llmq_engine::perplexity::{perplexity, PplOptions, PplProtocol};
use llmq_engine::{Model, WeightSource};

/// Test windows of 256 tokens scored per model and level (the split has 402).
const PPL_WINDOWS: usize = 48;

/// Compare argmax and greedy tokens only where the golden top-1/top-2 margin exceeds
/// this: F16 storage is exact for these bf16 weights up to f16 subnormals; Q8_0 moves
/// logits by up to a few hundredths (measured max |Δ last logit| is printed).
fn margin_tol(level: &str) -> f32 {
    match level {
        "F16" => 1e-3,
        _ => 0.1,
    }
}

fn quantized(tmp: &std::path::Path, m: &str, level: &str) -> Model {
    let name = format!("{m}-{level}.gguf");
    let dir = shared_model(m);
    let r = lq(
        tmp,
        &[
            "quantize",
            dir.to_str().unwrap(),
            "gguf",
            "-q",
            level,
            "-n",
            &name,
            "--no-checkpoints",
            "--no-validate",
        ],
    );
    assert_eq!(r.code, 0, "{m} {level}: {}", r.stderr);
    Model::load(&WeightSource::open_gguf(&tmp.join(&name)).unwrap()).unwrap()
}

#[test]
fn gguf_forward_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shared().join("data/corpus/test.txt")).unwrap();
    let mut failures = Vec::new();
    for m in MODELS {
        let dir = shared_model(m);
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        let o = PplOptions {
            protocol: PplProtocol::Golden,
            max_length: 256,
            max_windows: Some(PPL_WINDOWS),
            batch_size: 8,
            bos: None,
        };
        let source = Model::load(&WeightSource::open_hf(&dir).unwrap()).unwrap();
        let want = perplexity(&source, None, &ids, &o, &mut |_, _| {}).unwrap();
        assert_eq!(want.windows, PPL_WINDOWS, "{m}: windows scored");
        let want_ppl = want.perplexity;
        drop(source);
        for level in ["F16", "Q8_0"] {
            let model = quantized(tmp.path(), m, level);
            let rep =
                check_against_golden(&model, &dir.join("golden.safetensors"), margin_tol(level));
            let p = perplexity(&model, None, &ids, &o, &mut |_, _| {}).unwrap();
            let rel = (p.perplexity / want_ppl - 1.0).abs();
            eprintln!(
                "{m:14} {level:5} ppl {:.4} (safetensors {want_ppl:.4}, rel {rel:.1e}) max|Δlogprob| {:.2e} max|Δlast logit| {:.2e} argmax mismatches {} greedy mismatches {}",
                p.perplexity, rep.max_logprob_err, rep.max_last_logit_err, rep.argmax_mismatch, rep.greedy_mismatch
            );
            if rel > 1e-3 || rep.argmax_mismatch > 0 || rep.greedy_mismatch > 0 {
                failures.push(format!("{m} {level}: ppl {} {rep:?}", p.perplexity));
            }
            if level == "F16" && rep.max_logprob_err > 1e-3 {
                failures.push(format!("{m} F16: log-prob error {}", rep.max_logprob_err));
            }
            std::fs::remove_file(tmp.path().join(format!("{m}-{level}.gguf"))).unwrap();
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
