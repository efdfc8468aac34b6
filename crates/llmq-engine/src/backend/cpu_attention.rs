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
//! With AVX and head sizes in multiples of 8, `standard` runs the same operations 8 keys
//! at a time ([`avx::scores`]: the 8 dot products' lanes transposed and summed in
//! `ops::dot`'s order) and keeps each output row in registers across the keys
//! ([`avx::weighted_sum`]), instead of one call per key and head.

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
    let blocked = avx_blocked(dk, dv);
    out.par_chunks_mut(gqa * dv)
        .enumerate()
        .for_each(|(idx, o)| {
            let (t, kvh) = (idx / s.n_head_kv, idx % s.n_head_kv);
            let (ck, cv) = caches[tokens.seq[t]];
            let p = tokens.pos[t];
            let first = first_visible(p, s.window);
            let len = p + 1 - first;
            let mut scores = vec![0.0f32; gqa * len];
            #[cfg(target_arch = "x86_64")]
            if blocked {
                let qg = &q[t * qd + kvh * gqa * dk..t * qd + (kvh + 1) * gqa * dk];
                let ks = &ck[first * kd..(p + 1) * kd];
                avx::scores(qg, ks, kd, kvh * dk, dk, scale, &mut scores);
            }
            for (j, jj) in (first..=p).enumerate().filter(|_| !blocked) {
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
            #[cfg(target_arch = "x86_64")]
            if blocked {
                let vs = &cv[first * vd..(p + 1) * vd];
                for (g, og) in o.chunks_exact_mut(dv).enumerate() {
                    avx::weighted_sum(og, &scores[g * len..(g + 1) * len], vs, vd, kvh * dv);
                }
            }
            for (j, jj) in (first..=p).enumerate().filter(|_| !blocked) {
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

/// Whether [`avx::scores`] / [`avx::weighted_sum`] serve these head sizes here.
fn avx_blocked(dk: usize, dv: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        return dk.is_multiple_of(8) && dv.is_multiple_of(8) && dk > 0 && dv > 0;
    }
    let _ = (dk, dv);
    false
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

    /// Column `k` of the 8×8 matrix whose rows are `a`: `out[k][u] = a[u][k]`.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn transpose8(a: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(a[0], a[1]);
        let t1 = _mm256_unpackhi_ps(a[0], a[1]);
        let t2 = _mm256_unpacklo_ps(a[2], a[3]);
        let t3 = _mm256_unpackhi_ps(a[2], a[3]);
        let t4 = _mm256_unpacklo_ps(a[4], a[5]);
        let t5 = _mm256_unpackhi_ps(a[4], a[5]);
        let t6 = _mm256_unpacklo_ps(a[6], a[7]);
        let t7 = _mm256_unpackhi_ps(a[6], a[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// `out[g·len + j] = dot(q_g, k_j) · scale` with [`dot`]'s bits, for the `q.len() / dk`
    /// query heads `q_g` (contiguous) and the `len = out.len() / heads` keys
    /// `k_j = ks[j·stride + off..][..dk]`; `dk` a multiple of 8. Only used where AVX was
    /// detected.
    pub fn scores(
        q: &[f32],
        ks: &[f32],
        stride: usize,
        off: usize,
        dk: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        #[target_feature(enable = "avx")]
        unsafe fn inner(
            q: &[f32],
            ks: &[f32],
            stride: usize,
            off: usize,
            dk: usize,
            scale: f32,
            out: &mut [f32],
        ) {
            let heads = q.len() / dk;
            let len = out.len() / heads;
            assert!(dk.is_multiple_of(8) && heads * len == out.len());
            assert!(len == 0 || (len - 1) * stride + off + dk <= ks.len());
            // `f32: Sum` folds from this value (`dot` sums its lanes, then the empty
            // remainder, through it)
            let init = _mm256_set1_ps(std::iter::empty::<f32>().sum::<f32>());
            let sv = _mm256_set1_ps(scale);
            for g in 0..heads {
                let qg = q.as_ptr().add(g * dk);
                let og = &mut out[g * len..(g + 1) * len];
                let mut j = 0;
                while j + 8 <= len {
                    let kp = ks.as_ptr().add(j * stride + off);
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for i in (0..dk).step_by(8) {
                        let x = _mm256_loadu_ps(qg.add(i));
                        for (u, a) in acc.iter_mut().enumerate() {
                            let y = _mm256_loadu_ps(kp.add(u * stride + i));
                            *a = _mm256_add_ps(*a, _mm256_mul_ps(x, y));
                        }
                    }
                    let mut s = init;
                    for l in transpose8(acc) {
                        s = _mm256_add_ps(s, l);
                    }
                    s = _mm256_mul_ps(_mm256_add_ps(s, init), sv);
                    _mm256_storeu_ps(og.as_mut_ptr().add(j), s);
                    j += 8;
                }
                for (jj, o) in og.iter_mut().enumerate().skip(j) {
                    let k = &ks[jj * stride + off..jj * stride + off + dk];
                    *o = dot(std::slice::from_raw_parts(qg, dk), k) * scale;
                }
            }
        }
        // SAFETY: handed out only where AVX was detected.
        unsafe { inner(q, ks, stride, off, dk, scale, out) }
    }

    /// `o += Σ_j w[j]·v_j` with `v_j = vs[j·stride + off..][..o.len()]`, one [`axpy`] per
    /// key in order (the same products and sums per element), the row of `o` held in
    /// registers; `o.len()` a multiple of 8. Only used where AVX was detected.
    pub fn weighted_sum(o: &mut [f32], w: &[f32], vs: &[f32], stride: usize, off: usize) {
        #[target_feature(enable = "avx")]
        unsafe fn inner(o: &mut [f32], w: &[f32], vs: &[f32], stride: usize, off: usize) {
            let dv = o.len();
            assert!(dv.is_multiple_of(8));
            assert!(w.is_empty() || (w.len() - 1) * stride + off + dv <= vs.len());
            for c0 in (0..dv).step_by(64) {
                let n = ((dv - c0) / 8).min(8);
                let mut y = [_mm256_setzero_ps(); 8];
                for (u, y) in y.iter_mut().enumerate().take(n) {
                    *y = _mm256_loadu_ps(o.as_ptr().add(c0 + 8 * u));
                }
                for (j, &a) in w.iter().enumerate() {
                    let av = _mm256_set1_ps(a);
                    let vp = vs.as_ptr().add(j * stride + off + c0);
                    for (u, y) in y.iter_mut().enumerate().take(n) {
                        let p = _mm256_mul_ps(av, _mm256_loadu_ps(vp.add(8 * u)));
                        *y = _mm256_add_ps(*y, p);
                    }
                }
                for (u, y) in y.iter().enumerate().take(n) {
                    _mm256_storeu_ps(o.as_mut_ptr().add(c0 + 8 * u), *y);
                }
            }
        }
        // SAFETY: handed out only where AVX was detected.
        unsafe { inner(o, w, vs, stride, off) }
    }

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

    /// The blocked scores and weighted sums give one `dot` / `axpy` per key's bits,
    /// with remainders of keys, zero queries and rows, and negative zeros.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn blocked_attention_equals_one_call_per_key() {
        if !avx_blocked(8, 8) {
            return;
        }
        let mut seed = 11u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        for (heads, dk, len) in [
            (4, 64, 1),
            (4, 64, 17),
            (1, 8, 8),
            (2, 128, 33),
            (3, 16, 24),
        ] {
            let (stride, off) = (3 * dk + 5, dk + 2);
            let mut q: Vec<f32> = (0..heads * dk).map(|_| next()).collect();
            q[..dk].fill(0.0);
            let mut ks: Vec<f32> = (0..len * stride).map(|_| next() * 2.0).collect();
            ks[off..off + dk].fill(-0.0);
            let mut got = vec![0.0f32; heads * len];
            avx::scores(&q, &ks, stride, off, dk, 0.125, &mut got);
            let mut w = vec![0.0f32; heads * len];
            for g in 0..heads {
                for j in 0..len {
                    let k = &ks[j * stride + off..j * stride + off + dk];
                    let want = dot(&q[g * dk..(g + 1) * dk], k) * 0.125;
                    assert_eq!(got[g * len + j].to_bits(), want.to_bits(), "{g} {j}");
                    w[g * len + j] = if j % 5 == 3 { -0.0 } else { next() };
                }
            }
            let dv = dk;
            let vs: Vec<f32> = (0..len * stride).map(|_| next()).collect();
            for g in 0..heads {
                let mut a: Vec<f32> = (0..dv)
                    .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
                    .collect();
                let mut b = a.clone();
                let wg = &w[g * len..(g + 1) * len];
                avx::weighted_sum(&mut a, wg, &vs, stride, off);
                for (j, &x) in wg.iter().enumerate() {
                    axpy(&mut b, x, &vs[j * stride + off..j * stride + off + dv]);
                }
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }
}
