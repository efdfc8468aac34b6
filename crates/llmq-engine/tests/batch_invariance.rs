//! Batch invariance of the forward pass: a sequence's logits are the same bits whether
//! it runs alone or batched with other sequences (prefill beside prefill, decode beside
//! prefill), on every shared model, so serving with continuous batching gives each
//! request what it would get alone.

use llmq_engine::golden::MODELS;
use llmq_engine::{KvCache, Logits, Model, SeqStep, WeightSource};
use std::path::{Path, PathBuf};

fn shared_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
}

fn ids(n: usize, seed: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729 + 13) % vocab) as u32)
        .collect()
}

/// Prefill `prompt` then decode `next`, alone: (prefill logits, decode logits).
fn alone(model: &Model, prompt: &[u32], next: u32) -> (Vec<f32>, Vec<f32>) {
    let mut c = KvCache::new(model, 64);
    let pre = model
        .forward(&mut [SeqStep {
            tokens: prompt,
            cache: &mut c,
            logits: Logits::All,
        }])
        .unwrap()
        .remove(0);
    let dec = model
        .forward(&mut [SeqStep {
            tokens: &[next],
            cache: &mut c,
            logits: Logits::Last,
        }])
        .unwrap()
        .remove(0);
    (pre, dec)
}

#[test]
fn logits_do_not_depend_on_the_batch() {
    for m in MODELS {
        let model = Model::load(&WeightSource::open_hf(&shared_models().join(m)).unwrap()).unwrap();
        let v = model.n_vocab();
        let (a, b, c) = (ids(11, 1, v), ids(17, 2, v), ids(5, 3, v));
        let (a_pre, a_dec) = alone(&model, &a, c[0]);

        // prefill of `a` between two other prefills
        let (mut ca, mut cb, mut cc) = (
            KvCache::new(&model, 64),
            KvCache::new(&model, 64),
            KvCache::new(&model, 64),
        );
        let out = model
            .forward(&mut [
                SeqStep {
                    tokens: &b,
                    cache: &mut cb,
                    logits: Logits::Last,
                },
                SeqStep {
                    tokens: &a,
                    cache: &mut ca,
                    logits: Logits::All,
                },
                SeqStep {
                    tokens: &c,
                    cache: &mut cc,
                    logits: Logits::All,
                },
            ])
            .unwrap();
        assert_eq!(out[0].len(), v, "{m}");
        assert!(out[1] == a_pre, "{m}: batched prefill differs from alone");

        // decode of `a` beside a fresh prefill and another decode
        let mut cd = KvCache::new(&model, 64);
        let d = ids(9, 4, v);
        let out = model
            .forward(&mut [
                SeqStep {
                    tokens: &d,
                    cache: &mut cd,
                    logits: Logits::Last,
                },
                SeqStep {
                    tokens: &[c[0]],
                    cache: &mut ca,
                    logits: Logits::Last,
                },
                SeqStep {
                    tokens: &[a[0]],
                    cache: &mut cb,
                    logits: Logits::None,
                },
            ])
            .unwrap();
        assert!(out[2].is_empty(), "{m}");
        assert!(out[1] == a_dec, "{m}: batched decode differs from alone");
        assert_eq!((ca.len(), cb.len(), cd.len()), (12, 18, 9), "{m}");
    }
}
