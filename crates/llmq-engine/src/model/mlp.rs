//! The feed-forward half of a block: a gated MLP (`down(act(gate·x) * up·x)`, Shazeer
//! 2020; Phi-3 fuses gate|up into one projection) or a mixture of experts (Shazeer et
//! al. 2017; Mixtral, Qwen3-MoE, DeepSeek-V3 with shared experts): the router picks
//! experts per token (`crate::routing`), each expert runs on the rows routed to it and
//! the weighted outputs are summed. GPT-OSS adds biases to the router and to every
//! expert projection. An observer may ask for every expert to see every token
//! ([`crate::LinearObserver::all_experts`]): each expert's inputs are then observed on
//! all rows, and the routed forward that makes the output runs unobserved.

use crate::backend::{Activation, Backend, Linear};
use crate::calib::{LinearStage, Tap};
use crate::hparams::MoeParams;

/// The gate and up projections of a gated MLP.
pub(super) enum GateUp<B: Backend> {
    Separate {
        gate: Linear<B>,
        up: Linear<B>,
    },
    /// rows `[gate (ff) | up (ff)]` in one projection (Phi-3's `ffn_up`)
    Fused(Linear<B>),
}

/// Biases of a gated MLP's projections (GPT-OSS's experts).
pub(super) struct MlpBiases<B: Backend> {
    pub gate: B::Buf,
    pub up: B::Buf,
    pub down: B::Buf,
}

/// A gated MLP.
pub(super) struct Mlp<B: Backend> {
    pub gate_up: GateUp<B>,
    pub down: Linear<B>,
    pub biases: Option<MlpBiases<B>>,
}

/// A mixture-of-experts layer.
pub(super) struct Moe<B: Backend> {
    pub params: MoeParams,
    pub router: Linear<B>,
    /// added to the router logits (GPT-OSS)
    pub router_bias: Option<B::Buf>,
    /// correction bias added to the scores for choosing (DeepSeek-V3)
    pub bias: Option<B::Buf>,
    pub experts: Vec<Mlp<B>>,
    pub shared: Option<Mlp<B>>,
}

/// The feed-forward part of a layer.
pub(super) enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Moe(Moe<B>),
}

/// Which MLP of a block runs (names its weights for observers).
#[derive(Clone, Copy)]
enum MlpKind {
    Dense,
    Expert(usize),
    Shared,
}

impl<B: Backend> Mlp<B> {
    fn forward(
        &self,
        be: &B,
        x: &B::Buf,
        n: usize,
        tap: &mut Tap<'_>,
        kind: MlpKind,
        act: Activation,
    ) -> B::Buf {
        let hidden = self.hidden(be, x, n, tap, kind, act);
        let mut y = self.down.forward(be, &hidden, n);
        if let Some(b) = &self.biases {
            be.add_bias(&mut y, &b.down);
        }
        y
    }

    /// The down projection's input `act(gate·x) * up·x`, both projections' inputs
    /// shown to `tap`.
    fn hidden(
        &self,
        be: &B,
        x: &B::Buf,
        n: usize,
        tap: &mut Tap<'_>,
        kind: MlpKind,
        act: Activation,
    ) -> B::Buf {
        if tap.wants(LinearStage::FfnInput) {
            let separate = matches!(self.gate_up, GateUp::Separate { .. });
            let (names, expert): (&[&'static str], _) = match kind {
                MlpKind::Dense if separate => (&["ffn_gate.weight", "ffn_up.weight"], None),
                MlpKind::Dense => (&["ffn_up.weight"], None),
                MlpKind::Expert(e) => (&["ffn_gate_exps.weight", "ffn_up_exps.weight"], Some(e)),
                MlpKind::Shared => (&["ffn_gate_shexp.weight", "ffn_up_shexp.weight"], None),
            };
            tap.see(be, LinearStage::FfnInput, expert, names, x, n);
        }
        let (ff, hidden) = match &self.gate_up {
            GateUp::Separate { gate, up } => {
                let [mut u, mut g] = Linear::forward_each([up, gate], be, x, n);
                if let Some(b) = &self.biases {
                    be.add_bias(&mut u, &b.up);
                    be.add_bias(&mut g, &b.gate);
                }
                (gate.out_features(), be.glu(g, &u, act))
            }
            GateUp::Fused(w) => {
                let gu = w.forward(be, x, n);
                let ff = w.out_features() / 2;
                (ff, be.glu_fused(&gu, ff, act))
            }
        };
        debug_assert_eq!(self.down.in_features(), ff);
        if tap.wants(LinearStage::FfnDown) {
            let (names, expert): (&[&'static str], _) = match kind {
                MlpKind::Dense => (&["ffn_down.weight"], None),
                MlpKind::Expert(e) => (&["ffn_down_exps.weight"], Some(e)),
                MlpKind::Shared => (&["ffn_down_shexp.weight"], None),
            };
            tap.see(be, LinearStage::FfnDown, expert, names, &hidden, n);
        }
        hidden
    }
}

impl<B: Backend> Moe<B> {
    fn forward(&self, be: &B, h: &B::Buf, n: usize, tap: &mut Tap<'_>, act: Activation) -> B::Buf {
        let d = self.router.in_features();
        let mut logits = self.router.forward(be, h, n);
        if let Some(b) = &self.router_bias {
            be.add_bias(&mut logits, b);
        }
        let assigned = be.route(&logits, self.bias.as_ref(), &self.params);
        if tap.is_observed() {
            let counts: Vec<usize> = assigned.iter().map(|a| a.len()).collect();
            tap.expert_counts(&counts);
        }
        // every expert sees every token, for the statistics only
        let all = tap.all_experts();
        if all {
            for (e, expert) in self.experts.iter().enumerate() {
                expert.hidden(be, h, n, tap, MlpKind::Expert(e), act);
            }
        }
        let mut out = be.zeros(n * d);
        for (e, toks) in assigned.iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            let rows: Vec<usize> = toks.iter().map(|(t, _)| *t).collect();
            let xe = be.gather_rows(h, d, &rows);
            let kind = MlpKind::Expert(e);
            let ye = if all {
                self.experts[e].forward(be, &xe, toks.len(), &mut Tap::none(), kind, act)
            } else {
                self.experts[e].forward(be, &xe, toks.len(), tap, kind, act)
            };
            be.scatter_add_rows(&mut out, d, &ye, toks);
        }
        if let Some(s) = &self.shared {
            let ys = s.forward(be, h, n, tap, MlpKind::Shared, act);
            be.add_assign(&mut out, &ys);
        }
        out
    }
}

impl<B: Backend> FeedForward<B> {
    /// The feed-forward output for `n` rows of the normalized input `h`.
    pub fn forward(
        &self,
        be: &B,
        h: &B::Buf,
        n: usize,
        tap: &mut Tap<'_>,
        act: Activation,
    ) -> B::Buf {
        match self {
            FeedForward::Dense(m) => m.forward(be, h, n, tap, MlpKind::Dense, act),
            FeedForward::Moe(moe) => moe.forward(be, h, n, tap, act),
        }
    }
}
