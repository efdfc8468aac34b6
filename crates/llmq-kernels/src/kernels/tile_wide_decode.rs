//! Row decoders for [`super::tile_wide`] (AVX-512 F/BW): IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K
//! and Q6_K blocks (llama.cpp `ggml-common.h` layouts) to each value times its sub-block scale as
//! an i16, in the `A`/`B` order of the tile, plus the block's float scales, mins and
//! per-16 scales. The integer values are the ones the AVX2 kernels
//! (`dot_kquants_avx2`) unpack, so the tile's sums are theirs.

#![allow(unsafe_op_in_unsafe_fn)]

use super::dot_kquants::{scales_iq4_xs, scales_q3_k};
use super::dot_legacy::IQ4NL_VALUES;
use super::simd::{load128, load256, load_f16, nibbles_32};
use super::tile_wide::{DEC_BLOCK, DEC_D, DEC_DMIN, DEC_MINS, DEC_SC16};
use llmq_formats::blocks::{
    BlockIq4Xs as Iq4Xs, BlockQ2K as Q2K, BlockQ3K as Q3K, BlockQ4K as Q4K, BlockQ5K as Q5K,
    BlockQ6K as Q6K,
};
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

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn iq4_xs(w: &[u8], out: &mut [u8]) {
    let nb = blocks(w, out, Iq4Xs::BYTES);
    let table = _mm256_broadcastsi128_si256(load128(IQ4NL_VALUES.as_ptr() as *const u8));
    for i in 0..nb {
        let xs = &w[i * Iq4Xs::BYTES..(i + 1) * Iq4Xs::BYTES];
        let o = out.as_mut_ptr().add(i * DEC_BLOCK);
        let ls = scales_iq4_xs(xs);
        for (c, l) in ls.iter().enumerate() {
            let v =
                _mm256_shuffle_epi8(table, nibbles_32(xs.as_ptr().add(Iq4Xs::QS.start + 16 * c)));
            let s = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(v), _mm512_set1_epi16((l - 32) as i16));
            store_ab(o, c, s);
        }
        put_f32(o, DEC_D, load_f16(xs.as_ptr().add(Iq4Xs::D.start)));
    }
}

/// Q4_K/Q5_K packed scales to 16 bytes: 8 scales then 8 mins (ggml's `utmp` shuffle).
#[inline(always)]
fn scale_min_bytes(s: &[u8]) -> [u8; 16] {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let words = [
        u0 & K1,
        (u2 & K2) | (((u0 >> 6) & K3) << 4),
        u1 & K1,
        ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn q45_k<const FIVE: bool>(w: &[u8], out: &mut [u8]) {
    let (bytes, qs_off) = if FIVE {
        (Q5K::BYTES, Q5K::QS.start)
    } else {
        (Q4K::BYTES, Q4K::QS.start)
    };
    let nb = blocks(w, out, bytes);
    let m4 = _mm256_set1_epi8(0x0f);
    let m5 = _mm256_set1_epi8(0x10);
    for i in 0..nb {
        let xs = &w[i * bytes..(i + 1) * bytes];
        let x = xs.as_ptr();
        let o = out.as_mut_ptr().add(i * DEC_BLOCK);
        let sm = scale_min_bytes(&xs[Q4K::SCALES]);
        let mut hbits = if FIVE {
            load256(x.add(Q5K::QH.start))
        } else {
            _mm256_setzero_si256()
        };
        for j in 0..4 {
            let q = load256(x.add(qs_off + 32 * j));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            if FIVE {
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(hbits), m5));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(hbits), m5));
                hbits = _mm256_srli_epi16::<2>(hbits);
            }
            for (c, v) in [(2 * j, lo), (2 * j + 1, hi)] {
                let s = _mm512_set1_epi16(sm[c] as i16);
                store_ab(o, c, _mm512_mullo_epi16(_mm512_cvtepu8_epi16(v), s));
            }
        }
        for (k, &m) in sm[8..].iter().enumerate() {
            (o.add(DEC_MINS + 2 * k) as *mut i16).write_unaligned(m as i16);
        }
        put_f32(o, DEC_D, load_f16(x.add(Q4K::D.start)));
        put_f32(o, DEC_DMIN, load_f16(x.add(Q4K::DMIN.start)));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn q6_k(w: &[u8], out: &mut [u8]) {
    let nb = blocks(w, out, Q6K::BYTES);
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x30);
    for i in 0..nb {
        let x = w.as_ptr().add(i * Q6K::BYTES);
        let o = out.as_mut_ptr().add(i * DEC_BLOCK);
        let sc: [i8; 16] = std::ptr::read_unaligned(x.add(Q6K::SCALES.start) as *const [i8; 16]);
        for h in 0..2 {
            let ql0 = load256(x.add(Q6K::QL.start + 64 * h));
            let ql1 = load256(x.add(Q6K::QL.start + 64 * h + 32));
            let qh = load256(x.add(Q6K::QH.start + 32 * h));
            let u = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                    _mm256_and_si256(qh, m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
                ),
            ];
            for (k, u) in u.into_iter().enumerate() {
                let c = 4 * h + k;
                // values 0..16 of the sub-block at scale 2c, 16..32 at scale 2c + 1
                let s = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_set1_epi16(sc[2 * c] as i16)),
                    _mm256_set1_epi16(sc[2 * c + 1] as i16),
                );
                store_ab(o, c, _mm512_mullo_epi16(_mm512_cvtepu8_epi16(u), s));
            }
        }
        for (k, &s) in sc.iter().enumerate() {
            (o.add(DEC_SC16 + 2 * k) as *mut i16).write_unaligned(s as i16);
        }
        put_f32(o, DEC_D, load_f16(x.add(Q6K::D.start)));
    }
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
entry!(decode_iq4_xs, iq4_xs);
entry!(decode_q4_k, q45_k::<false>);
entry!(decode_q5_k, q45_k::<true>);
entry!(decode_q6_k, q6_k);
entry!(decode_q2_k, q2_k);
entry!(decode_q3_k, q3_k);
