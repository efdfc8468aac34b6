//! Dot product of NVFP4 weights (GGML type 40, `block_nvfp4` of llama.cpp's
//! `ggml-common.h`, [`BlockNvfp4`]) with Q8_0 activations, NVFP4's `vec_dot_type` in
//! ggml-cpu (`ggml_vec_dot_nvfp4_q8_0`).
//!
//! A 36-byte block holds 64 values: four UE4M3 scale bytes `d[s]`, then 32 bytes of
//! nibbles, sub-block `s` (16 values) in `qs[8s..8s+8]` with value `16s+j` in the low
//! nibble of `qs[8s+j]` and `16s+8+j` in the high one; value =
//! `E2M1_DOUBLED[nibble]·ue4m3(d[s])/2`. One block spans two Q8_0 activation blocks,
//! sub-blocks `2b` and `2b+1` in block `b`. Per sub-block the integer dot is exact; the
//! float part is `(d_a·d_w)·Σ q_w q_a`, summed sub-block by sub-block in the scalar
//! kernel (as ggml's generic one) and per 8-lane vector in the AVX2 one (one accumulator
//! per half block). The AVX-512 one-row kernel holds both AVX2 accumulators in one
//! 512-bit register and does the same lane operations in the same order, so its result
//! is the AVX2 kernel's to the bit (as `dot_legacy_avx512` does for the 32-value types).

use super::act_quant::Q8_0_BYTES;
use super::dot_legacy::h;
use llmq_formats::blocks::{BlockNvfp4, BlockQ8_0};
use llmq_formats::minifloat::E2M1_DOUBLED;
use llmq_quant::nvfp4::ue4m3_half;

const SUB: usize = 16;

/// One weight row against one activation row (scalar reference).
pub fn dot_nvfp4(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w
        .chunks_exact(BlockNvfp4::BYTES)
        .zip(a.chunks_exact(2 * Q8_0_BYTES))
    {
        for s in 0..4 {
            let d = ue4m3_half(x[BlockNvfp4::D.start + s]);
            let yb = &y[(s / 2) * Q8_0_BYTES..][..Q8_0_BYTES];
            let dy = h(yb, BlockQ8_0::D.start);
            let q8 = &yb[BlockQ8_0::QS.start + (s % 2) * SUB..][..SUB];
            let qs = &x[BlockNvfp4::QS.start + s * SUB / 2..][..SUB / 2];
            let mut sumi = 0i32;
            for (j, &q) in qs.iter().enumerate() {
                sumi += q8[j] as i8 as i32 * E2M1_DOUBLED[(q & 15) as usize] as i32;
                sumi += q8[j + SUB / 2] as i8 as i32 * E2M1_DOUBLED[(q >> 4) as usize] as i32;
            }
            sum += dy * d * sumi as f32;
        }
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    #![allow(unsafe_op_in_unsafe_fn)]
    use super::{ue4m3_half, E2M1_DOUBLED, Q8_0_BYTES};
    use crate::kernels::simd::*;
    use llmq_formats::blocks::{BlockNvfp4 as BNv, BlockQ8_0 as BQ8_0};
    use std::arch::x86_64::*;

    /// Half `h` (0: sub-blocks 0–1, 1: sub-blocks 2–3) of the block at `p` as 32 signed
    /// bytes in value order.
    #[inline(always)]
    pub(super) unsafe fn decode_half(p: *const u8, h: usize) -> __m256i {
        let b = load128(p.add(BNv::QS.start + 16 * h));
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(b, m);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
        // sub-block 2h: low nibbles of bytes 0..8 then their high nibbles; 2h+1 likewise
        let v = _mm256_set_m128i(_mm_unpackhi_epi64(lo, hi), _mm_unpacklo_epi64(lo, hi));
        let table = _mm256_broadcastsi128_si256(load128(E2M1_DOUBLED.as_ptr() as *const u8));
        _mm256_shuffle_epi8(table, v)
    }

    /// The weight scales of half `h` per i32 lane of its product: lanes 0–3 sum
    /// sub-block `2h`, lanes 4–7 sub-block `2h+1`.
    #[inline(always)]
    pub(super) unsafe fn half_scales(d: &[f32; 4], h: usize) -> __m256 {
        let (a, b) = (d[2 * h], d[2 * h + 1]);
        _mm256_setr_ps(a, a, a, a, b, b, b, b)
    }

    /// One weight row against `N` activation rows; each weight half-block is decoded
    /// once for all rows.
    #[inline(always)]
    unsafe fn dot_n<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
        let nb = w.len() / BNv::BYTES;
        for a in &a {
            assert!(a.len() >= nb * 2 * Q8_0_BYTES);
        }
        let wp = w.as_ptr();
        let ap = a.map(|a| a.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); N]; 2];
        for i in 0..nb {
            let p = wp.add(i * BNv::BYTES);
            let d = [0, 1, 2, 3].map(|s| ue4m3_half(*p.add(BNv::D.start + s)));
            for (hh, acc) in acc.iter_mut().enumerate() {
                let v = decode_half(p, hh);
                let av = _mm256_sign_epi8(v, v);
                let dw = half_scales(&d, hh);
                for t in 0..N {
                    let yb = ap[t].add((2 * i + hh) * Q8_0_BYTES);
                    let qy = _mm256_sign_epi8(load256(yb.add(BQ8_0::QS.start)), v);
                    let prod = _mm256_cvtepi32_ps(dot_u8i8(av, qy));
                    let da = load_f16x8(yb.add(BQ8_0::D.start));
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(da, dw), prod, acc[t]);
                }
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(_mm256_add_ps(acc[0][t], acc[1][t]));
        }
        out
    }

    /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
    pub fn dot_nvfp4(w: &[u8], a: &[u8]) -> f32 {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
            dot_n::<1>(w, [a])[0]
        }
        unsafe { inner(w, a) }
    }

    /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
    pub fn dot4_nvfp4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn inner(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            dot_n::<4>(w, a)
        }
        unsafe { inner(w, a) }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    #![allow(unsafe_op_in_unsafe_fn)]
    use super::avx2::{decode_half, half_scales};
    use super::{ue4m3_half, Q8_0_BYTES};
    use crate::kernels::dot_legacy_avx512::{dot_signed, join_f, join_i};
    use crate::kernels::simd::{hsum_ps, load256, load_f16x8};
    use llmq_formats::blocks::{BlockNvfp4 as BNv, BlockQ8_0 as BQ8_0};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn dot1(w: &[u8], a: &[u8]) -> f32 {
        let nb = w.len() / BNv::BYTES;
        assert!(a.len() >= nb * 2 * Q8_0_BYTES);
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let qs = BQ8_0::QS.start;
        let mut acc = _mm512_setzero_ps();
        for i in 0..nb {
            let p = wp.add(i * BNv::BYTES);
            let d = [0, 1, 2, 3].map(|s| ue4m3_half(*p.add(BNv::D.start + s)));
            let (y0, y1) = (ap.add(2 * i * Q8_0_BYTES), ap.add((2 * i + 1) * Q8_0_BYTES));
            let prod = dot_signed(
                join_i(decode_half(p, 0), decode_half(p, 1)),
                join_i(load256(y0.add(qs)), load256(y1.add(qs))),
            );
            let da = join_f(load_f16x8(y0), load_f16x8(y1));
            let dw = join_f(half_scales(&d, 0), half_scales(&d, 1));
            acc = _mm512_fmadd_ps(_mm512_mul_ps(da, dw), _mm512_cvtepi32_ps(prod), acc);
        }
        let lo = _mm512_castps512_ps256(acc);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
        hsum_ps(_mm256_add_ps(lo, hi))
    }

    /// Only handed out by the dispatcher when AVX-512 F/BW/VNNI and AVX2/FMA/F16C were
    /// detected.
    pub fn dot_nvfp4(w: &[u8], a: &[u8]) -> f32 {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
            dot1(w, a)
        }
        // SAFETY: see above.
        unsafe { inner(w, a) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::act_quant::quantize_q8_01;

    /// The scalar kernel equals the dequantized weights times the dequantized Q8_0
    /// activations up to float summation order, the AVX2 one the scalar one.
    #[test]
    fn dot_matches_the_dequantized_product() {
        let cols = 64 * 5;
        let w: Vec<f32> = (0..cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.0013 * (1.0 + (i / 16 % 3) as f32))
            .collect();
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.07)
            .collect();
        let mut wq = vec![0u8; cols / 64 * BlockNvfp4::BYTES];
        llmq_quant::nvfp4::quantize_row(&w, None, &mut wq);
        let mut wd = vec![0.0f32; cols];
        llmq_quant::nvfp4::dequantize_row(&wq, &mut wd);
        let mut aq = vec![0u8; cols / 32 * Q8_0_BYTES];
        quantize_q8_01(&x, &mut aq, false);
        let mut ad = vec![0.0f32; cols];
        llmq_quant::q8_0::dequantize_row(&aq, &mut ad);
        let want: f64 = wd.iter().zip(&ad).map(|(a, b)| *a as f64 * *b as f64).sum();
        let norm: f64 = wd
            .iter()
            .zip(&ad)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        let got = dot_nvfp4(&wq, &aq);
        assert!((got as f64 - want).abs() <= 1e-5 * norm, "{got} vs {want}");
        #[cfg(target_arch = "x86_64")]
        if super::super::Isa::Avx2.available() {
            let fast = avx2::dot_nvfp4(&wq, &aq);
            assert!((fast - got).abs() <= 1e-5 * norm as f32, "{fast} vs {got}");
            let four = avx2::dot4_nvfp4(&wq, [&aq, &aq, &aq, &aq]);
            assert!(four.iter().all(|&v| v == fast), "{four:?} vs {fast}");
            if llmq_quant::isa::avx512_vnni() {
                let wide = avx512::dot_nvfp4(&wq, &aq);
                assert_eq!(wide.to_bits(), fast.to_bits(), "{wide} vs {fast}");
            }
        }
    }
}
