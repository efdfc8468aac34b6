//! One-row (decode) dot products of Q4_K, Q5_K, Q6_K and IQ4_XS (block layouts in
//! `ggml/src/ggml-common.h`, see [`super::dot_kquants`]) on AVX-512 F/BW/VNNI.
//!
//! Each step covers 64 weights instead of the AVX2 kernel's 32: `vpmaddubsw` makes the
//! pair sums and `vpdpwssd` multiplies them by their sub-block scale and accumulates in
//! one instruction (AVX2 needs `vpmaddwd` + `vpaddd`). The pair sums never saturate
//! (|w| ≤ 127 and |a| ≤ 128 at most, so 2·127·128 < 2¹⁵), so every integer is exact.
//! At the end of a block the two 256-bit halves of the i32 accumulator are added, which
//! leaves each lane holding the same 4-value groups the AVX2 kernel
//! ([`super::dot_kquants_avx2`]) sums in that lane; the float steps after that are
//! that kernel's, in its order, so the result is that kernel's to the bit.

#![allow(unsafe_op_in_unsafe_fn)]

use super::dot_kquants::scales_iq4_xs;
use super::dot_legacy::IQ4NL_VALUES;
use super::simd::*;
use llmq_formats::blocks::{
    BlockIq4Xs as Iq4Xs, BlockQ4K as Q4K, BlockQ5K as Q5K, BlockQ6K as Q6K, BlockQ8K,
};
use std::arch::x86_64::*;

const Q8K: usize = BlockQ8K::BYTES;
const Y_QS: usize = BlockQ8K::QS.start;
const Y_BSUMS: usize = BlockQ8K::BSUMS.start;

#[inline(always)]
unsafe fn act_d(yb: *const u8) -> f32 {
    (yb.add(BlockQ8K::D.start) as *const f32).read_unaligned()
}

#[inline(always)]
unsafe fn load512(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

/// The low 256-bit half plus the high one (exact i32 sums).
#[inline(always)]
unsafe fn fold(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// Word indices `[a ×16, b ×16]` for `vpermw`.
#[inline(always)]
unsafe fn idx2(a: i16, b: i16) -> __m512i {
    _mm512_mask_blend_epi16(0xffff_0000, _mm512_set1_epi16(a), _mm512_set1_epi16(b))
}

/// Word indices `[a ×8, a+1 ×8, a+2 ×8, a+3 ×8]` for `vpermw`.
#[inline(always)]
unsafe fn idx4(a: i16) -> __m512i {
    let w = |l: i64| 0x0001_0001_0001_0001 * (a as i64 + l);
    _mm512_set_epi64(w(3), w(3), w(2), w(2), w(1), w(1), w(0), w(0))
}

/// Q4_K/Q5_K's packed scales to 16 bytes: 8 scales then 8 mins (as the AVX2 kernel).
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

#[inline(always)]
unsafe fn q45_k<const FIVE: bool>(w: &[u8], a: &[u8]) -> f32 {
    let (bytes, qs_off) = if FIVE {
        (Q5K::BYTES, Q5K::QS.start)
    } else {
        (Q4K::BYTES, Q4K::QS.start)
    };
    let nb = w.len() / bytes;
    assert!(a.len() >= nb * Q8K, "activation row too short");
    let m4 = _mm256_set1_epi8(0x0f);
    let m5 = _mm256_set1_epi8(0x10);
    let idx = [idx2(0, 1), idx2(2, 3), idx2(4, 5), idx2(6, 7)];
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm_setzero_ps();
    for i in 0..nb {
        let xs = &w[i * bytes..(i + 1) * bytes];
        let x = xs.as_ptr();
        let y = a.as_ptr().add(i * Q8K);
        let u = scale_min_words(&xs[Q4K::SCALES]);
        let ms = _mm256_cvtepu8_epi16(_mm_setr_epi32(
            u[0] as i32,
            u[1] as i32,
            u[2] as i32,
            u[3] as i32,
        ));
        let ms512 = _mm512_castsi256_si512(ms);
        let mins = _mm256_extracti128_si256::<1>(ms);
        let mut hbits = if FIVE {
            load256(x.add(Q5K::QH.start))
        } else {
            _mm256_setzero_si256()
        };
        let mut sumi = _mm512_setzero_si512();
        for (j, idx) in idx.iter().enumerate() {
            let q = load256(x.add(qs_off + 32 * j));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            if FIVE {
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(hbits), m5));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(hbits), m5));
                hbits = _mm256_srli_epi16::<2>(hbits);
            }
            let uv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let p = _mm512_maddubs_epi16(uv, load512(y.add(Y_QS + 64 * j)));
            let sc = _mm512_permutexvar_epi16(*idx, ms512);
            sumi = _mm512_dpwssd_epi32(sumi, p, sc);
        }
        let sumi = fold(sumi);
        let (d, dmin) = (
            load_f16(x.add(Q4K::D.start)),
            load_f16(x.add(Q4K::DMIN.start)),
        );
        let yd = act_d(y);
        let bs = _mm_hadd_epi16(load128(y.add(Y_BSUMS)), load128(y.add(Y_BSUMS + 16)));
        let pm = _mm_cvtepi32_ps(_mm_madd_epi16(mins, bs));
        accm = _mm_fmadd_ps(_mm_set1_ps(dmin * yd), pm, accm);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * yd), _mm256_cvtepi32_ps(sumi), acc);
    }
    let m = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    hsum_ps(acc) - _mm_cvtss_f32(m)
}

#[inline(always)]
unsafe fn q6_k(w: &[u8], a: &[u8]) -> f32 {
    let nb = w.len() / Q6K::BYTES;
    assert!(a.len() >= nb * Q8K, "activation row too short");
    let m4 = _mm512_set1_epi8(0x0f);
    let m2 = _mm512_set1_epi8(0x30);
    // the high bits of values 0..32 and 32..64 of a half are `qh << 4` and `qh << 2`,
    // of values 64..96 and 96..128 `qh` and `qh >> 2`
    let shl = idx2(4, 2);
    let shr = idx2(0, 2);
    let idx = [idx4(0), idx4(4), idx4(8), idx4(12)];
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let x = w.as_ptr().add(i * Q6K::BYTES);
        let y = a.as_ptr().add(i * Q8K);
        let sc16 = _mm256_cvtepi8_epi16(load128(x.add(Q6K::SCALES.start)));
        let sc512 = _mm512_castsi256_si512(sc16);
        // the −32 offset: Σ_g sc[g]·32·bsum[g], as the AVX2 kernel
        let off = _mm256_madd_epi16(sc16, load256(y.add(Y_BSUMS)));
        let mut sumi = _mm512_setzero_si512();
        for half in 0..2 {
            let ql = load512(x.add(Q6K::QL.start + 64 * half));
            let qh = _mm512_broadcast_i64x4(load256(x.add(Q6K::QH.start + 32 * half)));
            let ua = _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m2),
            );
            let ub = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m2),
            );
            let yq = y.add(Y_QS + 128 * half);
            let pa = _mm512_maddubs_epi16(ua, load512(yq));
            let pb = _mm512_maddubs_epi16(ub, load512(yq.add(64)));
            let sa = _mm512_permutexvar_epi16(idx[2 * half], sc512);
            let sb = _mm512_permutexvar_epi16(idx[2 * half + 1], sc512);
            sumi = _mm512_dpwssd_epi32(sumi, pa, sa);
            sumi = _mm512_dpwssd_epi32(sumi, pb, sb);
        }
        let sumi = _mm256_sub_epi32(fold(sumi), _mm256_slli_epi32::<5>(off));
        let d = load_f16(x.add(Q6K::D.start));
        let dd = _mm256_set1_ps(d * act_d(y));
        acc = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

#[inline(always)]
unsafe fn iq4_xs(w: &[u8], a: &[u8]) -> f32 {
    let nb = w.len() / Iq4Xs::BYTES;
    assert!(a.len() >= nb * Q8K, "activation row too short");
    let table = _mm512_broadcast_i32x4(load128(IQ4NL_VALUES.as_ptr() as *const u8));
    let m4 = _mm512_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let xs = &w[i * Iq4Xs::BYTES..(i + 1) * Iq4Xs::BYTES];
        let x = xs.as_ptr();
        let y = a.as_ptr().add(i * Q8K);
        let ls = scales_iq4_xs(xs);
        let mut sumi = _mm512_setzero_si512();
        for p in 0..4 {
            // 128-bit lanes [A, A, B, B] of sub-blocks A = 2p and B = 2p + 1, then the
            // low nibbles in lanes 0 and 2, the high ones in lanes 1 and 3
            let q = _mm512_castsi256_si512(load256(x.add(Iq4Xs::QS.start + 32 * p)));
            let q = _mm512_shuffle_i64x2::<0b01_01_00_00>(q, q);
            let nib = _mm512_mask_blend_epi64(
                0b1100_1100,
                _mm512_and_si512(q, m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4),
            );
            let v = _mm512_shuffle_epi8(table, nib);
            let neg = _mm512_movepi8_mask(v);
            let yv = load512(y.add(Y_QS + 64 * p));
            let sy = _mm512_mask_sub_epi8(yv, neg, _mm512_setzero_si512(), yv);
            let prod = _mm512_maddubs_epi16(_mm512_abs_epi8(v), sy);
            let sc = idx2((ls[2 * p] - 32) as i16, (ls[2 * p + 1] - 32) as i16);
            sumi = _mm512_dpwssd_epi32(sumi, prod, sc);
        }
        let d = load_f16(x.add(Iq4Xs::D.start));
        let dd = _mm256_set1_ps(d * act_d(y));
        acc = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(fold(sumi)), acc);
    }
    hsum_ps(acc)
}

macro_rules! entry {
    ($name:ident, $($k:tt)+) => {
        /// Only handed out by the dispatcher when AVX-512 F/BW/VNNI and AVX2/FMA/F16C
        /// were detected.
        pub fn $name(w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
            unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
                $($k)+(w, a)
            }
            // SAFETY: see above.
            unsafe { inner(w, a) }
        }
    };
}
entry!(dot_q4_k, q45_k::<false>);
entry!(dot_q5_k, q45_k::<true>);
entry!(dot_q6_k, q6_k);
entry!(dot_iq4_xs, iq4_xs);
