//! Dot products of floating-point coded weight rows ([`crate::fp_blocks`]: NVFP4, MXFP4,
//! FP8 E4M3 as compressed-tensors stores them, `shared/docs/reference-facts.md` §5e)
//! with f32 activation rows, the weights decoded in registers:
//!
//! * NVFP4: per block of 16 the 8 magnitudes `bf16(e2m1 · s / g)` are computed once
//!   (the values compressed-tensors' decompressor returns; the AVX2 kernel multiplies by
//!   `1/g` instead of dividing, a division per block costing more than the rest, so a
//!   value may differ from the checkpoint's by one bf16 unit where `s/g` rounds
//!   differently) and each code picks its magnitude (`vpermps`) and sign; `Σ w·x`.
//! * MXFP4: the same with the power-of-two scale `2^(e − 127)` (exact products).
//! * FP8: `Σ_b s_b · Σ_i e4m3_i · x_i`, the E4M3 bytes widened through their f16 bit
//!   pattern (`vcvtph2ps`: E4M3 subnormals are f16 subnormals) and the factor 2^8 that
//!   leaves applied per block.
//!
//! Each has a scalar version and an AVX2/FMA/F16C one (one-row and four-row, the
//! four-row kernel doing each row's operations in the one-row kernel's order). Results
//! equal `x · dequant(W)ᵀ` up to f32 rounding.

use crate::fp_blocks::{
    e4m3_value, e8m0_value, nvfp4_levels, MXFP4_BLOCK_BYTES, NVFP4_BLOCK_BYTES,
};
use llmq_formats::minifloat::E2M1_VALUES;

#[inline]
fn f32_at(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
fn signed(lv: &[f32; 8], c: u8) -> f32 {
    let v = lv[(c & 7) as usize];
    if c & 8 != 0 {
        -v
    } else {
        v
    }
}

fn as_f32(a: &[u8]) -> &[f32] {
    bytemuck::cast_slice(a)
}

/// Scalar: an NVFP4 row against an f32 row (as bytes).
pub fn dot_nvfp4(w: &[u8], a: &[u8]) -> f32 {
    let x = as_f32(a);
    let g = f32_at(w);
    let mut sum = 0.0f32;
    for (blk, xb) in w[4..]
        .chunks_exact(NVFP4_BLOCK_BYTES)
        .zip(x.chunks_exact(16))
    {
        let lv = nvfp4_levels(e4m3_value(blk[0]) / g);
        let mut acc = [0.0f32; 2];
        for (j, &q) in blk[1..].iter().enumerate() {
            acc[0] += signed(&lv, q & 15) * xb[2 * j];
            acc[1] += signed(&lv, q >> 4) * xb[2 * j + 1];
        }
        sum += acc[0] + acc[1];
    }
    sum
}

/// Scalar: an MXFP4 row (ggml `block_mxfp4` layout) against an f32 row.
pub fn dot_mxfp4_f32(w: &[u8], a: &[u8]) -> f32 {
    let x = as_f32(a);
    let mut sum = 0.0f32;
    for (blk, xb) in w.chunks_exact(MXFP4_BLOCK_BYTES).zip(x.chunks_exact(32)) {
        let lv = E2M1_VALUES;
        let mut acc = [0.0f32; 2];
        for (j, &q) in blk[1..].iter().enumerate() {
            acc[0] += signed(&lv, q & 15) * xb[j];
            acc[1] += signed(&lv, q >> 4) * xb[j + 16];
        }
        sum += e8m0_value(blk[0]) * (acc[0] + acc[1]);
    }
    sum
}

/// The value of an E4M3 byte over 2^8, through its f16 bit pattern.
#[inline]
fn e4m3_over_256(q: u8) -> f32 {
    let h = (((q & 0x7F) as u16) << 7) | (((q & 0x80) as u16) << 8);
    half::f16::from_bits(h).to_f32()
}

/// Scalar: an FP8 row (blocks of `block`) against an f32 row.
pub fn dot_fp8(block: usize, w: &[u8], a: &[u8]) -> f32 {
    let x = as_f32(a);
    let mut sum = 0.0f32;
    for (blk, xb) in w.chunks_exact(4 + block).zip(x.chunks_exact(block)) {
        let mut acc = [0.0f32; 4];
        for (k, (&q, &xv)) in blk[4..].iter().zip(xb).enumerate() {
            acc[k % 4] += e4m3_over_256(q) * xv;
        }
        sum += ((acc[0] + acc[1]) + (acc[2] + acc[3])) * 256.0 * f32_at(blk);
    }
    sum
}

macro_rules! fp8_scalar {
    ($($name:ident = $b:literal),*) => {$(
        /// Scalar FP8 for one block length.
        pub fn $name(w: &[u8], a: &[u8]) -> f32 {
            dot_fp8($b, w, a)
        }
    )*};
}
fp8_scalar!(
    dot_fp8_b1 = 1,
    dot_fp8_b2 = 2,
    dot_fp8_b4 = 4,
    dot_fp8_b8 = 8,
    dot_fp8_b16 = 16,
    dot_fp8_b32 = 32,
    dot_fp8_b64 = 64,
    dot_fp8_b128 = 128
);

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! AVX2 versions of the products above (blocks of 8 columns or more for FP8).
    #![allow(unsafe_op_in_unsafe_fn)]
    use super::super::simd::*;
    use crate::fp_blocks::e4m3_value;
    use crate::fp_blocks::{MXFP4_BLOCK_BYTES, NVFP4_BLOCK_BYTES};
    use llmq_formats::minifloat::E2M1_VALUES;
    use std::arch::x86_64::*;

    /// 8 E2M1 codes (one per i32 lane) to values: magnitude from `lv`, sign from bit 3.
    #[inline(always)]
    unsafe fn fp4_values(lv: __m256, codes: __m256i) -> __m256 {
        let mag = _mm256_permutevar8x32_ps(lv, codes);
        let sign = _mm256_slli_epi32(_mm256_and_si256(codes, _mm256_set1_epi32(8)), 28);
        _mm256_xor_ps(mag, _mm256_castsi256_ps(sign))
    }

    /// Round each lane to bf16 (nearest, ties to even), kept as f32.
    #[inline(always)]
    unsafe fn round_bf16(v: __m256) -> __m256 {
        let b = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
        let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb);
        _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(-65536)))
    }

    #[inline(always)]
    unsafe fn levels() -> __m256 {
        _mm256_loadu_ps(E2M1_VALUES.as_ptr())
    }

    #[inline(always)]
    unsafe fn nvfp4_n<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
        let nb = (w.len() - 4) / NVFP4_BLOCK_BYTES;
        for a in &a {
            assert!(a.len() >= nb * 64);
        }
        let g = super::f32_at(w);
        let ap = a.map(|a| a.as_ptr() as *const f32);
        let mut acc0 = [_mm256_setzero_ps(); N];
        let mut acc1 = [_mm256_setzero_ps(); N];
        let e2m1 = levels();
        // the blocks' effective scales `e4m3 · (1/g)`, eight blocks at a time
        let ginv = 1.0 / g;
        let mut sv = [0.0f32; 8];
        for i in 0..nb {
            let p = w.as_ptr().add(4 + i * NVFP4_BLOCK_BYTES);
            if i % 8 == 0 {
                if i + 8 <= nb {
                    let mut bytes = [0i32; 8];
                    for (j, b) in bytes.iter_mut().enumerate() {
                        *b = *p.add(j * NVFP4_BLOCK_BYTES) as i32;
                    }
                    let v = _mm256_loadu_si256(bytes.as_ptr() as *const __m256i);
                    let mag = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7F)), 20);
                    let sign = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24);
                    let m = _mm256_mul_ps(
                        _mm256_castsi256_ps(mag),
                        _mm256_set1_ps(f32::from_bits((127 + 120) << 23)),
                    );
                    let e = _mm256_or_ps(m, _mm256_castsi256_ps(sign));
                    _mm256_storeu_ps(sv.as_mut_ptr(), _mm256_mul_ps(e, _mm256_set1_ps(ginv)));
                } else {
                    for (j, s) in sv.iter_mut().enumerate().take(nb - i) {
                        *s = e4m3_value(*p.add(j * NVFP4_BLOCK_BYTES)) * ginv;
                    }
                }
            }
            let s = sv[i % 8];
            let lv = round_bf16(_mm256_mul_ps(e2m1, _mm256_set1_ps(s)));
            let b = _mm_loadl_epi64(p.add(1) as *const __m128i);
            let lo = _mm_and_si128(b, _mm_set1_epi8(15));
            let hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15));
            let c = _mm_unpacklo_epi8(lo, hi);
            let w0 = fp4_values(lv, _mm256_cvtepu8_epi32(c));
            let w1 = fp4_values(lv, _mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)));
            for t in 0..N {
                let x = ap[t].add(i * 16);
                acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc0[t]);
                acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), acc1[t]);
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
        }
        out
    }

    #[inline(always)]
    unsafe fn mxfp4_n<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
        let nb = w.len() / MXFP4_BLOCK_BYTES;
        for a in &a {
            assert!(a.len() >= nb * 128);
        }
        let ap = a.map(|a| a.as_ptr() as *const f32);
        let mut acc = [_mm256_setzero_ps(); N];
        let e2m1 = levels();
        for i in 0..nb {
            let p = w.as_ptr().add(i * MXFP4_BLOCK_BYTES);
            let s = _mm256_set1_ps(crate::fp_blocks::e8m0_value(*p));
            let lv = _mm256_mul_ps(e2m1, s);
            let c = nibbles_32(p.add(1));
            let (c0, c1) = (_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
            let ws = [
                fp4_values(lv, _mm256_cvtepu8_epi32(c0)),
                fp4_values(lv, _mm256_cvtepu8_epi32(_mm_srli_si128(c0, 8))),
                fp4_values(lv, _mm256_cvtepu8_epi32(c1)),
                fp4_values(lv, _mm256_cvtepu8_epi32(_mm_srli_si128(c1, 8))),
            ];
            for t in 0..N {
                let x = ap[t].add(i * 32);
                let mut blk = _mm256_mul_ps(ws[0], _mm256_loadu_ps(x));
                blk = _mm256_fmadd_ps(ws[1], _mm256_loadu_ps(x.add(8)), blk);
                blk = _mm256_fmadd_ps(ws[2], _mm256_loadu_ps(x.add(16)), blk);
                acc[t] = _mm256_add_ps(
                    acc[t],
                    _mm256_fmadd_ps(ws[3], _mm256_loadu_ps(x.add(24)), blk),
                );
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(acc[t]);
        }
        out
    }

    /// 8 E4M3 bytes to their values over 2^8.
    #[inline(always)]
    unsafe fn e4m3x8(p: *const u8) -> __m256 {
        let v = _mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i));
        let mag = _mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x7F)), 7);
        let sign = _mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x80)), 8);
        _mm256_cvtph_ps(_mm_or_si128(mag, sign))
    }

    #[inline(always)]
    unsafe fn fp8_n<const B: usize, const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
        let nb = w.len() / (4 + B);
        for a in &a {
            assert!(a.len() >= nb * B * 4);
        }
        let ap = a.map(|a| a.as_ptr() as *const f32);
        let mut acc = [_mm256_setzero_ps(); N];
        let k256 = _mm256_set1_ps(256.0);
        for i in 0..nb {
            let p = w.as_ptr().add(i * (4 + B));
            let s = _mm256_set1_ps(super::f32_at(std::slice::from_raw_parts(p, 4)));
            let mut blk = [_mm256_setzero_ps(); N];
            for k in (0..B).step_by(8) {
                let wv = e4m3x8(p.add(4 + k));
                for t in 0..N {
                    blk[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(ap[t].add(i * B + k)), blk[t]);
                }
            }
            for t in 0..N {
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(blk[t], k256), s, acc[t]);
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(acc[t]);
        }
        out
    }

    macro_rules! entry {
        ($one:ident, $four:ident, $f:ident $(::<$b:literal>)?) => {
            /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
            pub fn $one(w: &[u8], a: &[u8]) -> f32 {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
                    $f::<$($b,)? 1>(w, [a])[0]
                }
                unsafe { inner(w, a) }
            }
            /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
            pub fn $four(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn inner(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
                    $f::<$($b,)? 4>(w, a)
                }
                unsafe { inner(w, a) }
            }
        };
    }
    entry!(dot_nvfp4, dot4_nvfp4, nvfp4_n);
    entry!(dot_mxfp4_f32, dot4_mxfp4_f32, mxfp4_n);
    entry!(dot_fp8_b8, dot4_fp8_b8, fp8_n::<8>);
    entry!(dot_fp8_b16, dot4_fp8_b16, fp8_n::<16>);
    entry!(dot_fp8_b32, dot4_fp8_b32, fp8_n::<32>);
    entry!(dot_fp8_b64, dot4_fp8_b64, fp8_n::<64>);
    entry!(dot_fp8_b128, dot4_fp8_b128, fp8_n::<128>);
}
