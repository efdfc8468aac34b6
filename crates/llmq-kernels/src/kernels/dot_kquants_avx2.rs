//! AVX2 versions of the k-quant dot products in [`super::dot_kquants`] (same block
//! layouts, `ggml/src/ggml-common.h`). Every kernel is generic over the number `N` of
//! activation rows it reads per weight row: `N = 1` for decode, `N = 4` for prompt tiles,
//! where each unpacked weight vector is reused four times.
//!
//! Weights are unpacked to unsigned bytes and multiplied with `vpmaddubsw`; per-16 or
//! per-32 scales are applied with `vpmaddwd`; constant offsets and mins come from the
//! activation's `bsums`.
//!
//! Q4_K, Q5_K, Q6_K and IQ4_XS keep the scalar reference's float steps: each block's integer
//! sums are reduced exactly and added with one `sum += d_a·d·isum (− d_a·dmin·msum)` per
//! block, in block order, so these kernels give the scalar kernel's bits (and so do the
//! AVX-512 prompt tiles of [`super::tile_vnni`]). Q2_K and Q3_K accumulate eight float
//! lanes per row.

#![allow(unsafe_op_in_unsafe_fn)]

use super::dot_kquants::{scales_iq4_xs, scales_q3_k};
use super::dot_legacy::IQ4NL_VALUES;
use super::simd::*;
use llmq_formats::blocks::{
    BlockIq4Xs as Iq4Xs, BlockQ2K as Q2K, BlockQ3K as Q3K, BlockQ4K as Q4K, BlockQ5K as Q5K,
    BlockQ6K as Q6K, BlockQ8K,
};
use std::arch::x86_64::*;

/// Bytes of a Q8_K activation block, and where its `qs` and `bsums` start.
const Q8K: usize = BlockQ8K::BYTES;
const Y_QS: usize = BlockQ8K::QS.start;
const Y_BSUMS: usize = BlockQ8K::BSUMS.start;

// Q4_K and Q5_K share the head (`d`, `dmin`, `scales`) that `q45_k` reads.
const _: () = assert!(Q4K::SCALES.start == Q5K::SCALES.start && Q4K::DMIN.start == Q5K::DMIN.start);

#[inline(always)]
unsafe fn act_d(yb: *const u8) -> f32 {
    (yb.add(BlockQ8K::D.start) as *const f32).read_unaligned()
}

#[inline(always)]
unsafe fn check<const N: usize>(w: &[u8], bytes: usize, a: &[&[u8]; N]) -> usize {
    let nb = w.len() / bytes;
    for a in a {
        assert!(a.len() >= nb * Q8K, "activation row too short");
    }
    nb
}

/// Shuffle control putting i16 element `2k` of a lane-broadcast vector in the low lane
/// and element `2k + 1` in the high lane (one scale per 16 values).
#[inline(always)]
unsafe fn pair_ctrl(k: i32) -> __m256i {
    let lo = ((4 * k + 1) << 8) | (4 * k);
    let hi = ((4 * k + 3) << 8) | (4 * k + 2);
    _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16))
}

/// `Σ_t` accumulate: `sumi[t] += madd(maddubs(u, y_t), scale)` for `N` activations.
#[inline(always)]
unsafe fn mac<const N: usize>(
    sumi: &mut [__m256i; N],
    u: __m256i,
    scale: __m256i,
    ys: &[*const u8; N],
    off: usize,
) {
    for t in 0..N {
        let p = _mm256_maddubs_epi16(u, load256(ys[t].add(off)));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, scale));
    }
}

/// Q4_K/Q5_K packed scales to 16 bytes: 8 scales then 8 mins (ggml's `utmp` shuffle).
#[inline(always)]
fn scale_min_words(s: &[u8]) -> [u32; 4] {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    [
        u0 & K1,
        (u2 & K2) | (((u0 >> 6) & K3) << 4),
        u1 & K1,
        ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4),
    ]
}

/// Shuffle control broadcasting i16 element `k` of each lane.
#[inline(always)]
unsafe fn elem_ctrl(k: i32) -> __m256i {
    _mm256_set1_epi16((((2 * k + 1) << 8) | (2 * k)) as i16)
}

#[inline(always)]
unsafe fn q45_k<const FIVE: bool, const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
    let (bytes, qs_off) = if FIVE {
        (Q5K::BYTES, Q5K::QS.start)
    } else {
        (Q4K::BYTES, Q4K::QS.start)
    };
    let nb = check(w, bytes, &a);
    let m4 = _mm256_set1_epi8(0x0f);
    let m5 = _mm256_set1_epi8(0x10);
    let mut out = [0.0f32; N];
    for i in 0..nb {
        let xs = &w[i * bytes..(i + 1) * bytes];
        let x = xs.as_ptr();
        let ys = a.map(|a| a.as_ptr().add(i * Q8K));
        let u = scale_min_words(&xs[Q4K::SCALES]);
        let ms = _mm256_cvtepu8_epi16(_mm_setr_epi32(
            u[0] as i32,
            u[1] as i32,
            u[2] as i32,
            u[3] as i32,
        ));
        let scales = _mm256_permute2x128_si256::<0x00>(ms, ms);
        let mins = _mm256_extracti128_si256::<1>(ms);
        let mut hbits = if FIVE {
            load256(x.add(Q5K::QH.start))
        } else {
            _mm256_setzero_si256()
        };
        let mut sumi = [_mm256_setzero_si256(); N];
        for j in 0..4 {
            let q = load256(x.add(qs_off + 32 * j));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            if FIVE {
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(hbits), m5));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(hbits), m5));
                hbits = _mm256_srli_epi16::<2>(hbits);
            }
            let off = Y_QS + 64 * j;
            let sc_lo = _mm256_shuffle_epi8(scales, elem_ctrl(2 * j as i32));
            let sc_hi = _mm256_shuffle_epi8(scales, elem_ctrl(2 * j as i32 + 1));
            mac(&mut sumi, lo, sc_lo, &ys, off);
            mac(&mut sumi, hi, sc_hi, &ys, off + 32);
        }
        let (d, dmin) = (
            load_f16(x.add(Q4K::D.start)),
            load_f16(x.add(Q4K::DMIN.start)),
        );
        for t in 0..N {
            let yd = act_d(ys[t]);
            // Σ_j m_j · (bsum_2j + bsum_2j+1)
            let bs = _mm_hadd_epi16(
                load128(ys[t].add(Y_BSUMS)),
                load128(ys[t].add(Y_BSUMS + 16)),
            );
            // [isum, msum, ·, ·] in one reduction (exact), then the scalar kernel's
            // float steps: (d_a·d)·isum − (d_a·dmin)·msum, both products as f32 lanes
            let s4 = _mm_add_epi32(
                _mm256_castsi256_si128(sumi[t]),
                _mm256_extracti128_si256::<1>(sumi[t]),
            );
            let h = _mm_hadd_epi32(s4, _mm_madd_epi16(mins, bs));
            let f = _mm_cvtepi32_ps(_mm_hadd_epi32(h, h));
            let p = _mm_mul_ps(_mm_setr_ps(yd * d, yd * dmin, 0.0, 0.0), f);
            out[t] += _mm_cvtss_f32(p) - _mm_cvtss_f32(_mm_movehdup_ps(p));
        }
    }
    out
}

#[inline(always)]
unsafe fn q6_k<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
    let nb = check(w, Q6K::BYTES, &a);
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x30);
    let mut out = [0.0f32; N];
    for i in 0..nb {
        let x = w.as_ptr().add(i * Q6K::BYTES);
        let ys = a.map(|a| a.as_ptr().add(i * Q8K));
        let sc16 = _mm256_cvtepi8_epi16(load128(x.add(Q6K::SCALES.start)));
        let mut sumi = [_mm256_setzero_si256(); N];
        for t in 0..N {
            // the −32 offset: Σ_g sc[g]·32·bsum[g]
            let off = _mm256_madd_epi16(sc16, load256(ys[t].add(Y_BSUMS)));
            sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32::<5>(off));
        }
        for half in 0..2 {
            let s = if half == 0 {
                _mm256_permute2x128_si256::<0x00>(sc16, sc16)
            } else {
                _mm256_permute2x128_si256::<0x11>(sc16, sc16)
            };
            let ql0 = load256(x.add(Q6K::QL.start + 64 * half));
            let ql1 = load256(x.add(Q6K::QL.start + 64 * half + 32));
            let qh = load256(x.add(Q6K::QH.start + 32 * half));
            let u = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                    _mm256_and_si256(qh, m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
                ),
            ];
            for (k, u) in u.iter().enumerate() {
                let scv = _mm256_shuffle_epi8(s, pair_ctrl(k as i32));
                mac(&mut sumi, *u, scv, &ys, Y_QS + 128 * half + 32 * k);
            }
        }
        let d = load_f16(x.add(Q6K::D.start));
        for t in 0..N {
            out[t] += act_d(ys[t]) * d * hsum_epi32(sumi[t]) as f32;
        }
    }
    out
}

#[inline(always)]
unsafe fn q2_k<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
    let nb = check(w, Q2K::BYTES, &a);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut accm = [0.0f32; N];
    for i in 0..nb {
        let x = w.as_ptr().add(i * Q2K::BYTES);
        let ys = a.map(|a| a.as_ptr().add(i * Q8K));
        let sc = load128(x.add(Q2K::SCALES.start));
        let sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(0x0f)));
        let mins16 =
            _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), _mm_set1_epi8(0x0f)));
        let mut sumi = [_mm256_setzero_si256(); N];
        for half in 0..2 {
            let s = if half == 0 {
                _mm256_permute2x128_si256::<0x00>(sc16, sc16)
            } else {
                _mm256_permute2x128_si256::<0x11>(sc16, sc16)
            };
            let mut q = load256(x.add(Q2K::QS.start + 32 * half));
            for j in 0..4 {
                let u = _mm256_and_si256(q, m3);
                q = _mm256_srli_epi16::<2>(q);
                let scv = _mm256_shuffle_epi8(s, pair_ctrl(j));
                mac(&mut sumi, u, scv, &ys, Y_QS + 128 * half + 32 * j as usize);
            }
        }
        let (d, dmin) = (
            load_f16(x.add(Q2K::D.start)),
            load_f16(x.add(Q2K::DMIN.start)),
        );
        for t in 0..N {
            let yd = act_d(ys[t]);
            let msum = hsum_epi32(_mm256_madd_epi16(load256(ys[t].add(Y_BSUMS)), mins16));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * yd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            accm[t] += dmin * yd * msum as f32;
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum_ps(acc[t]) - accm[t];
    }
    out
}

#[inline(always)]
unsafe fn q3_k<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
    let nb = check(w, Q3K::BYTES, &a);
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm256_set1_epi8(4);
    let mut acc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let xs = &w[i * Q3K::BYTES..(i + 1) * Q3K::BYTES];
        let x = xs.as_ptr();
        let ys = a.map(|a| a.as_ptr().add(i * Q8K));
        let scales = scales_q3_k(&xs[Q3K::SCALES]);
        let sc16 = _mm256_cvtepi8_epi16(load128(scales.as_ptr() as *const u8));
        let mut sumi = [_mm256_setzero_si256(); N];
        for t in 0..N {
            // the −4 offset: Σ_g sc[g]·4·bsum[g]
            let off = _mm256_madd_epi16(sc16, load256(ys[t].add(Y_BSUMS)));
            sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32::<2>(off));
        }
        let mut hm = load256(x.add(Q3K::HMASK.start));
        for half in 0..2 {
            let s = if half == 0 {
                _mm256_permute2x128_si256::<0x00>(sc16, sc16)
            } else {
                _mm256_permute2x128_si256::<0x11>(sc16, sc16)
            };
            let mut q = load256(x.add(Q3K::QS.start + 32 * half));
            for j in 0..4 {
                let hb = _mm256_and_si256(_mm256_slli_epi16::<2>(hm), m4);
                let u = _mm256_or_si256(_mm256_and_si256(q, m3), hb);
                q = _mm256_srli_epi16::<2>(q);
                hm = _mm256_srli_epi16::<1>(hm);
                let scv = _mm256_shuffle_epi8(s, pair_ctrl(j));
                mac(&mut sumi, u, scv, &ys, Y_QS + 128 * half + 32 * j as usize);
            }
        }
        let d = load_f16(x.add(Q3K::D.start));
        for t in 0..N {
            let dd = _mm256_set1_ps(d * act_d(ys[t]));
            acc[t] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum_ps(acc[t]);
    }
    out
}

#[inline(always)]
unsafe fn iq4_xs<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
    let nb = check(w, Iq4Xs::BYTES, &a);
    let table = _mm256_broadcastsi128_si256(load128(IQ4NL_VALUES.as_ptr() as *const u8));
    let mut out = [0.0f32; N];
    for i in 0..nb {
        let xs = &w[i * Iq4Xs::BYTES..(i + 1) * Iq4Xs::BYTES];
        let x = xs.as_ptr();
        let ys = a.map(|a| a.as_ptr().add(i * Q8K));
        let ls = scales_iq4_xs(xs);
        let mut sumi = [_mm256_setzero_si256(); N];
        for (ib, l) in ls.iter().enumerate() {
            let v = _mm256_shuffle_epi8(table, nibbles_32(x.add(Iq4Xs::QS.start + 16 * ib)));
            let av = _mm256_sign_epi8(v, v);
            let scv = _mm256_set1_epi16((l - 32) as i16);
            for t in 0..N {
                let y = _mm256_sign_epi8(load256(ys[t].add(Y_QS + 32 * ib)), v);
                let p = _mm256_maddubs_epi16(av, y);
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, scv));
            }
        }
        let d = load_f16(x.add(Iq4Xs::D.start));
        for t in 0..N {
            out[t] += act_d(ys[t]) * d * hsum_epi32(sumi[t]) as f32;
        }
    }
    out
}

macro_rules! entry {
    ($one:ident, $four:ident, $($k:tt)+) => {
        /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
        pub fn $one(w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
                $($k)+::<1>(w, [a])[0]
            }
            unsafe { inner(w, a) }
        }
        /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
        pub fn $four(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn inner(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
                $($k)+::<4>(w, a)
            }
            unsafe { inner(w, a) }
        }
    };
}

entry!(dot_q2_k, dot4_q2_k, q2_k);
entry!(dot_q3_k, dot4_q3_k, q3_k);
entry!(dot_q6_k, dot4_q6_k, q6_k);
entry!(dot_iq4_xs, dot4_iq4_xs, iq4_xs);

/// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
pub fn dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
        q45_k::<false, 1>(w, [a])[0]
    }
    unsafe { inner(w, a) }
}
/// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
pub fn dot4_q4_k(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn inner(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
        q45_k::<false, 4>(w, a)
    }
    unsafe { inner(w, a) }
}
/// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
pub fn dot_q5_k(w: &[u8], a: &[u8]) -> f32 {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
        q45_k::<true, 1>(w, [a])[0]
    }
    unsafe { inner(w, a) }
}
/// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
pub fn dot4_q5_k(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn inner(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
        q45_k::<true, 4>(w, a)
    }
    unsafe { inner(w, a) }
}
