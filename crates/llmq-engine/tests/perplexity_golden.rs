//! Test-split perplexity with the golden protocol against `golden.json` (transformers,
//! float32), from the safetensors checkpoints of the ten shared models.

use llmq_engine::perplexity::{perplexity, PplOptions, PplProtocol};
use llmq_engine::{Model, WeightSource};
use std::path::{Path, PathBuf};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

const MODELS: [&str; 10] = [
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma3",
    "phi3",
    "mixtral",
    "qwen3-moe",
    "deepseek-v3",
    "glm4-moe-lite",
];

#[test]
fn test_split_perplexity_matches_golden_json() {
    let text = std::fs::read_to_string(shared().join("data/corpus/test.txt")).unwrap();
    let mut failures = Vec::new();
    for m in MODELS {
        let dir = shared().join("models").join(m);
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), 102_935);
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        let want = golden["test_perplexity"].as_f64().unwrap();
        let model = Model::load(&WeightSource::open_hf(&dir).unwrap()).unwrap();
        let o = PplOptions {
            protocol: PplProtocol::Golden,
            max_length: 256,
            max_windows: None,
            batch_size: 4,
            bos: None,
        };
        let t = std::time::Instant::now();
        let r = perplexity(&model, None, &ids, &o, &mut |_, _| {}).unwrap();
        let rel = (r.perplexity / want - 1.0).abs();
        eprintln!(
            "{m:14} ppl {:.4} golden {want:.4} rel {rel:.2e} scored {} windows {} ({:.1}s)",
            r.perplexity,
            r.scored_tokens,
            r.windows,
            t.elapsed().as_secs_f64()
        );
        assert_eq!(
            r.scored_tokens,
            golden["test_scored_tokens"].as_u64().unwrap() as usize
        );
        if rel > 1e-3 {
            failures.push(format!("{m}: {} vs {want}", r.perplexity));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
