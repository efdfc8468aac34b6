//! Dot products of the 32-value block types with 8-bit activations, computed from the
//! packed bytes (llama.cpp `ggml/src/ggml-common.h`):
//!
//! * `block_q4_0` (18 B): `d: f16`, `qs: [u8; 16]`; value `j` = `d·((nibble_j) − 8)`, low
//!   nibbles hold values 0..16, high nibbles 16..32.
//! * `block_q4_1` (20 B): `d, m: f16`, `qs: [u8; 16]`; value = `d·q + m`.
//! * `block_q5_0` (22 B): `d: f16`, `qh: u32`, `qs: [u8; 16]`; value = `d·((q | bit_j<<4) − 16)`.
//! * `block_q5_1` (24 B): `d, m: f16`, `qh: u32`, `qs: [u8; 16]`; value = `d·(q | bit_j<<4) + m`.
//! * `block_q8_0` (34 B): `d: f16`, `qs: [i8; 32]`.
//! * `block_iq4_nl` (18 B): `d: f16`, `qs: [u8; 16]`; value = `d·kvalues_iq4nl[nibble]`.
//! * `block_mxfp4` (17 B): `e: E8M0`, `qs: [u8; 16]`; value =
//!   `2^(e−128)·kvalues_mxfp4[nibble]` (doubled E2M1 levels, `ggml_vec_dot_mxfp4_q8_0`).
//!
//! Q4_1/Q5_1 pair with Q8_1 activations (their `s = d·Σq` carries the `m` term), the
//! others with Q8_0, as ggml's `vec_dot_type`. Per block the integer dot is exact; the
//! float part is `d_w·d_a·Σ q_w q_a (+ m_w·s_a)`.

use super::act_quant::{q8_01_qs_at, Q8_0_BYTES, Q8_1_BYTES};
use half::f16;
use llmq_formats::blocks::le_u32;
use llmq_formats::blocks::{
    BlockIq4Nl, BlockMxfp4, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
    KVALUES_IQ4NL,
};
use llmq_formats::minifloat::E2M1_DOUBLED;
use llmq_quant::mxfp4::e8m0_half;

/// `kvalues_iq4nl` (the codebook lives with the block layout in `llmq-formats`).
pub const IQ4NL_VALUES: [i8; 16] = KVALUES_IQ4NL;

#[inline]
pub(crate) fn h(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

#[inline]
fn i8s(b: &[u8]) -> impl Iterator<Item = i32> + '_ {
    b.iter().map(|&v| v as i8 as i32)
}

/// Generic scalar driver: `decode` writes a block's 32 integer weights and returns
/// `(d, m)`; `bytes` is the weight block size, `act` the activation block size (Q8_0's
/// or Q8_1's).
#[inline(always)]
fn scalar_dot(
    w: &[u8],
    a: &[u8],
    bytes: usize,
    act: usize,
    decode: impl Fn(&[u8], &mut [i32; 32]) -> (f32, f32),
) -> f32 {
    let mut sum = 0.0f32;
    let mut q = [0i32; 32];
    let with_sum = act == Q8_1_BYTES;
    let qs_at = q8_01_qs_at(with_sum);
    for (x, y) in w.chunks_exact(bytes).zip(a.chunks_exact(act)) {
        let (d, m) = decode(x, &mut q);
        let s: i32 = q.iter().zip(i8s(&y[qs_at..])).map(|(a, b)| a * b).sum();
        sum += d * h(y, BlockQ8_0::D.start) * s as f32;
        if with_sum {
            sum += m * h(y, BlockQ8_1::S.start);
        }
    }
    sum
}

fn nibbles(qs: &[u8], q: &mut [i32; 32], offset: i32) {
    for j in 0..16 {
        q[j] = (qs[j] & 15) as i32 - offset;
        q[j + 16] = (qs[j] >> 4) as i32 - offset;
    }
}

fn high_bits(qh: u32, q: &mut [i32; 32]) {
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) << 4) as i32;
    }
}

pub fn dot_q4_0(w: &[u8], a: &[u8]) -> f32 {
    scalar_dot(w, a, BlockQ4_0::BYTES, Q8_0_BYTES, |x, q| {
        nibbles(&x[BlockQ4_0::QS], q, 8);
        (h(x, BlockQ4_0::D.start), 0.0)
    })
}

pub fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    scalar_dot(w, a, BlockQ4_1::BYTES, Q8_1_BYTES, |x, q| {
        nibbles(&x[BlockQ4_1::QS], q, 0);
        (h(x, BlockQ4_1::D.start), h(x, BlockQ4_1::M.start))
    })
}

pub fn dot_q5_0(w: &[u8], a: &[u8]) -> f32 {
    scalar_dot(w, a, BlockQ5_0::BYTES, Q8_0_BYTES, |x, q| {
        nibbles(&x[BlockQ5_0::QS], q, 0);
        high_bits(le_u32(x, BlockQ5_0::QH), q);
        q.iter_mut().for_each(|v| *v -= 16);
        (h(x, BlockQ5_0::D.start), 0.0)
    })
}

pub fn dot_q5_1(w: &[u8], a: &[u8]) -> f32 {
    scalar_dot(w, a, BlockQ5_1::BYTES, Q8_1_BYTES, |x, q| {
        nibbles(&x[BlockQ5_1::QS], q, 0);
        high_bits(le_u32(x, BlockQ5_1::QH), q);
        (h(x, BlockQ5_1::D.start), h(x, BlockQ5_1::M.start))
    })
}

pub fn dot_q8_0(w: &[u8], a: &[u8]) -> f32 {
    scalar_dot(w, a, BlockQ8_0::BYTES, Q8_0_BYTES, |x, q| {
        for (v, b) in q.iter_mut().zip(i8s(&x[BlockQ8_0::QS])) {
            *v = b;
        }
        (h(x, BlockQ8_0::D.start), 0.0)
    })
}

pub fn dot_iq4_nl(w: &[u8], a: &[u8]) -> f32 {
    scalar_dot(w, a, BlockIq4Nl::BYTES, Q8_0_BYTES, |x, q| {
        let qs = &x[BlockIq4Nl::QS];
        for j in 0..16 {
            q[j] = IQ4NL_VALUES[(qs[j] & 15) as usize] as i32;
            q[j + 16] = IQ4NL_VALUES[(qs[j] >> 4) as usize] as i32;
        }
        (h(x, BlockIq4Nl::D.start), 0.0)
    })
}

pub fn dot_mxfp4(w: &[u8], a: &[u8]) -> f32 {
    scalar_dot(w, a, BlockMxfp4::BYTES, Q8_0_BYTES, |x, q| {
        let qs = &x[BlockMxfp4::QS];
        for j in 0..16 {
            q[j] = E2M1_DOUBLED[(qs[j] & 15) as usize] as i32;
            q[j + 16] = E2M1_DOUBLED[(qs[j] >> 4) as usize] as i32;
        }
        (e8m0_half(x[BlockMxfp4::E.start]), 0.0)
    })
}

/// Bytes of one group block of [`interleave8`]: 8 f32 scales, 8 × 32 quants, and
/// for Q8_1 the 8 rows' f32 sums.
pub fn group8_block_bytes(with_sum: bool) -> usize {
    GROUP8_SUMS + if with_sum { 32 } else { 0 }
}

/// Offset of the quants in a group block (after the 8 f32 scales).
const GROUP8_QUANTS: usize = 32;
/// Offset of the f32 sums (Q8_1) in a group block.
const GROUP8_SUMS: usize = GROUP8_QUANTS + 8 * 32;

/// Groups of 8 Q8_0 / Q8_1 activation rows (`rb` bytes each) rewritten for the 8-row
/// kernels: `[group][block][group block]`, a group block holding the 8 rows' scales
/// `d` as f32, their 32 quants each, and (Q8_1) their sums `s` as f32, so a kernel reads
/// one sequential stream and widens no f16 in its inner loop (f16 → f32 is exact, so
/// the results do not change). Rows past the last full group are left out.
pub fn interleave8(acts: &[u8], rb: usize, n: usize, with_sum: bool) -> Vec<u8> {
    let ab = if with_sum { Q8_1_BYTES } else { Q8_0_BYTES };
    let gb = group8_block_bytes(with_sum);
    let nb = rb / ab;
    let mut out = vec![0u8; n / 8 * nb * gb];
    for (g, dst) in out.chunks_exact_mut(nb * gb).enumerate() {
        for (b, dst) in dst.chunks_exact_mut(gb).enumerate() {
            for t in 0..8 {
                let src = &acts[(g * 8 + t) * rb + b * ab..][..ab];
                let d = h(src, BlockQ8_0::D.start);
                dst[4 * t..4 * t + 4].copy_from_slice(&d.to_le_bytes());
                let q = GROUP8_QUANTS + 32 * t;
                dst[q..q + 32].copy_from_slice(&src[q8_01_qs_at(with_sum)..]);
                if with_sum {
                    let s = h(src, BlockQ8_1::S.start);
                    let o = GROUP8_SUMS + 4 * t;
                    dst[o..o + 4].copy_from_slice(&s.to_le_bytes());
                }
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    #![allow(unsafe_op_in_unsafe_fn)]
    use super::{E2M1_DOUBLED, IQ4NL_VALUES};
    use crate::kernels::simd::*;
    use llmq_formats::blocks::{
        BlockIq4Nl as BIq4Nl, BlockMxfp4 as BMxfp4, BlockQ4_0 as BQ4_0, BlockQ4_1 as BQ4_1,
        BlockQ5_0 as BQ5_0, BlockQ5_1 as BQ5_1, BlockQ8_0 as BQ8_0, BlockQ8_1 as BQ8_1,
    };
    use std::arch::x86_64::*;

    /// One 32-value weight format: how to turn a block into 32 bytes.
    pub(crate) trait Block {
        /// Weight block bytes.
        const BYTES: usize;
        /// Activation block bytes: Q8_0's, or Q8_1's (with `s` and the `m` term).
        const ACT: usize;
        /// Whether the decoded bytes are signed (else unsigned, multiplied directly).
        const SIGNED: bool;
        /// `(weights, d, m)`, `d` broadcast.
        unsafe fn decode(p: *const u8) -> (__m256i, __m256, f32);
        /// The block's `m` alone (the third element of `decode`).
        #[inline(always)]
        unsafe fn min(_p: *const u8) -> f32 {
            0.0
        }
    }

    pub(crate) struct Q4_0;
    pub(crate) struct Q4_1;
    pub(crate) struct Q5_0;
    pub(crate) struct Q5_1;
    pub(crate) struct Q8_0;
    pub(crate) struct Iq4Nl;
    pub(crate) struct Mxfp4;

    impl Block for Q4_0 {
        const BYTES: usize = BQ4_0::BYTES;
        const ACT: usize = BQ8_0::BYTES;
        const SIGNED: bool = true;
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, __m256, f32) {
            let q = nibbles_32(p.add(BQ4_0::QS.start));
            let v = _mm256_sub_epi8(q, _mm256_set1_epi8(8));
            (v, load_f16x8(p.add(BQ4_0::D.start)), 0.0)
        }
    }
    impl Block for Q4_1 {
        const BYTES: usize = BQ4_1::BYTES;
        const ACT: usize = BQ8_1::BYTES;
        const SIGNED: bool = false;
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, __m256, f32) {
            (
                nibbles_32(p.add(BQ4_1::QS.start)),
                load_f16x8(p.add(BQ4_1::D.start)),
                load_f16(p.add(BQ4_1::M.start)),
            )
        }
        #[inline(always)]
        unsafe fn min(p: *const u8) -> f32 {
            load_f16(p.add(BQ4_1::M.start))
        }
    }
    impl Block for Q5_0 {
        const BYTES: usize = BQ5_0::BYTES;
        const ACT: usize = BQ8_0::BYTES;
        const SIGNED: bool = true;
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, __m256, f32) {
            let qh = (p.add(BQ5_0::QH.start) as *const u32).read_unaligned();
            let hi = _mm256_andnot_si256(bits_to_bytes_32(u32::from_le(qh)), _mm256_set1_epi8(-16));
            (
                _mm256_or_si256(nibbles_32(p.add(BQ5_0::QS.start)), hi),
                load_f16x8(p.add(BQ5_0::D.start)),
                0.0,
            )
        }
    }
    impl Block for Q5_1 {
        const BYTES: usize = BQ5_1::BYTES;
        const ACT: usize = BQ8_1::BYTES;
        const SIGNED: bool = false;
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, __m256, f32) {
            let qh = (p.add(BQ5_1::QH.start) as *const u32).read_unaligned();
            let hi = _mm256_and_si256(bits_to_bytes_32(u32::from_le(qh)), _mm256_set1_epi8(16));
            let v = _mm256_or_si256(nibbles_32(p.add(BQ5_1::QS.start)), hi);
            (
                v,
                load_f16x8(p.add(BQ5_1::D.start)),
                load_f16(p.add(BQ5_1::M.start)),
            )
        }
        #[inline(always)]
        unsafe fn min(p: *const u8) -> f32 {
            load_f16(p.add(BQ5_1::M.start))
        }
    }
    impl Block for Q8_0 {
        const BYTES: usize = BQ8_0::BYTES;
        const ACT: usize = BQ8_0::BYTES;
        const SIGNED: bool = true;
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, __m256, f32) {
            (
                load256(p.add(BQ8_0::QS.start)),
                load_f16x8(p.add(BQ8_0::D.start)),
                0.0,
            )
        }
    }
    impl Block for Iq4Nl {
        const BYTES: usize = BIq4Nl::BYTES;
        const ACT: usize = BQ8_0::BYTES;
        const SIGNED: bool = true;
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, __m256, f32) {
            let table = _mm256_broadcastsi128_si256(load128(IQ4NL_VALUES.as_ptr() as *const u8));
            let v = _mm256_shuffle_epi8(table, nibbles_32(p.add(BIq4Nl::QS.start)));
            (v, load_f16x8(p.add(BIq4Nl::D.start)), 0.0)
        }
    }

    impl Block for Mxfp4 {
        const BYTES: usize = BMxfp4::BYTES;
        const ACT: usize = BQ8_0::BYTES;
        const SIGNED: bool = true;
        #[inline(always)]
        unsafe fn decode(p: *const u8) -> (__m256i, __m256, f32) {
            let table = _mm256_broadcastsi128_si256(load128(E2M1_DOUBLED.as_ptr() as *const u8));
            let v = _mm256_shuffle_epi8(table, nibbles_32(p.add(BMxfp4::QS.start)));
            let d = llmq_quant::mxfp4::e8m0_half(*p.add(BMxfp4::E.start));
            (v, _mm256_set1_ps(d), 0.0)
        }
    }

    /// Block `i` against `N` activation rows, into `acc` and `msum`.
    #[inline(always)]
    unsafe fn step<B: Block, const N: usize>(
        wp: *const u8,
        ap: &[*const u8; N],
        i: usize,
        acc: &mut [__m256; N],
        msum: &mut [f32; N],
    ) {
        let (v, d, m) = B::decode(wp.add(i * B::BYTES));
        let av = if B::SIGNED { _mm256_sign_epi8(v, v) } else { v };
        for t in 0..N {
            let yb = ap[t].add(i * B::ACT);
            let with_sum = B::ACT == BQ8_1::BYTES;
            let qy = load256(yb.add(super::q8_01_qs_at(with_sum)));
            let qy = if B::SIGNED {
                _mm256_sign_epi8(qy, v)
            } else {
                qy
            };
            let p = _mm256_cvtepi32_ps(dot_u8i8(av, qy));
            let da = load_f16x8(yb.add(BQ8_0::D.start));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), p, acc[t]);
            if with_sum {
                msum[t] += m * load_f16(yb.add(BQ8_1::S.start));
            }
        }
    }

    /// One weight row against `N` activation rows; each weight block is decoded once.
    /// Two accumulator sets (even / odd blocks) hide the FMA latency.
    #[inline(always)]
    unsafe fn dot_n<B: Block, const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
        let nb = w.len() / B::BYTES;
        for a in &a {
            assert!(a.len() >= nb * B::ACT);
        }
        let wp = w.as_ptr();
        let ap = a.map(|a| a.as_ptr());
        let mut acc0 = [_mm256_setzero_ps(); N];
        let mut acc1 = [_mm256_setzero_ps(); N];
        let mut msum = [0.0f32; N];
        let mut i = 0;
        while i + 2 <= nb {
            step::<B, N>(wp, &ap, i, &mut acc0, &mut msum);
            step::<B, N>(wp, &ap, i + 1, &mut acc1, &mut msum);
            i += 2;
        }
        if i < nb {
            step::<B, N>(wp, &ap, i, &mut acc0, &mut msum);
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(_mm256_add_ps(acc0[t], acc1[t])) + msum[t];
        }
        out
    }

    /// How the 8-row kernels turn a `u8 × i8` block product into 8 `i32`
    /// lanes (each the sum of 4 adjacent products). Both give the same integers: no pair
    /// sum of `maddubs` can saturate with these operands (|weight| ≤ 128, |act| ≤ 127).
    trait Dp {
        unsafe fn dp(a: __m256i, b: __m256i) -> __m256i;
    }
    /// AVX2: `maddubs` then `madd` with ones.
    struct MaddUbs;
    impl Dp for MaddUbs {
        #[inline(always)]
        unsafe fn dp(a: __m256i, b: __m256i) -> __m256i {
            dot_u8i8(a, b)
        }
    }
    /// AVX-VNNI: one `vpdpbusd`.
    struct Vnni;
    impl Dp for Vnni {
        #[inline(always)]
        unsafe fn dp(a: __m256i, b: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b)
        }
    }

    /// [`dot_n`] for 8 activation rows in the group layout of [`super::interleave8`],
    /// same result to the bit: the even-block and odd-block accumulators are filled in
    /// two separate passes (each in block order, as `dot_n` fills them) and the `m`
    /// terms in a third, so only 8 vector accumulators are live at a time and each
    /// weight block is decoded once for 8 rows. The rows' scales are already f32, so the
    /// 8 products `d_w·d_a` take one vector multiply.
    #[inline(always)]
    unsafe fn dot8_split<B: Block, D: Dp>(w: &[u8], a: &[u8]) -> [f32; 8] {
        const N: usize = 8;
        let nb = w.len() / B::BYTES;
        let gb = super::group8_block_bytes(B::ACT == BQ8_1::BYTES);
        assert!(a.len() >= nb * gb);
        let wp = w.as_ptr();
        let ap = a.as_ptr();
        let mut acc0 = [_mm256_setzero_ps(); N];
        let mut i = 0;
        while i < nb {
            step8::<B, D>(wp.add(i * B::BYTES), ap.add(i * gb), &mut acc0);
            i += 2;
        }
        let mut acc1 = [_mm256_setzero_ps(); N];
        let mut i = 1;
        while i < nb {
            step8::<B, D>(wp.add(i * B::BYTES), ap.add(i * gb), &mut acc1);
            i += 2;
        }
        let mut msum = [0.0f32; N];
        if B::ACT == BQ8_1::BYTES {
            for i in 0..nb {
                let m = B::min(wp.add(i * B::BYTES));
                let s = ap.add(i * gb + super::GROUP8_SUMS) as *const f32;
                for (t, msum) in msum.iter_mut().enumerate() {
                    *msum += m * s.add(t).read_unaligned();
                }
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(_mm256_add_ps(acc0[t], acc1[t])) + msum[t];
        }
        out
    }

    /// One weight block `wb` against one group block `gb` (8 f32 scales, then 8 × 32
    /// quants), without the `m` terms.
    #[inline(always)]
    unsafe fn step8<B: Block, D: Dp>(wb: *const u8, gb: *const u8, acc: &mut [__m256; 8]) {
        let (v, d, _) = B::decode(wb);
        let av = if B::SIGNED { _mm256_sign_epi8(v, v) } else { v };
        let mut ds = [0.0f32; 8];
        _mm256_storeu_ps(
            ds.as_mut_ptr(),
            _mm256_mul_ps(d, _mm256_loadu_ps(gb as *const f32)),
        );
        for (t, acc) in acc.iter_mut().enumerate() {
            let qy = load256(gb.add(super::GROUP8_QUANTS + 32 * t));
            let qy = if B::SIGNED {
                _mm256_sign_epi8(qy, v)
            } else {
                qy
            };
            let p = _mm256_cvtepi32_ps(D::dp(av, qy));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(ds[t]), p, *acc);
        }
    }

    /// Row `w` of a signed block type decoded for the AVX-512 tiles
    /// (`super::super::tile_avx512`): per block its 32 weights plus 128 as unsigned
    /// bytes into `q`, and its scale `d` as f32 into `d` (the value `decode` broadcasts).
    #[inline(always)]
    unsafe fn decode_offset<B: Block>(w: &[u8], q: &mut [u8], d: &mut [f32]) {
        debug_assert!(B::SIGNED);
        let nb = w.len() / B::BYTES;
        assert!(q.len() >= nb * 32 && d.len() >= nb);
        for (i, d) in d.iter_mut().enumerate().take(nb) {
            let (v, dv, _) = B::decode(w.as_ptr().add(i * B::BYTES));
            let u = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
            _mm256_storeu_si256(q.as_mut_ptr().add(32 * i) as *mut __m256i, u);
            *d = _mm256_cvtss_f32(dv);
        }
    }

    macro_rules! offset_entry {
        ($name:ident, $b:ty) => {
            /// [`decode_offset`] for this type. Only handed out by the dispatcher when
            /// AVX2/FMA/F16C were detected.
            pub fn $name(w: &[u8], q: &mut [u8], d: &mut [f32]) {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn inner(w: &[u8], q: &mut [u8], d: &mut [f32]) {
                    decode_offset::<$b>(w, q, d)
                }
                unsafe { inner(w, q, d) }
            }
        };
    }
    offset_entry!(offset_q4_0, Q4_0);
    offset_entry!(offset_q5_0, Q5_0);
    offset_entry!(offset_q8_0, Q8_0);
    offset_entry!(offset_iq4_nl, Iq4Nl);
    offset_entry!(offset_mxfp4, Mxfp4);

    macro_rules! entry {
        ($one:ident, $four:ident, $eight:ident, $vnni:ident, $b:ty) => {
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
            /// Eight activation rows in the group layout ([`super::interleave8`]).
            /// Only handed out by the dispatcher when AVX2/FMA/F16C were detected.
            pub fn $eight(w: &[u8], a: &[u8]) -> [f32; 8] {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn inner(w: &[u8], a: &[u8]) -> [f32; 8] {
                    dot8_split::<$b, MaddUbs>(w, a)
                }
                unsafe { inner(w, a) }
            }
            /// [`$eight`] with AVX-VNNI's `vpdpbusd`; only handed out when AVX-VNNI
            /// was detected too.
            pub fn $vnni(w: &[u8], a: &[u8]) -> [f32; 8] {
                #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
                unsafe fn inner(w: &[u8], a: &[u8]) -> [f32; 8] {
                    dot8_split::<$b, Vnni>(w, a)
                }
                unsafe { inner(w, a) }
            }
        };
    }
    entry!(dot_q4_0, dot4_q4_0, dot8_q4_0, dot8_vnni_q4_0, Q4_0);
    entry!(dot_q4_1, dot4_q4_1, dot8_q4_1, dot8_vnni_q4_1, Q4_1);
    entry!(dot_q5_0, dot4_q5_0, dot8_q5_0, dot8_vnni_q5_0, Q5_0);
    entry!(dot_q5_1, dot4_q5_1, dot8_q5_1, dot8_vnni_q5_1, Q5_1);
    entry!(dot_q8_0, dot4_q8_0, dot8_q8_0, dot8_vnni_q8_0, Q8_0);
    entry!(
        dot_iq4_nl,
        dot4_iq4_nl,
        dot8_iq4_nl,
        dot8_vnni_iq4_nl,
        Iq4Nl
    );
    entry!(dot_mxfp4, dot4_mxfp4, dot8_mxfp4, dot8_vnni_mxfp4, Mxfp4);
}
