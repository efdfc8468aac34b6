//! Tiled GEMM on 16-bit products for prompt processing (AVX-512 F, BW, VNNI): 4 weight
//! rows × 8 tokens per register tile for the 256-value types whose per-16 sub-block
//! scales multiply integer sums (Q2_K, Q3_K; llama.cpp `ggml-common.h` layouts) against
//! Q8_K activations. (Q4_K, Q5_K, Q6_K and IQ4_XS run [`super::tile_vnni`].)
//!
//! Each weight row is decoded once per call ([`super::tile_wide_decode`]): every value
//! times its sub-block scale as an i16 (`|s·q| ≤ 8128`), so one `vpdpwssd` (pairs of
//! i16 products summed into i32) does the work of the AVX2 kernel's
//! `vpmaddubsw` + `vpmaddwd` + `vpaddd`, with no sign fix-up and no scale step. The 32
//! values of a sub-block are stored as `A` (values `4k, 4k+1`, k = 0..8) and `B`
//! (values `4k+2, 4k+3`), so that 32-bit lane `k` of `dpwssd(dpwssd(s, a_A, w_A), a_B,
//! w_B)` holds `Σ_{j=4k..4k+3} s·q_j·a_j`: exactly lane `k` of the one-row AVX2 kernel
//! (`dot_kquants_avx2`), whose integer sums are exact too. The float operations per
//! block are that kernel's (`acc = fma(d·d_a, f32(sumi), acc)` on 8 lanes, Q3_K's
//! `−4·Σ sc·bsums` folded into `sumi` first, Q2_K's scalar
//! `accm += dmin·d_a·f32(Σ_16 mins·bsums)`, here 8 tokens a vector) and so is the final
//! sum, so a token's result is the same bits whatever else is in the batch.
//!
//! The activations are packed once per call ([`pack`]): per 8-token group and block,
//! for each sub-block and token pair the `A` bytes of both tokens then their `B` bytes
//! (widened to i16 in the kernel), then each pair's `d` (16 × f32) and raw `bsums`; for
//! Q2_K only ([`Extra::Mins16`]) then the `bsums` by pairs of sub-blocks across the 8
//! tokens and the 8 `d`.

#![allow(unsafe_op_in_unsafe_fn)]

use super::act_quant::Q8_K_BYTES;
use super::simd::hsum_ps;
use llmq_formats::blocks::BlockQ8K;
use std::arch::x86_64::*;

/// Tokens per tile.
pub const GROUP: usize = 8;
/// Weight rows per tile.
pub const ROWS: usize = 4;

// Packed activations, per block of an 8-token group: the values and the pairs' `d`,
// then only what the type's extra terms read (fewer bytes to stream through the caches).
const QA: usize = 0;
const D_PAIRS: usize = 8 * 4 * 64;
const EXTRA: usize = D_PAIRS + 4 * 64;
// Offset4: the pairs' raw `bsums`.
const BSUMS: usize = EXTRA;
// Mins16: per pair `g` of sub-blocks, the 8 tokens' `bsums[2g], bsums[2g + 1]`, then
// the 8 tokens' `d`.
const BS_TOKENS: usize = EXTRA;
const D8: usize = BS_TOKENS + 8 * 32;

/// Bytes of one packed block for `extra`.
const fn block_bytes(extra: Extra) -> usize {
    match extra {
        Extra::Offset4 => BSUMS + 4 * 64,
        Extra::Mins16 => D8 + 64,
    }
}

// Decoded weights, per block of a row.
/// `d` (f32).
pub const DEC_D: usize = 512;
/// `dmin` (f32; Q2_K).
pub const DEC_DMIN: usize = 516;
/// The 16 scales (i16; Q3_K) or the 16 mins (Q2_K).
pub const DEC_SC16: usize = 544;
/// Bytes of one decoded block: 8 sub-blocks of `A` (32 B) and `B` (32 B) i16 values,
/// then the fields above.
pub const DEC_BLOCK: usize = 576;

/// Decodes one packed weight row into [`DEC_BLOCK`] bytes per block.
pub type WideDecodeFn = fn(&[u8], &mut [u8]);

/// The terms beside the scaled products.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// `−4·Σ sc·bsums` in the integer sums (Q3_K).
    Offset4,
    /// `− dmin·Σ_16 mins·bsums`, one scalar per token (Q2_K).
    Mins16,
}

/// A type's decoder and extra terms.
#[derive(Clone, Copy)]
pub struct WideType {
    pub decode: WideDecodeFn,
    pub extra: Extra,
}

/// Bytes of one packed 8-token group of `nb` blocks for `extra`.
pub fn group_bytes(nb: usize, extra: Extra) -> usize {
    nb * block_bytes(extra)
}

/// Packs the full 8-token groups of `n` Q8_K rows (`rb` bytes each) for `extra`.
pub fn pack(acts: &[u8], rb: usize, n: usize, extra: Extra) -> Vec<u8> {
    let nb = rb / Q8_K_BYTES;
    super::tiled::pack_groups(acts, rb, n, GROUP, group_bytes(nb, extra), |a, dst| {
        pack_group(a, rb, nb, extra, dst)
    })
}

fn pack_group(acts: &[u8], rb: usize, nb: usize, extra: Extra, dst: &mut [u8]) {
    let bb = block_bytes(extra);
    for (b, blk) in dst.chunks_exact_mut(bb).take(nb).enumerate() {
        for t in 0..GROUP {
            let src = &acts[t * rb + b * Q8_K_BYTES..][..Q8_K_BYTES];
            let (p, half) = (t / 2, t % 2);
            let qs = &src[BlockQ8K::QS];
            for c in 0..8 {
                let at = QA + (c * 4 + p) * 64 + 16 * half;
                for k in 0..8 {
                    let v = &qs[32 * c + 4 * k..][..4];
                    blk[at + 2 * k..at + 2 * k + 2].copy_from_slice(&v[..2]);
                    blk[at + 32 + 2 * k..at + 32 + 2 * k + 2].copy_from_slice(&v[2..]);
                }
            }
            let d = &src[BlockQ8K::D];
            for l in 0..8 {
                let at = D_PAIRS + p * 64 + 4 * (8 * half + l);
                blk[at..at + 4].copy_from_slice(d);
            }
            let bsums = &src[BlockQ8K::BSUMS];
            match extra {
                Extra::Offset4 => {
                    let at = BSUMS + p * 64 + 32 * half;
                    blk[at..at + 32].copy_from_slice(bsums);
                }
                Extra::Mins16 => {
                    for g in 0..8 {
                        let at = BS_TOKENS + 32 * g + 4 * t;
                        blk[at..at + 4].copy_from_slice(&bsums[4 * g..4 * g + 4]);
                    }
                    blk[D8 + 4 * t..D8 + 4 * t + 4].copy_from_slice(d);
                }
            }
        }
    }
}

/// Weight rows decoded by a [`WideDecodeFn`].
pub struct Decoded {
    nb: usize,
    q: Vec<u8>,
}

impl Decoded {
    /// Decodes `rows` (each `nb` blocks) with `dec`.
    pub fn new<'a>(
        dec: WideDecodeFn,
        nb: usize,
        rows: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Decoded {
        let mut q = vec![0u8; rows.len() * nb * DEC_BLOCK];
        for (w, q) in rows.zip(q.chunks_exact_mut(nb * DEC_BLOCK)) {
            dec(w, q);
        }
        Decoded { nb, q }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.q.len() / (self.nb * DEC_BLOCK).max(1)
    }
}

/// Rows `r0..r0 + rr` (`rr ≤ 4`) of `w` against packed group `a`: `out[r][t]`.
///
/// # Safety
/// AVX-512 F/BW/VNNI and AVX2/FMA/F16C must be available (`llmq_quant::isa`).
pub unsafe fn tile(
    w: &Decoded,
    extra: Extra,
    r0: usize,
    rr: usize,
    a: &[u8],
    out: &mut [[f32; GROUP]; ROWS],
) {
    assert!((1..=ROWS).contains(&rr) && r0 + rr <= w.rows());
    assert!(a.len() >= group_bytes(w.nb, extra));
    macro_rules! go {
        ($x:expr) => {
            match rr {
                1 => tile_n::<1, $x>(w, r0, a, out),
                2 => tile_n::<2, $x>(w, r0, a, out),
                3 => tile_n::<3, $x>(w, r0, a, out),
                _ => tile_n::<4, $x>(w, r0, a, out),
            }
        };
    }
    match extra {
        Extra::Offset4 => go!(3),
        Extra::Mins16 => go!(4),
    }
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// `acc += Σ pairs a·b` (`vpdpwssd`), as one instruction: from the intrinsic, LLVM's
/// generic x86-64 tuning splits every other one of a chain into `vpmaddwd` + `vpaddd`,
/// 50% more vector uops in the tile's inner loop. The integer sums are the same.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd(acc: &mut __m512i, a: __m512i, b: __m512i) {
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(zmm_reg) *acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
}

/// Lanes `8h..8h + 8` of `v`.
#[inline(always)]
unsafe fn half(v: __m512, h: usize) -> __m256 {
    if h == 0 {
        _mm512_castps512_ps256(v)
    } else {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
    }
}

#[allow(clippy::needless_range_loop)] // one index into several tile arrays
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_n<const R: usize, const X: u8>(
    w: &Decoded,
    r0: usize,
    a: &[u8],
    out: &mut [[f32; GROUP]; ROWS],
) {
    let nb = w.nb;
    let wp: [*const u8; R] = std::array::from_fn(|r| w.q.as_ptr().add((r0 + r) * nb * DEC_BLOCK));
    let ap = a.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let mut accm8 = [_mm256_setzero_ps(); R];
    let bb = block_bytes(match X {
        3 => Extra::Offset4,
        _ => Extra::Mins16,
    });
    for i in 0..nb {
        let blk = ap.add(i * bb);
        let wb: [*const u8; R] = std::array::from_fn(|r| wp[r].add(i * DEC_BLOCK));
        let mut sumi = [[_mm512_setzero_si512(); 4]; R];
        if X == 3 {
            for r in 0..R {
                let sc = _mm512_broadcast_i64x4(ld(wb[r].add(DEC_SC16)));
                for p in 0..4 {
                    let bs = _mm512_loadu_si512(blk.add(BSUMS + 64 * p) as *const __m512i);
                    let off = _mm512_madd_epi16(sc, bs);
                    let off = _mm512_slli_epi32::<2>(off);
                    sumi[r][p] = _mm512_sub_epi32(sumi[r][p], off);
                }
            }
        }
        for c in 0..8 {
            let wa: [__m512i; R] =
                std::array::from_fn(|r| _mm512_broadcast_i64x4(ld(wb[r].add(64 * c))));
            let wbv: [__m512i; R] =
                std::array::from_fn(|r| _mm512_broadcast_i64x4(ld(wb[r].add(64 * c + 32))));
            for p in 0..4 {
                let q = blk.add(QA + (c * 4 + p) * 64);
                let xa = _mm512_cvtepi8_epi16(ld(q));
                let xb = _mm512_cvtepi8_epi16(ld(q.add(32)));
                for r in 0..R {
                    dpwssd(&mut sumi[r][p], xa, wa[r]);
                    dpwssd(&mut sumi[r][p], xb, wbv[r]);
                }
            }
        }
        for r in 0..R {
            let d = _mm512_set1_ps((wb[r].add(DEC_D) as *const f32).read_unaligned());
            for p in 0..4 {
                let yd = _mm512_loadu_ps(blk.add(D_PAIRS + 64 * p) as *const f32);
                let dd = _mm512_mul_ps(d, yd);
                acc[r][p] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sumi[r][p]), acc[r][p]);
            }
        }
        if X == 4 {
            let yd = _mm256_loadu_ps(blk.add(D8) as *const f32);
            for r in 0..R {
                let mut ms = _mm256_setzero_si256();
                for g in 0..8 {
                    let m = (wb[r].add(DEC_SC16 + 4 * g) as *const i32).read_unaligned();
                    let bs = ld(blk.add(BS_TOKENS + 32 * g));
                    ms = _mm256_add_epi32(ms, _mm256_madd_epi16(_mm256_set1_epi32(m), bs));
                }
                let dmin = _mm256_set1_ps((wb[r].add(DEC_DMIN) as *const f32).read_unaligned());
                let t = _mm256_mul_ps(_mm256_mul_ps(dmin, yd), _mm256_cvtepi32_ps(ms));
                accm8[r] = _mm256_add_ps(accm8[r], t);
            }
        }
    }
    for r in 0..R {
        let mut m8 = [0.0f32; GROUP];
        _mm256_storeu_ps(m8.as_mut_ptr(), accm8[r]);
        for t in 0..GROUP {
            let s = hsum_ps(half(acc[r][t / 2], t % 2));
            out[r][t] = match X {
                4 => s - m8[t],
                _ => s,
            };
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::act_quant::Act;
    use crate::kernels::tests_dot512::magnitude;
    use crate::kernels::{dot_kquants as kq, dot_kquants_avx2 as k2, tile_wide_decode as dc, Isa};
    use half::f16;
    use llmq_formats::blocks::{BlockIq4Xs, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
    use llmq_formats::GgmlType;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    type One = fn(&[u8], &[u8]) -> f32;

    pub(crate) fn available() -> bool {
        Isa::Avx2.available() && llmq_quant::isa::avx512_vnni()
    }

    /// Random block bytes with finite scales; `edge` adds zero and negative scales,
    /// all-zero and all-max quants and scales.
    pub(crate) fn weight_rows(
        rng: &mut ChaCha8Rng,
        ty: GgmlType,
        rows: usize,
        nb: usize,
        edge: bool,
    ) -> Vec<u8> {
        let bytes = ty.row_bytes(256).unwrap();
        let mut w: Vec<u8> = (0..rows * nb * bytes).map(|_| rng.gen()).collect();
        let f16b = |v: f32| f16::from_f32(v).to_bits().to_le_bytes();
        for blk in w.chunks_exact_mut(bytes) {
            let mut d = rng.gen_range(0.0005f32..0.01);
            if edge && rng.gen_range(0..4) == 0 {
                d = if rng.gen() { 0.0 } else { -d };
            }
            let fill = match (edge, rng.gen_range(0..5)) {
                (true, 0) => Some(0u8),
                (true, 1) => Some(0xff),
                _ => None,
            };
            let dmin = f16b(rng.gen_range(0.0f32..0.01));
            match ty {
                GgmlType::IQ4XS => {
                    blk[BlockIq4Xs::D].copy_from_slice(&f16b(d));
                    if let Some(f) = fill {
                        blk[BlockIq4Xs::QS].fill(f);
                        blk[BlockIq4Xs::SCALES_L].fill(f);
                        blk[BlockIq4Xs::SCALES_H].fill(f);
                    }
                }
                GgmlType::Q2K => {
                    blk[BlockQ2K::D].copy_from_slice(&f16b(d));
                    blk[BlockQ2K::DMIN].copy_from_slice(&dmin);
                    if let Some(f) = fill {
                        blk[BlockQ2K::SCALES].fill(f);
                        blk[BlockQ2K::QS].fill(f);
                    }
                }
                GgmlType::Q3K => {
                    blk[BlockQ3K::D].copy_from_slice(&f16b(d));
                    if let Some(f) = fill {
                        blk[BlockQ3K::SCALES].fill(f);
                        blk[BlockQ3K::QS].fill(f);
                        blk[BlockQ3K::HMASK].fill(f);
                    }
                }
                GgmlType::Q4K | GgmlType::Q5K => {
                    blk[BlockQ4K::D].copy_from_slice(&f16b(d));
                    blk[BlockQ4K::DMIN].copy_from_slice(&dmin);
                    if let Some(f) = fill {
                        blk[BlockQ4K::SCALES].fill(f);
                        if ty == GgmlType::Q4K {
                            blk[BlockQ4K::QS].fill(f);
                        } else {
                            blk[BlockQ5K::QS].fill(f);
                            blk[BlockQ5K::QH].fill(f);
                        }
                    }
                }
                _ => {
                    blk[BlockQ6K::D].copy_from_slice(&f16b(d));
                    if let Some(f) = fill {
                        blk[BlockQ6K::QL].fill(f);
                        blk[BlockQ6K::QH].fill(f);
                        blk[BlockQ6K::SCALES].fill(if f == 0 { 0 } else { 0x80 });
                    }
                }
            }
        }
        w
    }

    /// `n` Q8_K rows quantized from uniform values with outliers and a zero row.
    pub(crate) fn act_rows(rng: &mut ChaCha8Rng, n: usize, cols: usize) -> Vec<u8> {
        let mut x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        x[cols + 3] = 90.0;
        x[2 * cols + 7] = -70.0;
        x[3 * cols..4 * cols].fill(0.0);
        let rb = Act::Q8K.row_bytes(cols);
        let mut q = vec![0u8; n * rb];
        for (q, x) in q.chunks_mut(rb).zip(x.chunks(cols)) {
            Act::Q8K.quantize(Isa::Avx2, x, q);
        }
        q
    }

    /// Every tile gives each (row, token) the AVX2 one-row kernel's bits, and agrees
    /// with the scalar reference, on random and edge-case blocks.
    #[test]
    fn tiles_equal_the_one_row_kernel_and_the_scalar_reference() {
        if !available() {
            return;
        }
        let cases: [(GgmlType, WideDecodeFn, Extra, One, One); 2] = [
            (
                GgmlType::Q3K,
                dc::decode_q3_k,
                Extra::Offset4,
                k2::dot_q3_k,
                kq::dot_q3_k,
            ),
            (
                GgmlType::Q2K,
                dc::decode_q2_k,
                Extra::Mins16,
                k2::dot_q2_k,
                kq::dot_q2_k,
            ),
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(20);
        for (ty, decode, extra, one, scalar) in cases {
            let wb = ty.row_bytes(256).unwrap();
            for (nb, edge) in [(1, true), (3, true), (2, false)] {
                let rows = 5;
                let w = weight_rows(&mut rng, ty, rows, nb, edge);
                let row = |r: usize| &w[r * nb * wb..(r + 1) * nb * wb];
                let dec = Decoded::new(decode, nb, (0..rows).map(row));
                let n = 16;
                let rb = nb * Q8_K_BYTES;
                let acts = act_rows(&mut rng, n, nb * 256);
                let packed = pack(&acts, rb, n, extra);
                let mut out = [[0.0f32; GROUP]; ROWS];
                for (r0, rr) in [(0, 4), (4, 1), (1, 3), (3, 2)] {
                    for g in 0..n / GROUP {
                        let gb = group_bytes(nb, extra);
                        let a = &packed[g * gb..(g + 1) * gb];
                        // SAFETY: checked by `available`.
                        unsafe { tile(&dec, extra, r0, rr, a, &mut out) };
                        for (i, vals) in out.iter().take(rr).enumerate() {
                            let r = r0 + i;
                            for (k, &got) in vals.iter().enumerate() {
                                let t = g * GROUP + k;
                                let x = &acts[t * rb..(t + 1) * rb];
                                let want = one(row(r), x);
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{ty:?} nb={nb} row {r} token {t}: {got} vs {want}"
                                );
                                let reference = scalar(row(r), x);
                                let mag = magnitude(ty, row(r), x);
                                assert!(
                                    ((got - reference).abs() as f64) <= 1e-5 * mag + 1e-30,
                                    "{ty:?} nb={nb}: {got} vs scalar {reference}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
