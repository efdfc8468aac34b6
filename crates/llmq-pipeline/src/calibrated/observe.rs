//! The measure stage of calibrated quantization: a [`LinearObserver`] that gathers,
//! per distinct Linear input of a block, what the quantizers need — GPTQ's Hessian
//! `2/n·XᵀX`, AWQ's `mean|x|` and a strided row sample — and the tokens routed to
//! every expert (and, with `--calibrate-all-experts`, every expert's statistics over
//! all tokens).

use super::AWQ_SAMPLE_ROWS;
use llmq_calib::HessianAccumulator;
use llmq_engine::{LinearObserver, LinearSite, LinearStage};
use std::collections::BTreeMap;

pub(super) type SiteKey = (LinearStage, Option<usize>, &'static str);

pub(super) struct SiteAcc {
    pub(super) weights: Vec<&'static str>,
    pub(super) cols: usize,
    pub(super) rows: u64,
    pub(super) hess: Option<HessianAccumulator>,
    pub(super) abs_sum: Vec<f64>,
    pub(super) sample: Vec<f32>,
    /// keep every `stride`-th row
    pub(super) stride: u64,
}

pub(super) struct Collector {
    pub(super) want_hessian: bool,
    pub(super) want_awq: bool,
    pub(super) sites: BTreeMap<SiteKey, SiteAcc>,
    pub(super) expert_tokens: Vec<u64>,
    /// every expert's statistics see every token (`--calibrate-all-experts`);
    /// `expert_tokens` still counts the routed ones
    pub(super) all_experts: bool,
}

impl Collector {
    /// Finishes every Hessian where it was accumulated (once the block's tokens are
    /// all in), so the solves read it without a copy.
    pub(super) fn finish_hessians(&mut self) {
        for acc in self.sites.values_mut() {
            if let Some(h) = &mut acc.hess {
                h.finish_in_place();
            }
        }
    }
}

impl LinearObserver for Collector {
    fn observe(&mut self, site: &LinearSite<'_>, x: &[f32], rows: usize) {
        if rows == 0 {
            return;
        }
        let cols = x.len() / rows;
        let key = (site.stage, site.expert, site.weights[0]);
        let acc = self.sites.entry(key).or_insert_with(|| SiteAcc {
            weights: site.weights.to_vec(),
            cols,
            rows: 0,
            hess: self.want_hessian.then(|| HessianAccumulator::new(cols)),
            abs_sum: if self.want_awq {
                vec![0.0; cols]
            } else {
                Vec::new()
            },
            sample: Vec::new(),
            stride: 1,
        });
        if let Some(h) = &mut acc.hess {
            h.add(x, rows);
        }
        if self.want_awq {
            for r in 0..rows {
                let row = &x[r * cols..(r + 1) * cols];
                acc.abs_sum
                    .iter_mut()
                    .zip(row)
                    .for_each(|(s, v)| *s += v.abs() as f64);
                let idx = acc.rows + r as u64;
                if idx.is_multiple_of(acc.stride) {
                    acc.sample.extend_from_slice(row);
                    if acc.sample.len() / cols >= AWQ_SAMPLE_ROWS {
                        // keep every other kept row, double the stride
                        let kept: Vec<f32> = acc
                            .sample
                            .chunks(cols)
                            .step_by(2)
                            .flatten()
                            .copied()
                            .collect();
                        acc.sample = kept;
                        acc.stride *= 2;
                    }
                }
            }
        }
        acc.rows += rows as u64;
    }

    fn all_experts(&self) -> bool {
        self.all_experts
    }

    fn expert_counts(&mut self, _layer: usize, counts: &[usize]) {
        if self.expert_tokens.len() < counts.len() {
            self.expert_tokens.resize(counts.len(), 0);
        }
        for (t, c) in self.expert_tokens.iter_mut().zip(counts) {
            *t += *c as u64;
        }
    }
}
