//! Tiled quantized GEMM for prompt processing on AVX-512 (F, BW, VNNI): up to 4 weight
//! rows × 8 tokens per register tile, for the signed 32-value block types that pair
//! with Q8_0 activations (Q4_0, Q5_0, Q8_0, IQ4_NL, MXFP4).
//!
//! The approach is the register-tiled GEMM of llama.cpp's llamafile `sgemm`
//! (`tinyBLAS_Q0`), built here so that every output element is computed with exactly
//! the float operations of the one-row AVX2 kernel (`dot_legacy::avx2::dot_n`): per
//! block the 8 integer lanes `Σ_{4 bytes} w·a` (exact), converted to f32, multiplied
//! into `fma(d_w·d_a, ·, acc)` with one accumulator set for even blocks and one for odd
//! blocks, then `hsum(acc_even + acc_odd) + 0`. A 512-bit register holds two tokens'
//! 8 lanes side by side, so the lane-wise operations are the same ones, and a token's
//! result is the same bits whatever else is in the batch.
//!
//! * Weights are decoded once per call and row ([`DecodeFn`]): each block's 32 values
//!   plus 128 as unsigned bytes, and its scale as f32.
//! * Activations are packed once per call ([`pack`]): per group of 8 tokens and block,
//!   4 pairs of tokens, each `[quants of both: 64 B][−128·Σ of each 4 quants: 16 × i32]
//!   [d of each, repeated 8×: 16 × f32]`. `vpdpbusd` starting from `−128·Σa` gives
//!   `Σ (w + 128)·a − 128·Σa = Σ w·a` exactly, so the products need no sign fix-up.

#![allow(unsafe_op_in_unsafe_fn)]

use super::act_quant::Q8_0_BYTES;
use super::dot_legacy::h;
use super::simd::hsum_ps;
use std::arch::x86_64::*;

/// Decodes one packed weight row: 32 offset bytes per block into `q`, scales into `d`.
pub type DecodeFn = fn(&[u8], &mut [u8], &mut [f32]);

/// Tokens per tile.
pub const GROUP: usize = 8;
/// Weight rows per tile.
pub const ROWS: usize = 4;
/// Bytes of one token pair in one block of the packed activations.
const PAIR_BYTES: usize = 192;
/// Bytes of one block of a packed 8-token group.
const GROUP_BLOCK: usize = 4 * PAIR_BYTES;

/// Bytes of one packed 8-token group of `nb` blocks.
pub fn group_bytes(nb: usize) -> usize {
    nb * GROUP_BLOCK
}

/// Packs the full 8-token groups of `n` Q8_0 activation rows (`rb` bytes each) into the
/// tile layout (rows past the last full group are left out).
pub fn pack(acts: &[u8], rb: usize, n: usize) -> Vec<u8> {
    let nb = rb / Q8_0_BYTES;
    super::tiled::pack_groups(acts, rb, n, GROUP, group_bytes(nb), |a, dst| {
        pack_group(a, rb, nb, dst)
    })
}

fn pack_group(acts: &[u8], rb: usize, nb: usize, dst: &mut [u8]) {
    for (b, blk) in dst.chunks_exact_mut(GROUP_BLOCK).take(nb).enumerate() {
        for (p, pair) in blk.chunks_exact_mut(PAIR_BYTES).enumerate() {
            for half in 0..2 {
                let src = &acts[(2 * p + half) * rb + b * Q8_0_BYTES..][..Q8_0_BYTES];
                let qs = &src[2..];
                pair[32 * half..32 * half + 32].copy_from_slice(qs);
                let d = h(src, 0).to_le_bytes();
                for lane in 0..8 {
                    let s: i32 = qs[4 * lane..4 * lane + 4]
                        .iter()
                        .map(|&q| q as i8 as i32)
                        .sum();
                    let at = 64 + 4 * (8 * half + lane);
                    pair[at..at + 4].copy_from_slice(&(-128 * s).to_le_bytes());
                    let at = 128 + 4 * (8 * half + lane);
                    pair[at..at + 4].copy_from_slice(&d);
                }
            }
        }
    }
}

/// Weight rows decoded by a [`DecodeFn`]: `nb` blocks of 32 bytes and `nb` scales each.
pub struct Decoded {
    nb: usize,
    q: Vec<u8>,
    d: Vec<f32>,
}

impl Decoded {
    /// Decodes `rows` (each `nb` blocks) with `dec`.
    pub fn new<'a>(
        dec: DecodeFn,
        nb: usize,
        rows: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Decoded {
        let m = rows.len();
        let mut q = vec![0u8; m * nb * 32];
        let mut d = vec![0f32; m * nb];
        for ((w, q), d) in rows
            .zip(q.chunks_exact_mut(nb * 32))
            .zip(d.chunks_exact_mut(nb))
        {
            dec(w, q, d);
        }
        Decoded { nb, q, d }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.d.len() / self.nb.max(1)
    }
}

/// Rows `r0..r0 + rr` (`rr ≤ 4`) of `w` against packed group `a` (one group of
/// [`pack`]'s output): `out[r][t]` for the group's 8 tokens `t`.
///
/// # Safety
/// AVX-512 F/BW/VNNI and AVX2/FMA/F16C must be available (`llmq_quant::isa`).
pub unsafe fn tile(w: &Decoded, r0: usize, rr: usize, a: &[u8], out: &mut [[f32; GROUP]; ROWS]) {
    assert!((1..=ROWS).contains(&rr) && r0 + rr <= w.rows());
    assert!(a.len() >= group_bytes(w.nb));
    match rr {
        1 => tile_n::<1>(w, r0, a, out),
        2 => tile_n::<2>(w, r0, a, out),
        3 => tile_n::<3>(w, r0, a, out),
        _ => tile_n::<4>(w, r0, a, out),
    }
}

#[allow(clippy::needless_range_loop)] // one index into several tile arrays
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_n<const R: usize>(w: &Decoded, r0: usize, a: &[u8], out: &mut [[f32; GROUP]; ROWS]) {
    let nb = w.nb;
    let wq: [*const u8; R] = std::array::from_fn(|r| w.q.as_ptr().add((r0 + r) * nb * 32));
    let wd: [*const f32; R] = std::array::from_fn(|r| w.d.as_ptr().add((r0 + r) * nb));
    let ap = a.as_ptr();
    let mut sums = [[_mm512_setzero_ps(); 4]; R];
    for parity in 0..2 {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let mut i = parity;
        while i < nb {
            let ab = ap.add(i * GROUP_BLOCK);
            let wv: [__m512i; R] = std::array::from_fn(|r| {
                _mm512_broadcast_i64x4(_mm256_loadu_si256(wq[r].add(32 * i) as *const __m256i))
            });
            let wdi: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(*wd[r].add(i)));
            for p in 0..4 {
                let pa = ab.add(p * PAIR_BYTES);
                let qa = _mm512_loadu_si512(pa as *const __m512i);
                let init = _mm512_loadu_si512(pa.add(64) as *const __m512i);
                let da = _mm512_loadu_ps(pa.add(128) as *const f32);
                for r in 0..R {
                    let s = _mm512_dpbusd_epi32(init, wv[r], qa);
                    let ds = _mm512_mul_ps(wdi[r], da);
                    acc[r][p] = _mm512_fmadd_ps(ds, _mm512_cvtepi32_ps(s), acc[r][p]);
                }
            }
            i += 2;
        }
        for r in 0..R {
            for p in 0..4 {
                sums[r][p] = if parity == 0 {
                    acc[r][p]
                } else {
                    _mm512_add_ps(sums[r][p], acc[r][p])
                };
            }
        }
    }
    for r in 0..R {
        for p in 0..4 {
            let v = sums[r][p];
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            // `+ 0.0` as the one-row kernel adds its (zero) `m` terms: −0 becomes +0.
            out[r][2 * p] = hsum_ps(lo) + 0.0;
            out[r][2 * p + 1] = hsum_ps(hi) + 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dot_legacy::{self as lg, avx2 as l2};
    use half::f16;
    use llmq_formats::GgmlType;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    type One = fn(&[u8], &[u8]) -> f32;
    /// name, weight block bytes, offset of the scale (f16, or E8M0 byte for MXFP4),
    /// decoder, AVX2 one-row kernel, scalar reference
    type Case = (&'static str, usize, usize, DecodeFn, One, One, GgmlType);
    const CASES: [Case; 5] = [
        (
            "q4_0",
            18,
            0,
            l2::offset_q4_0,
            l2::dot_q4_0,
            lg::dot_q4_0,
            GgmlType::Q4_0,
        ),
        (
            "q5_0",
            22,
            0,
            l2::offset_q5_0,
            l2::dot_q5_0,
            lg::dot_q5_0,
            GgmlType::Q5_0,
        ),
        (
            "q8_0",
            34,
            0,
            l2::offset_q8_0,
            l2::dot_q8_0,
            lg::dot_q8_0,
            GgmlType::Q8_0,
        ),
        (
            "iq4_nl",
            18,
            0,
            l2::offset_iq4_nl,
            l2::dot_iq4_nl,
            lg::dot_iq4_nl,
            GgmlType::IQ4NL,
        ),
        (
            "mxfp4",
            17,
            0,
            l2::offset_mxfp4,
            l2::dot_mxfp4,
            lg::dot_mxfp4,
            GgmlType::MXFP4,
        ),
    ];

    /// `Σ |w_j · a_j|` of the dequantized rows (the scale of the rounding error).
    fn magnitude(ty: GgmlType, w: &[u8], a: &[u8]) -> f64 {
        let cols = a.len() / Q8_0_BYTES * 32;
        let mut wf = vec![0.0f32; cols];
        crate::dequant::dequantize_row(ty, w, &mut wf);
        let mut af = vec![0.0f32; cols];
        crate::dequant::dequantize_row(GgmlType::Q8_0, a, &mut af);
        wf.iter()
            .zip(&af)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum()
    }

    fn available() -> bool {
        crate::kernels::Isa::Avx2.available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// Random weight rows; `edge` puts extreme quants (Q8_0's −128 and 127), zero and
    /// negative scales and all-zero blocks in.
    fn weight_rows(rng: &mut ChaCha8Rng, c: &Case, rows: usize, nb: usize, edge: bool) -> Vec<u8> {
        let (name, wb, at) = (c.0, c.1, c.2);
        let mut w: Vec<u8> = (0..rows * nb * wb).map(|_| rng.gen()).collect();
        for blk in w.chunks_exact_mut(wb) {
            if name == "mxfp4" {
                blk[at] = rng.gen_range(110..140);
            } else {
                let mut s = rng.gen_range(0.001f32..0.1);
                if edge && rng.gen_range(0..4) == 0 {
                    s = -s;
                }
                if edge && rng.gen_range(0..8) == 0 {
                    s = 0.0;
                }
                blk[at..at + 2].copy_from_slice(&f16::from_f32(s).to_bits().to_le_bytes());
            }
            if edge && name == "q8_0" {
                for q in &mut blk[2..] {
                    *q = if rng.gen() { 0x80 } else { 0x7f };
                }
            }
            if edge && rng.gen_range(0..6) == 0 {
                let keep = if name == "mxfp4" { 1 } else { 2 };
                blk[keep..].fill(if name == "q5_0" || name == "q4_0" {
                    0x88
                } else {
                    0
                });
            }
        }
        w
    }

    /// Random Q8_0 activation rows (quants in ±127, extremes often when `edge`).
    fn act_rows(rng: &mut ChaCha8Rng, n: usize, nb: usize, edge: bool) -> Vec<u8> {
        let mut a = vec![0u8; n * nb * Q8_0_BYTES];
        for blk in a.chunks_exact_mut(Q8_0_BYTES) {
            let d = rng.gen_range(0.001f32..0.1);
            blk[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            for q in &mut blk[2..] {
                *q = match rng.gen_range(0..if edge { 3 } else { 20 }) {
                    0 => 127u8,
                    1 => (-127i8) as u8,
                    _ => rng.gen_range(-127i8..=127) as u8,
                };
            }
        }
        a
    }

    /// Every tile gives each (row, token) the AVX2 one-row kernel's bits, and agrees
    /// with the scalar reference, for every type, 1–4 rows, odd and even block counts.
    #[test]
    #[allow(clippy::needless_range_loop)] // one index into several tile arrays
    fn tiles_equal_the_one_row_kernel_and_the_scalar_reference() {
        if !available() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(20);
        for c in &CASES {
            for (nb, edge) in [(1, true), (7, true), (8, false), (28, false), (5, false)] {
                let rows = 7;
                let wb = c.1;
                let w = weight_rows(&mut rng, c, rows, nb, edge);
                let n = 16;
                let rb = nb * Q8_0_BYTES;
                let acts = act_rows(&mut rng, n, nb, edge);
                let packed = pack(&acts, rb, n);
                let rows_of = |r: usize| &w[r * nb * wb..(r + 1) * nb * wb];
                let dec = Decoded::new(c.3, nb, (0..rows).map(rows_of));
                let mut out = [[0.0f32; GROUP]; ROWS];
                for (r0, rr) in [(0, 4), (4, 3), (1, 1), (2, 2)] {
                    for g in 0..n / GROUP {
                        let a = &packed[g * group_bytes(nb)..(g + 1) * group_bytes(nb)];
                        unsafe { tile(&dec, r0, rr, a, &mut out) };
                        for r in 0..rr {
                            for i in 0..GROUP {
                                let t = g * GROUP + i;
                                let x = &acts[t * rb..(t + 1) * rb];
                                let want = (c.4)(rows_of(r0 + r), x);
                                let got = out[r][i];
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{} nb={nb} row {} token {t}: {got} vs {want}",
                                    c.0,
                                    r0 + r
                                );
                                let reference = (c.5)(rows_of(r0 + r), x);
                                let mag = magnitude(c.6, rows_of(r0 + r), x);
                                assert!(
                                    ((got - reference).abs() as f64) <= 1e-5 * mag + 1e-30,
                                    "{} nb={nb}: {got} vs scalar {reference}",
                                    c.0
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 one-row kernels (`dot_legacy_avx512`) give the AVX2 one-row kernel's
    /// bits on the same random and edge-case blocks, odd and even block counts.
    #[test]
    fn avx512_one_row_kernels_equal_the_avx2_ones() {
        use crate::kernels::dot_legacy_avx512 as x5;
        if !available() {
            return;
        }
        let fast: [One; 5] = [
            x5::dot_q4_0,
            x5::dot_q5_0,
            x5::dot_q8_0,
            x5::dot_iq4_nl,
            x5::dot_mxfp4,
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        for (c, fast) in CASES.iter().zip(fast) {
            for (nb, edge) in [(1, true), (2, true), (7, true), (28, false), (5, false)] {
                let rows = 3;
                let w = weight_rows(&mut rng, c, rows, nb, edge);
                let acts = act_rows(&mut rng, 4, nb, edge);
                let rb = nb * Q8_0_BYTES;
                for r in 0..rows {
                    let wr = &w[r * nb * c.1..(r + 1) * nb * c.1];
                    for x in acts.chunks_exact(rb) {
                        let (got, want) = (fast(wr, x), (c.4)(wr, x));
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{} nb={nb}: {got} vs {want}",
                            c.0
                        );
                    }
                }
            }
        }
    }
}
