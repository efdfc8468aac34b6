//! "Calibrate all experts" (issue 17): an observer that asks for it sees every token
//! at every routed expert's inputs, while the block's output stays the bits of the
//! routed forward pass (the next block's inputs do not change). (Here rather than in
//! llmq-engine's tests: this package's test build shares the CLI's.)

mod common;

use common::shared_model;
use llmq_engine::{LinearObserver, LinearSite, LinearStage, Model, WeightSource};
use std::collections::BTreeMap;

/// Rows seen per (stage, expert), and the routed counts.
#[derive(Default)]
struct Rows {
    all: bool,
    seen: BTreeMap<(LinearStage, Option<usize>), usize>,
    routed: Vec<usize>,
}

impl LinearObserver for Rows {
    fn observe(&mut self, site: &LinearSite<'_>, x: &[f32], rows: usize) {
        assert!(x.iter().all(|v| v.is_finite()));
        *self.seen.entry((site.stage, site.expert)).or_default() += rows;
    }
    fn expert_counts(&mut self, _layer: usize, counts: &[usize]) {
        self.routed = counts.to_vec();
    }
    fn all_experts(&self) -> bool {
        self.all
    }
}

#[test]
fn all_experts_sees_every_token_and_keeps_the_block_output() {
    let dir = shared_model("qwen3-moe");
    let model = Model::load(&WeightSource::open_hf(&dir).unwrap()).unwrap();
    let v = model.n_vocab();
    let lens = [23usize, 9];
    let mut x = Vec::new();
    for (s, &n) in lens.iter().enumerate() {
        let ids: Vec<u32> = (0..n)
            .map(|i| ((i * 7919 + s * 104_729 + 13) % v) as u32)
            .collect();
        x.extend(model.embed(&ids).unwrap());
    }
    let n: usize = lens.iter().sum();
    let (mut a, mut b) = (x.clone(), x);
    let mut routed = Rows::default();
    let mut all = Rows {
        all: true,
        ..Default::default()
    };
    model
        .forward_block(0, &mut a, &lens, Some(&mut routed))
        .unwrap();
    model
        .forward_block(0, &mut b, &lens, Some(&mut all))
        .unwrap();
    // the block output is the same bits
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    let experts = routed.routed.len();
    assert!(experts >= 2, "qwen3-moe has experts");
    assert_eq!(
        all.routed, routed.routed,
        "routed counts are still reported"
    );
    for e in 0..experts {
        for stage in [LinearStage::FfnInput, LinearStage::FfnDown] {
            // every expert saw every token with the option, its routed rows without
            assert_eq!(
                all.seen.get(&(stage, Some(e))).copied(),
                Some(n),
                "{stage:?} {e}"
            );
            let r = routed.routed[e];
            assert_eq!(routed.seen.get(&(stage, Some(e))).copied().unwrap_or(0), r);
        }
    }
    // the router spread the tokens, so some expert saw fewer than all without it
    assert!(routed.routed.iter().any(|&r| r < n));
    // the attention inputs are the same either way
    for (k, rows) in &routed.seen {
        if k.1.is_none() {
            assert_eq!(all.seen.get(k), Some(rows), "{k:?}");
        }
    }
}
