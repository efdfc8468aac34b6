//! Row decoders for [`super::tile_wide`] (AVX-512 F/BW): Q2_K and Q3_K blocks
//! (llama.cpp `ggml-common.h` layouts) to each value times its sub-block scale as an i16,
//! in the `A`/`B` order of the tile, plus the block's float scales, mins and per-16
//! scales. The integer values are the ones the AVX2 kernels
//! (`dot_kquants_avx2`) unpack, so the tile's sums are theirs.

#![allow(unsafe_op_in_unsafe_fn)]

use super::dot_kquants::scales_q3_k;
use super::simd::{load256, load_f16};
use super::tile_wide::{DEC_BLOCK, DEC_D, DEC_DMIN, DEC_SC16};
use llmq_formats::blocks::{BlockQ2K as Q2K, BlockQ3K as Q3K};
use std::arch::x86_64::*;

/// Stores the 32 i16 of sub-block `c` (`v`, in value order) as `A` then `B`.
#[inline(always)]
unsafe fn store_ab(out: *mut u8, c: usize, v: __m512i) {
    let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    _mm512_storeu_si512(
        out.add(64 * c) as *mut __m512i,
        _mm512_permutexvar_epi32(idx, v),
    );
}

#[inline(always)]
unsafe fn put_f32(out: *mut u8, at: usize, v: f32) {
    (out.add(at) as *mut f32).write_unaligned(v);
}

/// Checks the sizes and returns the number of blocks.
fn blocks(w: &[u8], out: &[u8], bytes: usize) -> usize {
    let nb = w.len() / bytes;
    assert!(out.len() >= nb * DEC_BLOCK, "decoded row too short");
    nb
}

/// Stores sub-block `c`'s unsigned values `u` times its two per-16 scales.
#[inline(always)]
unsafe fn store_scaled16(o: *mut u8, c: usize, u: __m256i, s0: i16, s1: i16) {
    let s = _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi16(s0)),
        _mm256_set1_epi16(s1),
    );
    store_ab(o, c, _mm512_mullo_epi16(_mm512_cvtepu8_epi16(u), s));
}

/// Q3_K: `u = q + 4 ∈ [0, 8)` (2 bits of `qs`, the `hmask` bit as 4) times the signed
/// scale; the `−4` goes through the activation sums ([`super::tile_wide::Extra::Offset4`]).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn q3_k(w: &[u8], out: &mut [u8]) {
    let nb = blocks(w, out, Q3K::BYTES);
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm256_set1_epi8(4);
    for i in 0..nb {
        let xs = &w[i * Q3K::BYTES..(i + 1) * Q3K::BYTES];
        let x = xs.as_ptr();
        let o = out.as_mut_ptr().add(i * DEC_BLOCK);
        let sc = scales_q3_k(&xs[Q3K::SCALES]);
        let mut hm = load256(x.add(Q3K::HMASK.start));
        for h in 0..2 {
            let mut q = load256(x.add(Q3K::QS.start + 32 * h));
            for j in 0..4 {
                let hb = _mm256_and_si256(_mm256_slli_epi16::<2>(hm), m4);
                let u = _mm256_or_si256(_mm256_and_si256(q, m3), hb);
                q = _mm256_srli_epi16::<2>(q);
                hm = _mm256_srli_epi16::<1>(hm);
                let c = 4 * h + j;
                store_scaled16(o, c, u, sc[2 * c] as i16, sc[2 * c + 1] as i16);
            }
        }
        for (k, &s) in sc.iter().enumerate() {
            (o.add(DEC_SC16 + 2 * k) as *mut i16).write_unaligned(s as i16);
        }
        put_f32(o, DEC_D, load_f16(x.add(Q3K::D.start)));
    }
}

/// Q2_K: `q ∈ [0, 4)` times the 4-bit scale; the 16 mins for
/// [`super::tile_wide::Extra::Mins16`].
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn q2_k(w: &[u8], out: &mut [u8]) {
    let nb = blocks(w, out, Q2K::BYTES);
    let m3 = _mm256_set1_epi8(3);
    for i in 0..nb {
        let xs = &w[i * Q2K::BYTES..(i + 1) * Q2K::BYTES];
        let x = xs.as_ptr();
        let o = out.as_mut_ptr().add(i * DEC_BLOCK);
        let sc = &xs[Q2K::SCALES];
        for h in 0..2 {
            let mut q = load256(x.add(Q2K::QS.start + 32 * h));
            for j in 0..4 {
                let u = _mm256_and_si256(q, m3);
                q = _mm256_srli_epi16::<2>(q);
                let c = 4 * h + j;
                let (s0, s1) = (sc[2 * c] & 0x0f, sc[2 * c + 1] & 0x0f);
                store_scaled16(o, c, u, s0 as i16, s1 as i16);
            }
        }
        for (k, &s) in sc.iter().enumerate() {
            (o.add(DEC_SC16 + 2 * k) as *mut i16).write_unaligned((s >> 4) as i16);
        }
        put_f32(o, DEC_D, load_f16(x.add(Q2K::D.start)));
        put_f32(o, DEC_DMIN, load_f16(x.add(Q2K::DMIN.start)));
    }
}

macro_rules! entry {
    ($name:ident, $($k:tt)+) => {
        /// Decodes one row. Only handed out by the dispatcher when AVX-512 F/BW and
        /// AVX2/FMA/F16C were detected.
        pub fn $name(w: &[u8], out: &mut [u8]) {
            // SAFETY: see above.
            unsafe { $($k)+(w, out) }
        }
    };
}
entry!(decode_q2_k, q2_k);
entry!(decode_q3_k, q3_k);
