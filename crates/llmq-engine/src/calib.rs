//! Hooks for calibration (GPTQ, AWQ, imatrix): the rows that enter every Linear
//! product, reported per input site while a single block runs
//! ([`crate::Model::forward_block`]).
//!
//! A *site* is one distinct Linear input: q/k/v (or Phi-3's fused qkv, or MLA's
//! `q_a`/`kv_a`) share the normalized attention input; gate/up share the normalized
//! MLP input; a routed expert sees only the rows routed to it (so `rows` is that
//! expert's token count); MLA's `kv_b_proj` sees the normalized latent and `q_b` the
//! normalized `q_a` output. Weights are named as GGUF tensors without the `blk.N.`
//! prefix (`attn_q.weight`, `ffn_gate_exps.weight` with `expert = Some(e)`, …).

use crate::backend::Backend;

/// Where in a block a Linear input sits, in the order the block computes them (the
/// stages of GPTQ's "true sequential" mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearStage {
    /// the normalized block input: q/k/v, qkv, MLA q / q_a / kv_a
    AttnInput,
    /// MLA's second projections: `q_b` (normalized q_a) and `kv_b` (normalized latent)
    AttnLatent,
    /// the attention output projection
    AttnOutput,
    /// the normalized MLP input: gate/up of the dense MLP, routed and shared experts
    FfnInput,
    /// the down projections
    FfnDown,
}

impl LinearStage {
    pub const ALL: [LinearStage; 5] = [
        LinearStage::AttnInput,
        LinearStage::AttnLatent,
        LinearStage::AttnOutput,
        LinearStage::FfnInput,
        LinearStage::FfnDown,
    ];
}

/// One Linear input site.
#[derive(Debug, Clone, Copy)]
pub struct LinearSite<'a> {
    pub layer: usize,
    pub stage: LinearStage,
    /// the routed expert whose rows these are
    pub expert: Option<usize>,
    /// GGUF tensor names (without `blk.N.`) of the weights applied to these rows
    pub weights: &'a [&'static str],
}

/// Receives Linear inputs during [`crate::Model::forward_block`].
pub trait LinearObserver {
    /// Whether rows of `stage` are wanted (skipping saves copies).
    fn wants(&self, _stage: LinearStage) -> bool {
        true
    }
    /// `x` holds `rows` input rows (`[rows, in_features]`, row-major).
    fn observe(&mut self, site: &LinearSite<'_>, x: &[f32], rows: usize);
    /// The rows in the backend's own buffer (`B::Buf`), before any copy to the host:
    /// an observer that takes them there (calibration on the GPU) returns `true`, and
    /// [`LinearObserver::observe`] is not called for them.
    fn observe_buf(
        &mut self,
        _site: &LinearSite<'_>,
        _x: &dyn std::any::Any,
        _rows: usize,
    ) -> bool {
        false
    }
    /// Tokens routed to each expert of a MoE layer (called once per MoE block run,
    /// including experts that got none).
    fn expert_counts(&mut self, _layer: usize, _counts: &[usize]) {}
    /// Whether every routed expert is shown every token of a MoE layer (llm-compressor's
    /// "calibrate all experts"): each expert also runs on all rows, for observation
    /// only; the layer's output still comes from the router's choice.
    fn all_experts(&self) -> bool {
        false
    }
}

/// The observer of one block run, or none (the plain forward pass).
pub(crate) struct Tap<'o> {
    pub obs: Option<&'o mut dyn LinearObserver>,
    pub layer: usize,
}

impl Tap<'_> {
    pub fn none() -> Tap<'static> {
        Tap {
            obs: None,
            layer: 0,
        }
    }

    #[inline]
    pub fn wants(&self, stage: LinearStage) -> bool {
        match &self.obs {
            Some(o) => o.wants(stage),
            None => false,
        }
    }

    /// Report `rows` input rows held in `x` (a backend buffer) at `stage`, fetching
    /// them to the host only when the observer wants them.
    #[inline]
    pub fn see<B: Backend>(
        &mut self,
        be: &B,
        stage: LinearStage,
        expert: Option<usize>,
        weights: &[&'static str],
        x: &B::Buf,
        rows: usize,
    ) {
        if let Some(o) = self.obs.as_deref_mut() {
            if o.wants(stage) {
                let site = LinearSite {
                    layer: self.layer,
                    stage,
                    expert,
                    weights,
                };
                if !o.observe_buf(&site, x, rows) {
                    o.observe(&site, &be.to_host(x), rows);
                }
            }
        }
    }

    /// Whether an observer is attached.
    pub fn is_observed(&self) -> bool {
        self.obs.is_some()
    }

    /// Whether the attached observer wants every expert to see every token.
    pub fn all_experts(&self) -> bool {
        self.obs.as_deref().is_some_and(|o| o.all_experts())
    }

    pub fn expert_counts(&mut self, counts: &[usize]) {
        let layer = self.layer;
        if let Some(o) = self.obs.as_deref_mut() {
            o.expert_counts(layer, counts);
        }
    }
}
