//! One-row (decode) dot products of Q6_K and IQ4_XS (block layouts in
//! `ggml/src/ggml-common.h`, see [`super::dot_kquants`]) on AVX-512 F/BW/VNNI.
//!
//! Each step covers 64 weights instead of the AVX2 kernel's 32: `vpmaddubsw` makes the
//! pair sums and `vpdpwssd` multiplies them by their sub-block scale and accumulates in
//! one instruction (AVX2 needs `vpmaddwd` + `vpaddd`). The pair sums never saturate
//! (|w| ≤ 127 and |a| ≤ 128 at most, so 2·127·128 < 2¹⁵), so every integer is exact.
//! At the end of a block its exact integer sum is reduced and added with the scalar
//! reference's one float step per block (`sum += d_a·d·isum`), so the result is the
//! scalar kernel's (and the AVX2 one's) to the bit.
//!
//! Q4_K/Q5_K have no kernel here: written the same way, Q4_K ran slower than AVX2 on
//! the 2-core Xeon (AVX-512, VNNI) this was measured on, so they keep the AVX2 one.

#![allow(unsafe_op_in_unsafe_fn)]

use super::dot_kquants::scales_iq4_xs;
use super::dot_legacy::IQ4NL_VALUES;
use super::simd::*;
use llmq_formats::blocks::{BlockIq4Xs as Iq4Xs, BlockQ6K as Q6K, BlockQ8K};
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
    let mut sum = 0.0f32;
    for i in 0..nb {
        let x = w.as_ptr().add(i * Q6K::BYTES);
        let y = a.as_ptr().add(i * Q8K);
        let sc16 = _mm256_cvtepi8_epi16(load128(x.add(Q6K::SCALES.start)));
        let sc512 = _mm512_castsi256_si512(sc16);
        // the −32 offset: Σ_g sc[g]·32·bsum[g], as the AVX2 kernel
        let off = _mm256_madd_epi16(sc16, load256(y.add(Y_BSUMS)));
        let (mut sa_acc, mut sb_acc) = (_mm512_setzero_si512(), _mm512_setzero_si512());
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
            sa_acc = _mm512_dpwssd_epi32(sa_acc, pa, sa);
            sb_acc = _mm512_dpwssd_epi32(sb_acc, pb, sb);
        }
        let sumi = fold(_mm512_add_epi32(sa_acc, sb_acc));
        let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(off));
        let d = load_f16(x.add(Q6K::D.start));
        sum += act_d(y) * d * hsum_epi32(sumi) as f32;
    }
    sum
}

#[inline(always)]
unsafe fn iq4_xs(w: &[u8], a: &[u8]) -> f32 {
    let nb = w.len() / Iq4Xs::BYTES;
    assert!(a.len() >= nb * Q8K, "activation row too short");
    let table = _mm512_broadcast_i32x4(load128(IQ4NL_VALUES.as_ptr() as *const u8));
    let m4 = _mm512_set1_epi8(0x0f);
    let mut sum = 0.0f32;
    for i in 0..nb {
        let xs = &w[i * Iq4Xs::BYTES..(i + 1) * Iq4Xs::BYTES];
        let x = xs.as_ptr();
        let y = a.as_ptr().add(i * Q8K);
        let ls = scales_iq4_xs(xs);
        let mut sumi = [_mm512_setzero_si512(); 2];
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
            sumi[p % 2] = _mm512_dpwssd_epi32(sumi[p % 2], prod, sc);
        }
        let sumi = _mm512_reduce_add_epi32(_mm512_add_epi32(sumi[0], sumi[1]));
        let d = load_f16(x.add(Iq4Xs::D.start));
        sum += act_d(y) * d * sumi as f32;
    }
    sum
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
entry!(dot_q6_k, q6_k);
entry!(dot_iq4_xs, iq4_xs);
