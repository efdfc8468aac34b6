//! The one-token product (decode GEMV) of the signed 32-value block types (Q4_0, Q5_0,
//! Q8_0, IQ4_NL, MXFP4) on AVX-512 F/BW/VNNI: four weight rows per pass against the one
//! activation row, so each pair of activation blocks is loaded (and its scales widened)
//! once for four rows, and the rows one pass ahead are prefetched into L2 as the pass
//! reads (one request per block pair and row, instead of a burst per row).
//!
//! The integer sums take the weights as unsigned bytes `u = w + o` (Q8_0 and the
//! codebook types `o = 128`, Q5_0 `16`, Q4_0 `8`: the nibbles as stored), so one
//! `vpdpbusd` per row starts from `−o·Σa`, shared by the four rows, in place of the
//! sign juggling of `dot_legacy_avx512`; Q5_0's fifth bits go straight from `qh` into
//! a byte mask. The integers are exact either way. Per row every float operation is
//! the one `dot_legacy_avx512` does, in the same order (the block pair in one 512-bit
//! register, `fma(d_w·d_a, f32(Σ₄ w·a), acc)` per lane, the same horizontal sum), so
//! each output has the AVX2 one-row kernel's bits.

#![allow(unsafe_op_in_unsafe_fn)]

use super::dot_legacy::avx2::{Block, Iq4Nl, Mxfp4, Q4_0, Q5_0, Q8_0};
use super::dot_legacy_avx512::{dot_signed, join_f, join_i};
use super::simd::{hsum_ps, load256, load_f16x8};
use llmq_formats::blocks::{BlockQ4_0 as BQ4_0, BlockQ5_0 as BQ5_0, BlockQ8_0 as BQ8_0};
use std::arch::x86_64::*;

/// `y[r] = dot(row r of w, a)` for `y.len()` consecutive rows of `row_bytes` each.
pub type GemvFn = fn(w: &[u8], row_bytes: usize, a: &[u8], y: &mut [f32]);

/// A block pair of one weight type as 64 unsigned bytes `u` with `w = u − OFFSET`
/// (so `Σ w·a = Σ u·a − OFFSET·Σ a`, exact in i32, and `vpdpbusd` takes `u` as it
/// is), and the pair's scales as f32 (`d₀` in lanes 0..8, `d₁` in 8..16).
trait Pair {
    const WB: usize;
    const OFFSET: u8;
    unsafe fn pair(p: *const u8) -> (__m512i, __m512);
    /// One block (the odd last one): its signed weights and scale, as the one-row
    /// kernel decodes them.
    unsafe fn one(p: *const u8) -> (__m256i, __m256);
}

/// The scales of two blocks `bytes` apart (f16 at offset 0 of each).
#[inline(always)]
unsafe fn scales2(p: *const u8, bytes: usize) -> __m512 {
    join_f(load_f16x8(p), load_f16x8(p.add(bytes)))
}

/// Two blocks' 16 packed nibble bytes (at `p` and `p + bytes`) as 64 bytes: block 0's
/// low nibbles, its high nibbles, then block 1's.
#[inline(always)]
unsafe fn nibbles2(p: *const u8, bytes: usize) -> __m512i {
    let b0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    let b1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(bytes) as *const __m128i));
    let x = join_i(b0, b1);
    // the odd 128-bit lanes take the high nibbles
    let x = _mm512_mask_srli_epi16::<4>(x, 0xFF00_FF00, x);
    _mm512_and_si512(x, _mm512_set1_epi8(0x0f))
}

impl Pair for Q8_0 {
    const WB: usize = BQ8_0::BYTES;
    const OFFSET: u8 = 128;
    #[inline(always)]
    unsafe fn pair(p: *const u8) -> (__m512i, __m512) {
        let qs = BQ8_0::QS.start;
        let v = join_i(load256(p.add(qs)), load256(p.add(Self::WB + qs)));
        (
            _mm512_xor_si512(v, _mm512_set1_epi8(-128)),
            scales2(p, Self::WB),
        )
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> (__m256i, __m256) {
        let (v, d, _) = <Q8_0 as Block>::decode(p);
        (v, d)
    }
}

impl Pair for Q5_0 {
    const WB: usize = BQ5_0::BYTES;
    const OFFSET: u8 = 16;
    #[inline(always)]
    unsafe fn pair(p: *const u8) -> (__m512i, __m512) {
        let q = nibbles2(p.add(BQ5_0::QS.start), Self::WB);
        let h0 = (p.add(BQ5_0::QH.start) as *const u32).read_unaligned();
        let h1 = (p.add(Self::WB + BQ5_0::QH.start) as *const u32).read_unaligned();
        let bits = u32::from_le(h0) as u64 | (u32::from_le(h1) as u64) << 32;
        let u = _mm512_mask_add_epi8(q, bits, q, _mm512_set1_epi8(16));
        (u, scales2(p, Self::WB))
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> (__m256i, __m256) {
        let (v, d, _) = <Q5_0 as Block>::decode(p);
        (v, d)
    }
}

impl Pair for Q4_0 {
    const WB: usize = BQ4_0::BYTES;
    const OFFSET: u8 = 8;
    #[inline(always)]
    unsafe fn pair(p: *const u8) -> (__m512i, __m512) {
        (
            nibbles2(p.add(BQ4_0::QS.start), Self::WB),
            scales2(p, Self::WB),
        )
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> (__m256i, __m256) {
        let (v, d, _) = <Q4_0 as Block>::decode(p);
        (v, d)
    }
}

/// The codebook types: the one-row decode, offset to unsigned.
macro_rules! via_block {
    ($t:ty) => {
        impl Pair for $t {
            const WB: usize = <$t as Block>::BYTES;
            const OFFSET: u8 = 128;
            #[inline(always)]
            unsafe fn pair(p: *const u8) -> (__m512i, __m512) {
                let (v0, d0, _) = <$t as Block>::decode(p);
                let (v1, d1, _) = <$t as Block>::decode(p.add(Self::WB));
                (
                    _mm512_xor_si512(join_i(v0, v1), _mm512_set1_epi8(-128)),
                    join_f(d0, d1),
                )
            }
            #[inline(always)]
            unsafe fn one(p: *const u8) -> (__m256i, __m256) {
                let (v, d, _) = <$t as Block>::decode(p);
                (v, d)
            }
        }
    };
}
via_block!(Iq4Nl);
via_block!(Mxfp4);

/// `R` rows starting at `w` (`wrb` bytes apart) against `a`; prefetches `ahead` bytes
/// ahead of each row's reads (one request per block pair and row), short of `pf_end`.
#[inline(always)]
unsafe fn rows<B: Pair, const R: usize>(
    w: *const u8,
    wrb: usize,
    a: *const u8,
    nb: usize,
    pf_end: *const u8,
    ahead: usize,
) -> [f32; R] {
    let qs = BQ8_0::QS.start;
    let act = BQ8_0::BYTES;
    let mut acc = [_mm512_setzero_ps(); R];
    let mut i = 0;
    while i + 2 <= nb {
        let (y0, y1) = (a.add(i * act), a.add((i + 1) * act));
        let ay = join_i(load256(y0.add(qs)), load256(y1.add(qs)));
        let da = join_f(load_f16x8(y0), load_f16x8(y1));
        // −OFFSET·Σa per lane: where every row's integer sum starts
        let zero = _mm512_setzero_si512();
        let base = _mm512_sub_epi32(
            zero,
            _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(B::OFFSET as i8), ay),
        );
        for (r, acc) in acc.iter_mut().enumerate() {
            let wp = w.add(r * wrb + i * B::WB);
            let p = wp.wrapping_add(ahead);
            if p < pf_end {
                _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
            }
            let (u, dw) = B::pair(wp);
            let p = _mm512_dpbusd_epi32(base, u, ay);
            let ds = _mm512_mul_ps(dw, da);
            *acc = _mm512_fmadd_ps(ds, _mm512_cvtepi32_ps(p), *acc);
        }
        i += 2;
    }
    let mut out = [0.0f32; R];
    for (r, acc) in acc.iter().enumerate() {
        let mut lo = _mm512_castps512_ps256(*acc);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*acc)));
        if i < nb {
            // the last (even) block goes to the even accumulator, as in the AVX2 kernel
            let (v, d) = B::one(w.add(r * wrb + i * B::WB));
            let y = a.add(i * act);
            let p = dot_signed(
                _mm512_castsi256_si512(v),
                _mm512_castsi256_si512(load256(y.add(qs))),
            );
            let ds = _mm256_mul_ps(d, load_f16x8(y));
            lo = _mm256_fmadd_ps(ds, _mm256_cvtepi32_ps(_mm512_castsi512_si256(p)), lo);
        }
        // `+ 0.0` as the AVX2 kernel adds its (zero) `m` terms: −0 becomes +0.
        out[r] = hsum_ps(_mm256_add_ps(lo, hi)) + 0.0;
    }
    out
}

#[inline(always)]
unsafe fn gemv<B: Pair>(w: &[u8], wrb: usize, a: &[u8], y: &mut [f32]) {
    let nb = wrb / B::WB;
    assert!(wrb.is_multiple_of(B::WB) && a.len() >= nb * BQ8_0::BYTES);
    assert!(w.len() >= y.len() * wrb);
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let end = wp.add(w.len());
    // one pass (four rows) ahead, into L2: measured against 512 B to 2 passes, and
    // against L1 (T0, as fast but for rows of 8192 columns) and non-temporal (slower)
    let ahead = 4 * wrb;
    let mut r = 0;
    while r + 4 <= y.len() {
        let v = rows::<B, 4>(wp.add(r * wrb), wrb, ap, nb, end, ahead);
        y[r..r + 4].copy_from_slice(&v);
        r += 4;
    }
    while r < y.len() {
        y[r] = rows::<B, 1>(wp.add(r * wrb), wrb, ap, nb, end, ahead)[0];
        r += 1;
    }
}

macro_rules! entry {
    ($name:ident, $b:ty) => {
        /// Only handed out by the dispatcher when AVX-512 F/BW/VNNI and AVX2/FMA/F16C
        /// were detected.
        pub fn $name(w: &[u8], row_bytes: usize, a: &[u8], y: &mut [f32]) {
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
            unsafe fn inner(w: &[u8], row_bytes: usize, a: &[u8], y: &mut [f32]) {
                gemv::<$b>(w, row_bytes, a, y)
            }
            // SAFETY: see above.
            unsafe { inner(w, row_bytes, a, y) }
        }
    };
}
entry!(gemv_q4_0, Q4_0);
entry!(gemv_q5_0, Q5_0);
entry!(gemv_q8_0, Q8_0);
entry!(gemv_iq4_nl, Iq4Nl);
entry!(gemv_mxfp4, Mxfp4);
