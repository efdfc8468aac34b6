//! One-row (decode) dot products of the signed 32-value block types (Q4_0, Q5_0, Q8_0,
//! IQ4_NL, MXFP4; layouts in [`super::dot_legacy`]) on AVX-512 F/BW/VNNI.
//!
//! The AVX2 one-row kernel keeps two 8-lane accumulators, one for even and one for odd
//! blocks. Here one 512-bit register holds both: a pair of blocks is decoded into its
//! low and high halves, so every lane sees the same `fma(d_w·d_a, f32(Σ_{4} w·a), acc)`
//! in the same order, and the result is that kernel's to the bit (the integer lanes are
//! exact either way; `vpdpbusd` on `|w|` and `a·sign(w)` replaces `maddubs` + `madd`).

#![allow(unsafe_op_in_unsafe_fn)]

use super::dot_legacy::avx2::{Block, Iq4Nl, Mxfp4, Q4_0, Q5_0, Q8_0};
use super::simd::{hsum_ps, load256, load_f16x8};
use llmq_formats::blocks::BlockQ8_0 as BQ8_0;
use std::arch::x86_64::*;

/// `Σ_{4 bytes} w·a` per i32 lane for signed `w`.
#[inline(always)]
pub(super) unsafe fn dot_signed(w: __m512i, a: __m512i) -> __m512i {
    let neg = _mm512_movepi8_mask(w);
    let sa = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), sa)
}

#[inline(always)]
pub(super) unsafe fn join_i(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

#[inline(always)]
pub(super) unsafe fn join_f(lo: __m256, hi: __m256) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
        _mm256_castps_pd(hi),
    ))
}

#[inline(always)]
unsafe fn dot1<B: Block>(w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(B::SIGNED && B::ACT == BQ8_0::BYTES);
    let nb = w.len() / B::BYTES;
    assert!(a.len() >= nb * B::ACT);
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let qs = BQ8_0::QS.start;
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i + 2 <= nb {
        let (v0, d0, _) = B::decode(wp.add(i * B::BYTES));
        let (v1, d1, _) = B::decode(wp.add((i + 1) * B::BYTES));
        let (y0, y1) = (ap.add(i * B::ACT), ap.add((i + 1) * B::ACT));
        let p = dot_signed(
            join_i(v0, v1),
            join_i(load256(y0.add(qs)), load256(y1.add(qs))),
        );
        let da = join_f(load_f16x8(y0), load_f16x8(y1));
        let ds = _mm512_mul_ps(join_f(d0, d1), da);
        acc = _mm512_fmadd_ps(ds, _mm512_cvtepi32_ps(p), acc);
        i += 2;
    }
    let mut lo = _mm512_castps512_ps256(acc);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    if i < nb {
        // the last (even) block goes to the even accumulator, as in the AVX2 kernel
        let (v, d, _) = B::decode(wp.add(i * B::BYTES));
        let y = ap.add(i * B::ACT);
        let p = dot_signed(
            _mm512_castsi256_si512(v),
            _mm512_castsi256_si512(load256(y.add(qs))),
        );
        let ds = _mm256_mul_ps(d, load_f16x8(y));
        lo = _mm256_fmadd_ps(ds, _mm256_cvtepi32_ps(_mm512_castsi512_si256(p)), lo);
    }
    // `+ 0.0` as the AVX2 kernel adds its (zero) `m` terms: −0 becomes +0.
    hsum_ps(_mm256_add_ps(lo, hi)) + 0.0
}

macro_rules! entry {
    ($name:ident, $b:ty) => {
        /// Only handed out by the dispatcher when AVX-512 F/BW/VNNI and AVX2/FMA/F16C
        /// were detected.
        pub fn $name(w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
            unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
                dot1::<$b>(w, a)
            }
            // SAFETY: see above.
            unsafe { inner(w, a) }
        }
    };
}
entry!(dot_q4_0, Q4_0);
entry!(dot_q5_0, Q5_0);
entry!(dot_q8_0, Q8_0);
entry!(dot_iq4_nl, Iq4Nl);
entry!(dot_mxfp4, Mxfp4);
