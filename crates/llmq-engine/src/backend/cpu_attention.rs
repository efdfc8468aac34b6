//! Causal softmax attention on the CPU over per-sequence KV caches, one (token, head)
//! pair per rayon task: standard multi-head / grouped-query attention with an optional
//! sliding window, and multi-head latent attention in the absorbed form (DeepSeek-V2,
//! arXiv 2405.04434 §2.1: queries are mapped into the latent space so the cache holds
//! only the latent and the shared roped key).

use super::api::{AttnShape, MlaShape, TokenMap};
use crate::ops::{axpy, dot, softmax, softmax_with_sink};
use rayon::prelude::*;

/// First key position visible from position `p`.
fn first_visible(p: usize, window: Option<usize>) -> usize {
    match window {
        Some(w) => (p + 1).saturating_sub(w),
        None => 0,
    }
}

/// Standard attention over each sequence's `(keys, values)` cache:
/// `[tokens, n_head * head_dim_v]`; `sinks[h]` joins head `h`'s softmax denominator.
pub(super) fn standard(
    q: &[f32],
    caches: &[(&[f32], &[f32])],
    tokens: TokenMap<'_>,
    s: &AttnShape,
    sinks: Option<&[f32]>,
) -> Vec<f32> {
    let (dk, dv) = (s.head_dim_k, s.head_dim_v);
    let (qd, kd, vd) = (s.n_head * dk, s.n_head_kv * dk, s.n_head_kv * dv);
    let gqa = s.n_head / s.n_head_kv;
    let scale = s.scale;
    let mut out = vec![0.0f32; tokens.len() * s.n_head * dv];
    out.par_chunks_mut(dv).enumerate().for_each(|(idx, o)| {
        let (t, h) = (idx / s.n_head, idx % s.n_head);
        let kvh = h / gqa;
        let (ck, cv) = caches[tokens.seq[t]];
        let p = tokens.pos[t];
        let first = first_visible(p, s.window);
        let qh = &q[t * qd + h * dk..t * qd + (h + 1) * dk];
        let mut scores: Vec<f32> = (first..=p)
            .map(|j| {
                let kj = &ck[j * kd + kvh * dk..j * kd + (kvh + 1) * dk];
                dot(qh, kj) * scale
            })
            .collect();
        match sinks {
            Some(sk) => softmax_with_sink(&mut scores, sk[h]),
            None => softmax(&mut scores),
        }
        for (s, j) in scores.iter().zip(first..=p) {
            let vj = &cv[j * vd + kvh * dv..j * vd + (kvh + 1) * dv];
            axpy(o, *s, vj);
        }
    });
    out
}

/// Absorbed MLA attention over each sequence's cache rows:
/// `[tokens * n_head, kv_lora_rank]`.
pub(super) fn mla(
    q_lat: &[f32],
    q_rope: &[f32],
    caches: &[&[f32]],
    tokens: TokenMap<'_>,
    s: &MlaShape,
) -> Vec<f32> {
    let (lora, rope) = (s.kv_lora_rank, s.qk_rope);
    let kw = lora + rope;
    let scale = s.scale;
    let mut o_lat = vec![0.0f32; tokens.len() * s.n_head * lora];
    o_lat.par_chunks_mut(lora).enumerate().for_each(|(idx, o)| {
        let t = idx / s.n_head;
        let c = caches[tokens.seq[t]];
        let p = tokens.pos[t];
        let first = first_visible(p, s.window);
        let ql = &q_lat[idx * lora..(idx + 1) * lora];
        let qr = &q_rope[idx * rope..(idx + 1) * rope];
        let mut scores: Vec<f32> = (first..=p)
            .map(|j| {
                let row = &c[j * kw..(j + 1) * kw];
                (dot(ql, &row[..lora]) + dot(qr, &row[lora..])) * scale
            })
            .collect();
        softmax(&mut scores);
        for (s, j) in scores.iter().zip(first..=p) {
            axpy(o, *s, &c[j * kw..j * kw + lora]);
        }
    });
    o_lat
}
