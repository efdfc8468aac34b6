//! Activation quantization: each f32 activation row is turned once per `matmul` call into
//! the `vec_dot_type` ggml pairs with the weight type (`block_q8_0`, `block_q8_1`,
//! `block_q8_K` in llama.cpp `ggml/src/ggml-common.h`):
//!
//! * Q8_0 (34 bytes / 32 values): `d: f16`, `qs: [i8; 32]`, value = `d·q`.
//! * Q8_1 (36 bytes / 32 values): `d: f16`, `s: f16 = d·Σq`, `qs: [i8; 32]`.
//! * Q8_K (292 bytes / 256 values): `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` (sums of
//!   each 16 `qs`).
//!
//! Q8_0/Q8_1 follow ggml-cpu's x86 `quantize_row_q8_0/1` (`id = 127/amax`, round half to
//! even); Q8_K follows `quantize_row_q8_K_ref` (`iscale = -127/max` where `max` is the
//! first value of largest magnitude, `nearest_int`, clamp at 127). The scalar and AVX2
//! versions produce identical bytes, so the two dot paths see the same input.

use super::Isa;
use half::f16;
use llmq_formats::blocks::{BlockQ8K, BlockQ8_0, BlockQ8_1};

/// Bytes of one Q8_0 / Q8_1 / Q8_K block.
pub const Q8_0_BYTES: usize = BlockQ8_0::BYTES;
pub const Q8_1_BYTES: usize = BlockQ8_1::BYTES;
pub const Q8_K_BYTES: usize = BlockQ8K::BYTES;

/// Where a Q8_0 (`with_sum == false`) or Q8_1 block keeps its `qs`.
#[inline(always)]
pub(crate) const fn q8_01_qs_at(with_sum: bool) -> usize {
    if with_sum {
        BlockQ8_1::QS.start
    } else {
        BlockQ8_0::QS.start
    }
}

/// The activation format a weight type's dot product consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Plain f32 (float weights).
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

impl Act {
    /// Bytes of one quantized row of `cols` values (`cols` a multiple of the block).
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            Act::F32 => cols * 4,
            Act::Q8_0 => cols / 32 * Q8_0_BYTES,
            Act::Q8_1 => cols / 32 * Q8_1_BYTES,
            Act::Q8K => cols / 256 * Q8_K_BYTES,
        }
    }

    /// Quantize one row `x` into `out` (`row_bytes(x.len())` bytes). Not for `F32`.
    pub fn quantize(self, isa: Isa, x: &[f32], out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.row_bytes(x.len()));
        match (self, isa) {
            #[cfg(target_arch = "x86_64")]
            (Act::Q8_0, Isa::Avx2) => unsafe { avx2::quantize_q8_01(x, out, false) },
            #[cfg(target_arch = "x86_64")]
            (Act::Q8_1, Isa::Avx2) => unsafe { avx2::quantize_q8_01(x, out, true) },
            #[cfg(target_arch = "x86_64")]
            (Act::Q8K, Isa::Avx2) => unsafe { avx2::quantize_q8_k(x, out) },
            (Act::Q8_0, _) => quantize_q8_01(x, out, false),
            (Act::Q8_1, _) => quantize_q8_01(x, out, true),
            (Act::Q8K, _) => quantize_q8_k(x, out),
            (Act::F32, _) => panic!("f32 activations are not quantized"),
        }
    }
}

/// Scalar Q8_0 (`with_sum == false`) or Q8_1 rows.
pub fn quantize_q8_01(x: &[f32], out: &mut [u8], with_sum: bool) {
    let bb = if with_sum { Q8_1_BYTES } else { Q8_0_BYTES };
    let off = q8_01_qs_at(with_sum);
    for (xb, yb) in x.chunks_exact(32).zip(out.chunks_exact_mut(bb)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in yb[off..].iter_mut().zip(xb) {
            let r = (v * id).round_ties_even() as i32;
            sum += r;
            *q = r as i8 as u8;
        }
        yb[BlockQ8_0::D].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        if with_sum {
            let s = f16::from_f32(d * sum as f32);
            yb[BlockQ8_1::S].copy_from_slice(&s.to_bits().to_le_bytes());
        }
    }
}

/// ggml's `nearest_int`: round half to even (magic-number trick), for |v| < 2^22.
#[inline]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Writes one Q8_K block's trailer (`d`, `bsums`) from its `qs`.
fn finish_q8_k(yb: &mut [u8], d: f32) {
    yb[BlockQ8K::D].copy_from_slice(&d.to_le_bytes());
    for g in 0..16 {
        let s: i32 = yb[BlockQ8K::QS.start + 16 * g..][..16]
            .iter()
            .map(|&q| q as i8 as i32)
            .sum();
        let at = BlockQ8K::BSUMS.start + 2 * g;
        yb[at..at + 2].copy_from_slice(&(s as i16).to_le_bytes());
    }
}

/// Scalar Q8_K rows.
pub fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(256).zip(out.chunks_exact_mut(Q8_K_BYTES)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            yb.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in yb[BlockQ8K::QS].iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        finish_q8_k(yb, 1.0 / iscale);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #![allow(unsafe_op_in_unsafe_fn)]
    use super::*;
    use crate::kernels::simd::*;
    use std::arch::x86_64::*;

    /// Round 32 floats (already scaled) and pack them to 32 i8 in order; also returns
    /// the 8 i32 lanes summed pairwise (for Q8_1's `s`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn round_pack(v: [__m256; 4]) -> (__m256i, __m256i) {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let i0 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(v[0]));
        let i1 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(v[1]));
        let i2 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(v[2]));
        let i3 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(v[3]));
        let sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        let a = _mm256_packs_epi32(i0, i1);
        let b = _mm256_packs_epi32(i2, i3);
        let p = _mm256_packs_epi16(a, b);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        (_mm256_permutevar8x32_epi32(p, perm), sum)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f32_to_f16_bits(v: f32) -> u16 {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;
        _mm_extract_epi16::<0>(_mm_cvtps_ph::<NEAREST>(_mm_set_ss(v))) as u16
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8_01(x: &[f32], out: &mut [u8], with_sum: bool) {
        let bb = if with_sum { Q8_1_BYTES } else { Q8_0_BYTES };
        let off = q8_01_qs_at(with_sum);
        let nb = x.len() / 32;
        assert!(out.len() >= nb * bb);
        let sign = _mm256_set1_ps(-0.0);
        for i in 0..nb {
            let p = x.as_ptr().add(32 * i);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let mut m = _mm256_andnot_ps(sign, v[0]);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[1]));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[2]));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[3]));
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mul = _mm256_set1_ps(id);
            let (q, sum) = round_pack([
                _mm256_mul_ps(v[0], mul),
                _mm256_mul_ps(v[1], mul),
                _mm256_mul_ps(v[2], mul),
                _mm256_mul_ps(v[3], mul),
            ]);
            let yb = out.as_mut_ptr().add(bb * i);
            _mm256_storeu_si256(yb.add(off) as *mut __m256i, q);
            let db = f32_to_f16_bits(d).to_le_bytes();
            *yb.add(BlockQ8_0::D.start) = db[0];
            *yb.add(BlockQ8_0::D.start + 1) = db[1];
            if with_sum {
                let s = f32_to_f16_bits(d * hsum_epi32(sum) as f32).to_le_bytes();
                *yb.add(BlockQ8_1::S.start) = s[0];
                *yb.add(BlockQ8_1::S.start + 1) = s[1];
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
        let nb = x.len() / 256;
        assert!(out.len() >= nb * Q8_K_BYTES);
        let sign = _mm256_set1_ps(-0.0);
        for i in 0..nb {
            let xb = &x[256 * i..256 * i + 256];
            let yb = &mut out[Q8_K_BYTES * i..Q8_K_BYTES * (i + 1)];
            let p = xb.as_ptr();
            let mut m = _mm256_setzero_ps();
            for k in 0..32 {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            if amax == 0.0 {
                yb.fill(0);
                continue;
            }
            // The first value of largest magnitude gives the sign, as in the reference.
            let am = _mm256_set1_ps(amax);
            let mut max = amax;
            for k in 0..32 {
                let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k)));
                let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, am));
                if hit != 0 {
                    max = xb[8 * k + hit.trailing_zeros() as usize];
                    break;
                }
            }
            let iscale = -127.0 / max;
            let mul = _mm256_set1_ps(iscale);
            let lim = _mm256_set1_epi8(127);
            let ones = _mm256_set1_epi8(1);
            let mut quads = [0i32; 64];
            for k in 0..8 {
                let q = p.add(32 * k);
                let (v, _) = round_pack([
                    _mm256_mul_ps(_mm256_loadu_ps(q), mul),
                    _mm256_mul_ps(_mm256_loadu_ps(q.add(8)), mul),
                    _mm256_mul_ps(_mm256_loadu_ps(q.add(16)), mul),
                    _mm256_mul_ps(_mm256_loadu_ps(q.add(24)), mul),
                ]);
                // values are within [-127, 128]; clamp the top like MIN(127, v)
                let v = _mm256_min_epi8(v, lim);
                _mm256_storeu_si256(
                    yb.as_mut_ptr().add(BlockQ8K::QS.start + 32 * k) as *mut __m256i,
                    v,
                );
                let s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones, v), _mm256_set1_epi16(1));
                _mm256_storeu_si256(quads.as_mut_ptr().add(8 * k) as *mut __m256i, s);
            }
            yb[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
            for g in 0..16 {
                let s = quads[4 * g] + quads[4 * g + 1] + quads[4 * g + 2] + quads[4 * g + 3];
                let at = BlockQ8K::BSUMS.start + 2 * g;
                yb[at..at + 2].copy_from_slice(&(s as i16).to_le_bytes());
            }
        }
    }
}
