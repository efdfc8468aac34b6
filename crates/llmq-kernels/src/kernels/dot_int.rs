//! Dot products of group-wise integer weight rows ([`crate::int_blocks`] layout: per
//! block an f16 scale `s`, a zero point `z` and the codes `q`, value `s·(q − z)`, the
//! GPTQ / AWQ / compressed-tensors dequantization of `shared/docs/reference-facts.md`
//! §5a–5c) with activation rows, straight from the packed codes:
//!
//! * against Q8_0 activations (blocks of 32): `Σ_b s_b·d_b·Σ_i (q_i − z_b)·x_i` in
//!   integers per block, as llama.cpp's `ggml_vec_dot_q4_0_q8_0` does with `z = 8`;
//!   scalar for 2..=8 bits, AVX2 for 4 and 8 bits;
//! * against f32 activations (any block length): `Σ_b s_b·Σ_i (q_i − z_b)·x_i`, equal to
//!   `x · dequant(W)ᵀ` up to f32 rounding.

use crate::int_blocks::{int_block_bytes, unpack_int_block};
use half::f16;

const Q8_0: usize = 34;

/// Scalar: one 32-column-block weight row of `BITS` bits against a Q8_0 row.
pub fn dot_int_q8_0<const BITS: u8>(w: &[u8], a: &[u8]) -> f32 {
    let bb = int_block_bytes(BITS, 32);
    let mut codes = [0u8; 32];
    let mut sum = 0.0f32;
    for (wb, ab) in w.chunks_exact(bb).zip(a.chunks_exact(Q8_0)) {
        let (s, z) = unpack_int_block(BITS, wb, &mut codes);
        let dx = f16::from_bits(u16::from_le_bytes([ab[0], ab[1]])).to_f32();
        let mut isum = 0i32;
        for (&q, &x) in codes.iter().zip(&ab[2..]) {
            isum += (q as i32 - z as i32) * (x as i8 as i32);
        }
        sum += s * dx * isum as f32;
    }
    sum
}

/// One weight row (`bits`, blocks of `block`) against an f32 row (stored column order).
pub fn dot_int_f32(bits: u8, block: usize, w: &[u8], x: &[f32]) -> f32 {
    let bb = int_block_bytes(bits, block);
    let mut codes = [0u8; 32];
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(bb).zip(x.chunks_exact(block)) {
        let (s, z) = unpack_int_block(bits, wb, &mut codes[..block]);
        let z = z as f32;
        let mut acc = [0.0f32; 4];
        for (k, (&q, &xv)) in codes[..block].iter().zip(xb).enumerate() {
            acc[k % 4] += (q as f32 - z) * xv;
        }
        sum += s * ((acc[0] + acc[1]) + (acc[2] + acc[3]));
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! AVX2 versions of [`super::dot_int_q8_0`] for 4 and 8 bits.
    #![allow(unsafe_op_in_unsafe_fn)]
    use crate::kernels::simd::*;
    use std::arch::x86_64::*;

    const ACT: usize = super::Q8_0;

    /// `(Σ (q − z)·x per 4 lanes as i32, scale)` of block `p` against activation `y`.
    trait IntBlock {
        const BYTES: usize;
        unsafe fn decode(p: *const u8) -> (__m256i, i32);
    }

    struct Int4;
    struct Int8;

    impl IntBlock for Int4 {
        const BYTES: usize = 19;
        /// `q − z` as signed bytes in `[-15, 15]`, no zero term left.
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, i32) {
            let z = _mm256_set1_epi8(*p.add(2) as i8);
            (_mm256_sub_epi8(nibbles_32(p.add(3)), z), 0)
        }
    }
    impl IntBlock for Int8 {
        const BYTES: usize = 35;
        /// `q − 128` as signed bytes and `z − 128`.
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, i32) {
            (load256(p.add(3)), *p.add(2) as i8 as i32)
        }
    }

    #[inline(always)]
    unsafe fn step<B: IntBlock, const N: usize>(
        wp: *const u8,
        ap: &[*const u8; N],
        i: usize,
        acc: &mut [__m256; N],
    ) {
        let bp = wp.add(i * B::BYTES);
        let (v, z) = B::decode(bp);
        let s = load_f16x8(bp);
        let av = _mm256_sign_epi8(v, v);
        for t in 0..N {
            let yb = ap[t].add(i * ACT);
            let qy = load256(yb.add(2));
            let mut p = dot_u8i8(av, _mm256_sign_epi8(qy, v));
            if z != 0 {
                let sx = dot_u8i8(_mm256_set1_epi8(1), qy);
                p = _mm256_sub_epi32(p, _mm256_mullo_epi32(sx, _mm256_set1_epi32(z)));
            }
            let d = _mm256_mul_ps(s, load_f16x8(yb));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[t]);
        }
    }

    #[inline(always)]
    unsafe fn dot_n<B: IntBlock, const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
        let nb = w.len() / B::BYTES;
        for a in &a {
            assert!(a.len() >= nb * ACT);
        }
        let wp = w.as_ptr();
        let ap = a.map(|a| a.as_ptr());
        let mut acc0 = [_mm256_setzero_ps(); N];
        let mut acc1 = [_mm256_setzero_ps(); N];
        let mut i = 0;
        while i + 2 <= nb {
            step::<B, N>(wp, &ap, i, &mut acc0);
            step::<B, N>(wp, &ap, i + 1, &mut acc1);
            i += 2;
        }
        if i < nb {
            step::<B, N>(wp, &ap, i, &mut acc0);
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
        }
        out
    }

    macro_rules! entry {
        ($one:ident, $four:ident, $b:ty) => {
            /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
            pub fn $one(w: &[u8], a: &[u8]) -> f32 {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn inner(w: &[u8], a: &[u8]) -> f32 {
                    dot_n::<$b, 1>(w, [a])[0]
                }
                unsafe { inner(w, a) }
            }
            /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
            pub fn $four(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn inner(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
                    dot_n::<$b, 4>(w, a)
                }
                unsafe { inner(w, a) }
            }
        };
    }
    entry!(dot_int4, dot4_int4, Int4);
    entry!(dot_int8, dot4_int8, Int8);
}
