//! Dot products of float weight rows (F32, F16 = IEEE half, BF16 = upper half of an f32;
//! `ggml_fp16_t` / `ggml_bf16_t` in llama.cpp `ggml/src/ggml.h`) with f32 activations.
//! The weights are widened on the fly (F16C `vcvtph2ps`, a 16-bit shift for BF16) and
//! accumulated with FMA; the 4-token variant widens each weight vector once for 4
//! activation rows.

use half::f16;

/// Activation row bytes as f32 (always aligned: they come from an `&[f32]`).
#[inline]
fn act_f32(a: &[u8]) -> &[f32] {
    bytemuck::cast_slice(a)
}

fn dot_with(w: impl Iterator<Item = f32>, a: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (i, (w, x)) in w.zip(a).enumerate() {
        acc[i % 8] += w * x;
    }
    acc.iter().sum()
}

pub fn dot_f32(w: &[u8], a: &[u8]) -> f32 {
    let ws = w
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    dot_with(ws, act_f32(a))
}

pub fn dot_f16(w: &[u8], a: &[u8]) -> f32 {
    let ws = w
        .chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32());
    dot_with(ws, act_f32(a))
}

pub fn dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    let ws = w
        .chunks_exact(2)
        .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16));
    dot_with(ws, act_f32(a))
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    #![allow(unsafe_op_in_unsafe_fn)]
    #![allow(clippy::needless_range_loop)]
    use super::act_f32;
    use crate::kernels::simd::hsum_ps;
    use std::arch::x86_64::*;

    /// Loads 8 weights starting at element `i` as f32.
    trait Load8 {
        const BYTES: usize;
        unsafe fn load8(p: *const u8, i: usize) -> __m256;
        fn scalar(w: &[u8], i: usize) -> f32;
    }
    struct F32;
    struct F16;
    struct Bf16;
    impl Load8 for F32 {
        const BYTES: usize = 4;
        #[inline(always)]
        unsafe fn load8(p: *const u8, i: usize) -> __m256 {
            _mm256_loadu_ps(p.add(4 * i) as *const f32)
        }
        fn scalar(w: &[u8], i: usize) -> f32 {
            f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]])
        }
    }
    impl Load8 for F16 {
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn load8(p: *const u8, i: usize) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i))
        }
        fn scalar(w: &[u8], i: usize) -> f32 {
            half::f16::from_bits(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])).to_f32()
        }
    }
    impl Load8 for Bf16 {
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn load8(p: *const u8, i: usize) -> __m256 {
            let h = _mm_loadu_si128(p.add(2 * i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
        fn scalar(w: &[u8], i: usize) -> f32 {
            f32::from_bits((u16::from_le_bytes([w[2 * i], w[2 * i + 1]]) as u32) << 16)
        }
    }

    /// `N` rows of activations against one weight row. One code path for every `N`,
    /// so a row's result does not depend on how many rows are computed together
    /// (batched serving gives the same tokens as a single stream).
    #[inline(always)]
    unsafe fn dot_n<L: Load8, const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
        let a = a.map(act_f32);
        let n = w.len() / L::BYTES;
        assert!(a.iter().all(|a| a.len() >= n));
        let wp = w.as_ptr();
        let ap = a.map(|a| a.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); N]; 2];
        let mut i = 0;
        while i + 16 <= n {
            for (h, acc) in acc.iter_mut().enumerate() {
                let j = i + 8 * h;
                let wv = L::load8(wp, j);
                for t in 0..N {
                    acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(ap[t].add(j)), acc[t]);
                }
            }
            i += 16;
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(_mm256_add_ps(acc[0][t], acc[1][t]));
            for j in i..n {
                out[t] += L::scalar(w, j) * a[t][j];
            }
        }
        out
    }

    macro_rules! entry {
        ($one:ident, $four:ident, $inner1:ident, $inner4:ident, $ty:ty) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $inner1(w: &[u8], a: &[u8]) -> f32 {
                dot_n::<$ty, 1>(w, [a])[0]
            }
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $inner4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
                dot_n::<$ty, 4>(w, a)
            }
            /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
            pub fn $one(w: &[u8], a: &[u8]) -> f32 {
                unsafe { $inner1(w, a) }
            }
            /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
            pub fn $four(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
                unsafe { $inner4(w, a) }
            }
        };
    }
    entry!(dot_f32, dot4_f32, dot_f32_t, dot4_f32_t, F32);
    entry!(dot_f16, dot4_f16, dot_f16_t, dot4_f16_t, F16);
    entry!(dot_bf16, dot4_bf16, dot_bf16_t, dot4_bf16_t, Bf16);
}
