//! The forward pass from the ten shared models' safetensors against transformers'
//! goldens (see `llmq_engine::golden`).

use llmq_engine::golden::{check_against_golden, MODELS};
use llmq_engine::{Model, WeightSource};
use std::path::{Path, PathBuf};

fn shared_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
}

#[test]
fn safetensors_forward_matches_transformers() {
    let mut failures = Vec::new();
    for m in MODELS {
        let dir = shared_models().join(m);
        let model = Model::load(&WeightSource::open_hf(&dir).unwrap()).unwrap();
        let r = check_against_golden(&model, &dir.join("golden.safetensors"), 1e-3);
        eprintln!("{m:14} {r:?}");
        if r.max_logprob_err > 1e-3 || r.argmax_mismatch > 0 || r.greedy_mismatch > 0 {
            failures.push(format!("{m}: {r:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
