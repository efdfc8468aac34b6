//! Helpers shared by the engine's checkpoint tests: the shared folder, the token
//! window they evaluate, and a model's logits over it.
#![allow(dead_code)]

use llmq_engine::{KvCache, Logits, Model, SeqStep};
use std::path::{Path, PathBuf};

/// The shared models and data (`../shared` beside the checkout).
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The first `n` tokens of the shared test text under `model`'s tokenizer.
pub fn test_tokens(model: &Path, n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(shared().join("data/corpus/test.txt")).unwrap();
    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let ids = tok
        .encode(&text[..20_000], false)
        .unwrap()
        .get_ids()
        .to_vec();
    ids[..n].to_vec()
}

/// The logits of every position of `tokens`, one sequence from an empty cache.
pub fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(model, tokens.len());
    model
        .forward(&mut [SeqStep {
            tokens,
            cache: &mut cache,
            logits: Logits::All,
        }])
        .unwrap()
        .remove(0)
}
