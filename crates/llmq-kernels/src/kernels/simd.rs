//! Small AVX2/FMA/F16C helpers shared by the x86-64 kernels (every function here needs
//! the caller to have checked `avx2`, `fma` and `f16c` at run time).
//!
//! The integer dot-product building blocks follow the usual ggml-cpu approach: `vpmaddubsw`
//! multiplies unsigned bytes by signed bytes into pairs of i16, `vpmaddwd` with ones (or
//! with per-group scales) widens to i32.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

/// f16 bits to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_to_f32(bits: u16) -> f32 {
    // A broadcast rather than `_mm_cvtsi32_si128`: LLVM turns the latter into a
    // `vpinsrw` merging into a live register, a false dependency on the accumulators.
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits as i16)))
}

/// Little-endian f16 at `p`, broadcast to 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn load_f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16((p as *const i16).read_unaligned()))
}

/// Little-endian f16 at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn load_f16(p: *const u8) -> f32 {
    f16_to_f32(u16::from_le_bytes([*p, *p.add(1)]))
}

/// Unaligned 32-byte load.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Unaligned 16-byte load.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn load128(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Pairwise i16 sums of u8 × i8 widened to 8 × i32: `Σ a·b` over each group of 4 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_u8i8(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

/// 16 packed bytes of nibbles to 32 bytes: low nibbles in bytes 0..16, high in 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let b = load128(p);
    let v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
}

/// The 32 bits of `bits` (little endian) to 32 bytes: 0xFF where the bit is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bits_to_bytes_32(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // byte j takes source byte j / 8
    let shuf = _mm256_setr_epi64x(
        0x0000_0000_0000_0000,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let v = _mm256_shuffle_epi8(v, shuf);
    // byte j keeps bit j % 8
    let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let v = _mm256_and_si256(v, sel);
    _mm256_cmpeq_epi8(v, sel)
}
