//! Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434 §2.1; DeepSeek-V3,
//! GLM-4.7-Flash) in the absorbed form llama.cpp uses: keys and values are never
//! expanded per head. The cache holds the normalized KV latent and the shared roped
//! key; each query head's non-rotary part is mapped into the latent space through its
//! `k_b` slice, attention runs over latents, and each head's weighted latent is mapped
//! to values through its `v_b` slice.

use super::kv_cache::{self, Part, SeqStep};
use crate::backend::{Backend, Linear, MlaShape, Rope, TokenMap};
use crate::calib::{LinearStage, Tap};
use crate::hparams::{Hparams, MlaParams};
use llmq_kernels::WeightMatrix;

/// The query projection of an MLA layer.
pub(super) enum MlaQuery<B: Backend> {
    /// one projection (`attn_q`, DeepSeek-V2-Lite)
    Direct(Linear<B>),
    /// low-rank: `q_b(rms_norm(q_a · x))`
    LowRank {
        a: Linear<B>,
        norm: B::Buf,
        b: Linear<B>,
    },
}

/// MLA weights of one layer.
pub(super) struct MlaAttention<B: Backend> {
    pub dims: MlaParams,
    pub query: MlaQuery<B>,
    /// `x → [latent | shared key]`
    pub wkv_a: Linear<B>,
    pub kv_a_norm: B::Buf,
    /// per head `[kv_lora, nope]`: q_nope → latent space
    pub k_b: Vec<Linear<B>>,
    /// per head `[v, kv_lora]`: latent → value
    pub v_b: Vec<Linear<B>>,
    pub wo: Linear<B>,
}

impl<B: Backend> MlaAttention<B> {
    /// Attention of layer `li` over the normalized input `xn` (`[tokens, n_embd]`):
    /// appends the new cache rows to each sequence's cache, returns the output
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
        let m = &self.dims;
        let h_n = hp.n_head;
        let (nope, rope, lora, vdim) = (m.qk_nope, m.qk_rope, m.kv_lora_rank, m.v_head_dim);
        let qk = nope + rope;
        if tap.wants(LinearStage::AttnInput) {
            let names: &[&'static str] = match &self.query {
                MlaQuery::Direct(_) => &["attn_q.weight", "attn_kv_a_mqa.weight"],
                MlaQuery::LowRank { .. } => &["attn_q_a.weight", "attn_kv_a_mqa.weight"],
            };
            tap.see(be, LinearStage::AttnInput, None, names, xn, t_all);
        }
        let q = match &self.query {
            MlaQuery::Direct(w) => w.forward(be, xn, t_all),
            MlaQuery::LowRank { a, norm, b } => {
                let mut qa = a.forward(be, xn, t_all);
                be.rms_norm_inplace(&mut qa, norm, hp.eps);
                tap.see(
                    be,
                    LinearStage::AttnLatent,
                    None,
                    &["attn_q_b.weight"],
                    &qa,
                    t_all,
                );
                b.forward(be, &qa, t_all)
            }
        };
        let kv = self.wkv_a.forward(be, xn, t_all);
        let kw = lora + rope;
        // cache rows: normalized latent, then the roped shared key
        let mut latent = be.slice_cols(&kv, kw, 0, lora);
        be.rms_norm_inplace(&mut latent, &self.kv_a_norm, hp.eps);
        let mut k_rope = be.slice_cols(&kv, kw, lora, rope);
        // q viewed as rows of one head (`qk` values): the rotary part of every head
        let mut q_rope = be.slice_cols(&q, qk, nope, rope);
        let rot = Rope {
            n_rot: rope,
            base: lp.rope_base,
            scale: lp.rope.scale,
            kind: hp.rope_kind,
            freq_factors: lp.rope.factors.as_deref(),
            attn_factor: lp.rope.attn_factor,
        };
        be.rope(&mut [&mut k_rope, &mut q_rope], rope, tokens.pos, rot);
        let rows = be.concat_cols(&latent, lora, &k_rope, rope);
        kv_cache::append(be, seqs, li, tokens.seq, Part::K, &rows, kw);
        if tap.wants(LinearStage::AttnLatent) {
            tap.see(
                be,
                LinearStage::AttnLatent,
                None,
                &["attn_k_b.weight", "attn_v_b.weight"],
                &latent,
                t_all,
            );
        }
        // absorbed query: q_lat[t,h] = k_b[h] · q_nope[t,h]
        let mut q_lat = be.zeros(t_all * h_n * lora);
        for (h, kb) in self.k_b.iter().enumerate() {
            let qn = be.slice_cols(&q, h_n * qk, h * qk, nope);
            let y = kb.forward(be, &qn, t_all);
            be.write_cols(&mut q_lat, h_n * lora, h * lora, &y, lora);
        }
        let caches: Vec<&B::Buf> = kv_cache::views(seqs, li).into_iter().map(|c| c.k).collect();
        let shape = MlaShape {
            n_head: h_n,
            kv_lora_rank: lora,
            qk_rope: rope,
            scale: hp.attn_scale,
            window: lp.sliding_window,
        };
        let o_lat = be.mla_attention(&q_lat, &q_rope, &caches, tokens, &shape);
        let mut out = be.zeros(t_all * h_n * vdim);
        for (h, vb) in self.v_b.iter().enumerate() {
            let ol = be.slice_cols(&o_lat, h_n * lora, h * lora, lora);
            let y = vb.forward(be, &ol, t_all);
            be.write_cols(&mut out, h_n * vdim, h * vdim, &y, vdim);
        }
        tap.see(
            be,
            LinearStage::AttnOutput,
            None,
            &["attn_output.weight"],
            &out,
            t_all,
        );
        self.wo.forward(be, &out, t_all)
    }
}

/// Split a joint `kv_b` (`[n_head * (nope + v), lora]`) into per-head `k_b`
/// (`[lora, nope]`, transposed) and `v_b` (`[v, lora]`), as f32.
pub(super) fn split_kv_b(
    kvb: &WeightMatrix,
    h: usize,
    nope: usize,
    v: usize,
) -> (Vec<WeightMatrix>, Vec<WeightMatrix>) {
    let lora = kvb.cols;
    let all = kvb.to_f32();
    let mut kb = Vec::with_capacity(h);
    let mut vb = Vec::with_capacity(h);
    for j in 0..h {
        let base = j * (nope + v);
        let mut kt = vec![0.0f32; lora * nope];
        for c in 0..nope {
            for l in 0..lora {
                kt[l * nope + c] = all[(base + c) * lora + l];
            }
        }
        kb.push(WeightMatrix::from_f32(lora, nope, kt));
        vb.push(WeightMatrix::from_f32(
            v,
            lora,
            all[(base + nope) * lora..(base + nope + v) * lora].to_vec(),
        ));
    }
    (kb, vb)
}
