//! Standard multi-head attention (Vaswani et al. 2017) with grouped-query KV heads
//! (Ainslie et al. 2023): separate or fused (Phi-3) q/k/v projections, optional q/k/v
//! biases (Qwen2) and per-head q/k RMSNorm (Qwen3, Gemma 3), RoPE, a per-layer sliding
//! window, optional attention sinks (GPT-OSS: a learned logit per head in the softmax,
//! Xiao et al. 2023), then the output projection with an optional bias. The attention kind of a layer is an
//! [`Attention`]: standard or multi-head latent (`super::mla`).

use super::kv_cache::{self, Part, SeqStep};
use super::mla::MlaAttention;
use crate::backend::{AttnShape, Backend, Linear, Rope, TokenMap};
use crate::calib::{LinearStage, Tap};
use crate::hparams::Hparams;

/// The attention of one layer.
pub(super) enum Attention<B: Backend> {
    Standard(StandardAttention<B>),
    Mla(MlaAttention<B>),
}

/// The q/k/v projections.
pub(super) enum Qkv<B: Backend> {
    Separate {
        q: Linear<B>,
        k: Linear<B>,
        v: Linear<B>,
    },
    /// one `[q | k | v]` projection (Phi-3's `attn_qkv`)
    Fused(Linear<B>),
}

/// Standard attention weights of one layer.
pub(super) struct StandardAttention<B: Backend> {
    pub qkv: Qkv<B>,
    pub bq: Option<B::Buf>,
    pub bk: Option<B::Buf>,
    pub bv: Option<B::Buf>,
    pub q_norm: Option<B::Buf>,
    pub k_norm: Option<B::Buf>,
    pub wo: Linear<B>,
    pub bo: Option<B::Buf>,
    /// per-head sink logits
    pub sinks: Option<B::Buf>,
}

impl<B: Backend> StandardAttention<B> {
    /// Attention of layer `li` over the normalized input `xn` (`[tokens, n_embd]`):
    /// appends the new keys and values to each sequence's cache, returns the output
    /// projection (`[tokens, n_embd]`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        hp: &Hparams,
        li: usize,
        xn: &B::Buf,
        seqs: &mut [SeqStep<'_, B>],
        tokens: TokenMap<'_>,
        tap: &mut Tap<'_>,
    ) -> B::Buf {
        let t_all = tokens.len();
        let lp = &hp.layers[li];
        let (dk, dv) = (hp.head_dim_k, hp.head_dim_v);
        let (qd, kd, vd) = (hp.n_head * dk, hp.n_head_kv * dk, hp.n_head_kv * dv);
        if tap.wants(LinearStage::AttnInput) {
            let names: &[&'static str] = match &self.qkv {
                Qkv::Fused(_) => &["attn_qkv.weight"],
                Qkv::Separate { .. } => &["attn_q.weight", "attn_k.weight", "attn_v.weight"],
            };
            tap.see(be, LinearStage::AttnInput, None, names, xn, t_all);
        }
        let (mut q, mut k, mut v) = match &self.qkv {
            Qkv::Fused(w) => {
                let qkv = w.forward(be, xn, t_all);
                let w_all = qd + kd + vd;
                (
                    be.slice_cols(&qkv, w_all, 0, qd),
                    be.slice_cols(&qkv, w_all, qd, kd),
                    be.slice_cols(&qkv, w_all, qd + kd, vd),
                )
            }
            Qkv::Separate { q, k, v } => {
                let [q, k, v] = Linear::forward_each([q, k, v], be, xn, t_all);
                (q, k, v)
            }
        };
        for (buf, b) in [(&mut q, &self.bq), (&mut k, &self.bk), (&mut v, &self.bv)] {
            if let Some(b) = b {
                be.add_bias(buf, b);
            }
        }
        if let Some(w) = &self.q_norm {
            be.rms_norm_inplace(&mut q, w, hp.eps);
        }
        if let Some(w) = &self.k_norm {
            be.rms_norm_inplace(&mut k, w, hp.eps);
        }
        // LongRoPE / dynamic NTK: the call's longest sequence picks the rotation
        let seq_len = tokens.pos.iter().max().map_or(0, |p| p + 1);
        let by_length = lp
            .length_dependent
            .as_ref()
            .and_then(|s| s.for_length(f64::from(lp.rope_base), hp.n_rot, seq_len));
        let (base, factors) = match &by_length {
            Some((b, f)) => (*b as f32, f.as_deref()),
            None => (lp.rope_base, lp.rope.factors.as_deref()),
        };
        let rope = Rope {
            n_rot: hp.n_rot,
            base,
            scale: lp.rope.scale,
            kind: hp.rope_kind,
            freq_factors: factors,
            attn_factor: lp.rope.attn_factor,
        };
        be.rope(&mut [&mut q, &mut k], dk, tokens.pos, rope);
        kv_cache::append(be, seqs, li, tokens.seq, Part::K, &k, kd);
        kv_cache::append(be, seqs, li, tokens.seq, Part::V, &v, vd);
        let shape = AttnShape {
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim_k: dk,
            head_dim_v: dv,
            scale: hp.attn_scale,
            window: lp.sliding_window,
        };
        let out = be.attention(
            &q,
            &kv_cache::views(seqs, li),
            tokens,
            &shape,
            self.sinks.as_ref(),
        );
        tap.see(
            be,
            LinearStage::AttnOutput,
            None,
            &["attn_output.weight"],
            &out,
            t_all,
        );
        let mut y = self.wo.forward(be, &out, t_all);
        if let Some(b) = &self.bo {
            be.add_bias(&mut y, b);
        }
        y
    }
}
