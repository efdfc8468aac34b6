//! `config.json` of every shared model reads into the expected architecture facts
//! (layer count, vocabulary, sliding windows, MoE layers, MLA dimensions).

mod common;

use common::{shared_models, MODELS};
use llmq_arch::ArchConfig;
use std::path::PathBuf;

fn shared(name: &str) -> PathBuf {
    shared_models().join(name)
}

#[test]
fn reads_every_shared_model() {
    for m in MODELS {
        let p = shared(m);
        assert!(p.exists(), "{} missing (../shared/models)", p.display());
        let c = ArchConfig::from_path(&p).unwrap();
        assert_eq!(c.num_layers, 4, "{m}");
        assert_eq!(c.vocab_size, 4096, "{m}");
    }
    let g = ArchConfig::from_path(&shared("gemma3")).unwrap();
    assert_eq!(
        g.layers
            .iter()
            .map(|l| l.sliding_window)
            .collect::<Vec<_>>(),
        vec![Some(32), Some(32), Some(32), None]
    );
    assert_eq!(g.layers[3].rope_theta, 1e6);
    assert_eq!(g.layers[0].rope_theta, 1e4);
    assert!(g.tie_word_embeddings && g.qk_norm);
    let d = ArchConfig::from_path(&shared("deepseek-v3")).unwrap();
    assert_eq!(
        d.layers.iter().map(|l| l.moe).collect::<Vec<_>>(),
        vec![false, true, true, true]
    );
    assert_eq!(d.head_dim, 256);
    assert_eq!(d.moe.as_ref().unwrap().n_group, 4);
    let z = ArchConfig::from_path(&shared("glm4-moe-lite")).unwrap();
    assert_eq!(z.mla.as_ref().unwrap().v_head_dim, 256);
    assert_eq!(
        z.layers.iter().map(|l| l.moe).collect::<Vec<_>>(),
        vec![false, true, true, true]
    );
    let q = ArchConfig::from_path(&shared("qwen3-moe")).unwrap();
    assert!(q.layers.iter().all(|l| l.moe));
    let m = ArchConfig::from_path(&shared("mistral")).unwrap();
    assert!(m.layers.iter().all(|l| l.sliding_window.is_none()));
}
