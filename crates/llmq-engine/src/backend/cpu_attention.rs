//! Causal softmax attention on the CPU over per-sequence KV caches: standard multi-head
//! / grouped-query attention with an optional sliding window, one (token, KV head) per
//! rayon task so the query heads sharing a KV head read its keys and values once, and
//! multi-head latent attention in the absorbed form (DeepSeek-V2, arXiv 2405.04434
//! §2.1: queries are mapped into the latent space so the cache holds only the latent and
//! the shared roped key), one (token, head) per task.
//!
//! Every score and output is computed with the float operations of `ops::dot` /
//! `ops::axpy` (8-lane products and sums where the CPU has AVX, the same lane-wise
//! operations as the portable loops), so a token's result never depends on the batch.

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
    let (dotf, axpyf) = vector_ops();
    out.par_chunks_mut(gqa * dv)
        .enumerate()
        .for_each(|(idx, o)| {
            let (t, kvh) = (idx / s.n_head_kv, idx % s.n_head_kv);
            let (ck, cv) = caches[tokens.seq[t]];
            let p = tokens.pos[t];
            let first = first_visible(p, s.window);
            let len = p + 1 - first;
            let mut scores = vec![0.0f32; gqa * len];
            for (j, jj) in (first..=p).enumerate() {
                let kj = &ck[j_row(jj, kd, kvh, dk)];
                for g in 0..gqa {
                    let h = kvh * gqa + g;
                    let qh = &q[t * qd + h * dk..t * qd + (h + 1) * dk];
                    scores[g * len + j] = dotf(qh, kj) * scale;
                }
            }
            for (g, sc) in scores.chunks_exact_mut(len).enumerate() {
                match sinks {
                    Some(sk) => softmax_with_sink(sc, sk[kvh * gqa + g]),
                    None => softmax(sc),
                }
            }
            for (j, jj) in (first..=p).enumerate() {
                let vj = &cv[j_row(jj, vd, kvh, dv)];
                for (g, og) in o.chunks_exact_mut(dv).enumerate() {
                    axpyf(og, scores[g * len + j], vj);
                }
            }
        });
    out
}

/// Head `h`'s `width` values of cache row `j` (rows of `stride` values).
#[inline]
fn j_row(j: usize, stride: usize, h: usize, width: usize) -> std::ops::Range<usize> {
    j * stride + h * width..j * stride + (h + 1) * width
}

type DotFn = fn(&[f32], &[f32]) -> f32;
type AxpyFn = fn(&mut [f32], f32, &[f32]);

/// `ops::dot` and `ops::axpy`, or their AVX forms (same bits) where the CPU has AVX.
fn vector_ops() -> (DotFn, AxpyFn) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        return (avx::dot, avx::axpy);
    }
    (dot, axpy)
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// `ops::dot` on 8-lane vectors: lane `i` sums the products `i mod 8` in order, the
    /// lanes are summed in order, then the remainder. Only used where AVX was detected.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[target_feature(enable = "avx")]
        unsafe fn inner(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len());
            let n8 = n / 8 * 8;
            let mut acc = _mm256_setzero_ps();
            for i in (0..n8).step_by(8) {
                let x = _mm256_loadu_ps(a.as_ptr().add(i));
                let y = _mm256_loadu_ps(b.as_ptr().add(i));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            lanes.iter().sum::<f32>()
                + a[n8..n]
                    .iter()
                    .zip(&b[n8..n])
                    .map(|(x, y)| x * y)
                    .sum::<f32>()
        }
        // SAFETY: handed out only where AVX was detected.
        unsafe { inner(a, b) }
    }

    /// `ops::axpy` (`y += a·x`, a product then a sum per element) on 8-lane vectors.
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        #[target_feature(enable = "avx")]
        unsafe fn inner(y: &mut [f32], a: f32, x: &[f32]) {
            let n = y.len().min(x.len());
            let n8 = n / 8 * 8;
            let av = _mm256_set1_ps(a);
            for i in (0..n8).step_by(8) {
                let yp = y.as_mut_ptr().add(i);
                let p = _mm256_mul_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)));
                _mm256_storeu_ps(yp, _mm256_add_ps(_mm256_loadu_ps(yp), p));
            }
            for (y, x) in y[n8..n].iter_mut().zip(&x[n8..n]) {
                *y += a * x;
            }
        }
        // SAFETY: handed out only where AVX was detected.
        unsafe { inner(y, a, x) }
    }
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
    let (dotf, axpyf) = vector_ops();
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
                (dotf(ql, &row[..lora]) + dotf(qr, &row[lora..])) * scale
            })
            .collect();
        softmax(&mut scores);
        for (s, j) in scores.iter().zip(first..=p) {
            axpyf(o, *s, &c[j * kw..j * kw + lora]);
        }
    });
    o_lat
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector forms give `ops::dot` / `ops::axpy`'s bits, remainders included.
    #[test]
    fn vector_ops_equal_the_portable_ones() {
        let (dotf, axpyf) = vector_ops();
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        for n in [1, 7, 8, 64, 67, 192] {
            let a: Vec<f32> = (0..n).map(|_| next() * 3.0).collect();
            let b: Vec<f32> = (0..n).map(|_| next() * 1e-3).collect();
            assert_eq!(dotf(&a, &b).to_bits(), dot(&a, &b).to_bits(), "dot n={n}");
            let (mut y1, mut y2) = (b.clone(), b.clone());
            let w = next();
            axpyf(&mut y1, w, &a);
            axpy(&mut y2, w, &a);
            assert!(
                y1.iter().zip(&y2).all(|(x, y)| x.to_bits() == y.to_bits()),
                "axpy n={n}"
            );
        }
    }
}
