//! Tiled k-quant GEMM for prompt processing on AVX-512 (F, BW): Q4_K and Q6_K weight
//! rows against 8 tokens of Q8_K activations per tile (llama.cpp `ggml-common.h`
//! block layouts), two tokens side by side in each 512-bit register.
//!
//! Each output element gets exactly the float operations of the one-row AVX2 kernel
//! (`dot_kquants_avx2::q45_k` / `q6_k`): the per-block integer sums are exact (the
//! same `vpmaddubsw` / `vpmaddwd` products, 512 bits wide), then
//! `acc = fma(d·d_a, f32(sumi), acc)` on 8 lanes per token and, for Q4_K,
//! `accm = fma(dmin·d_a, f32(Σ mins·bsums), accm)` on 4 lanes, summed at the end as
//! there. So a token's result never depends on the other tokens of the batch.
//!
//! The activations are packed once per call ([`pack`]): per 8-token group and block,
//! the 8 chunks of 32 quants as 4 token pairs of 64 bytes, each pair's `d` (16 × f32),
//! each pair's raw `bsums` (Q6_K's offset term), the `bsums` summed in pairs for 4
//! tokens at a time and those tokens' `d` (16 × f32, Q4_K's min term).

#![allow(unsafe_op_in_unsafe_fn)]

use super::act_quant::Q8_K_BYTES;
use super::simd::{hsum_ps, load_f16};
use llmq_formats::blocks::{BlockQ4K as Q4K, BlockQ6K as Q6K, BlockQ8K};
use std::arch::x86_64::*;

/// Rows of `R ≤ 2` weight rows (packed blocks) against one packed group: `out[r][t]`.
pub type KTileFn = fn(&[&[u8]], &[u8], &mut [[f32; GROUP]; 4]);

/// Tokens per tile.
pub const GROUP: usize = 8;
/// Weight rows per tile.
pub const ROWS: usize = 2;

const QUANTS: usize = 0;
const D_PAIRS: usize = 8 * 4 * 64;
const BSUMS: usize = D_PAIRS + 4 * 64;
const BS_QUADS: usize = BSUMS + 4 * 64;
const D_QUADS: usize = BS_QUADS + 2 * 64;
/// Bytes of one block of a packed group.
const BLOCK: usize = D_QUADS + 2 * 64;

/// Bytes of one packed 8-token group of `nb` blocks.
pub fn group_bytes(nb: usize) -> usize {
    nb * BLOCK
}

/// Packs the full 8-token groups of `n` Q8_K rows (`rb` bytes each).
pub fn pack(acts: &[u8], rb: usize, n: usize) -> Vec<u8> {
    let nb = rb / Q8_K_BYTES;
    super::tiled::pack_groups(acts, rb, n, GROUP, group_bytes(nb), |a, dst| {
        pack_group(a, rb, nb, dst)
    })
}

fn pack_group(acts: &[u8], rb: usize, nb: usize, dst: &mut [u8]) {
    for (b, blk) in dst.chunks_exact_mut(BLOCK).take(nb).enumerate() {
        for t in 0..GROUP {
            let src = &acts[t * rb + b * Q8_K_BYTES..][..Q8_K_BYTES];
            let (p, half) = (t / 2, t % 2);
            let qs = &src[BlockQ8K::QS];
            for s in 0..8 {
                let at = QUANTS + (s * 4 + p) * 64 + 32 * half;
                blk[at..at + 32].copy_from_slice(&qs[32 * s..32 * s + 32]);
            }
            let d = &src[BlockQ8K::D];
            for l in 0..8 {
                let at = D_PAIRS + p * 64 + 4 * (8 * half + l);
                blk[at..at + 4].copy_from_slice(d);
            }
            let bsums = &src[BlockQ8K::BSUMS];
            let at = BSUMS + p * 64 + 32 * half;
            blk[at..at + 32].copy_from_slice(bsums);
            let (q, k) = (t / 4, t % 4);
            for j in 0..8 {
                let a = i16::from_le_bytes([bsums[4 * j], bsums[4 * j + 1]]);
                let b = i16::from_le_bytes([bsums[4 * j + 2], bsums[4 * j + 3]]);
                let at = BS_QUADS + q * 64 + 16 * k + 2 * j;
                blk[at..at + 2].copy_from_slice(&a.wrapping_add(b).to_le_bytes());
            }
            for l in 0..4 {
                let at = D_QUADS + q * 64 + 4 * (4 * k + l);
                blk[at..at + 4].copy_from_slice(d);
            }
        }
    }
}

#[inline(always)]
unsafe fn bcast(v: __m256i) -> __m512i {
    _mm512_broadcast_i64x4(v)
}

/// `sumi += madd(maddubs(u, y_p), scale)` for the 4 token pairs of chunk `s`.
#[inline(always)]
unsafe fn mac(sumi: &mut [__m512i; 4], u: __m512i, scale: __m512i, blk: *const u8, s: usize) {
    for (p, acc) in sumi.iter_mut().enumerate() {
        let y = _mm512_loadu_si512(blk.add(QUANTS + (s * 4 + p) * 64) as *const __m512i);
        let prod = _mm512_maddubs_epi16(u, y);
        *acc = _mm512_add_epi32(*acc, _mm512_madd_epi16(prod, scale));
    }
}

/// Lanes `8h..8h + 8` of `v` as a 256-bit vector.
#[inline(always)]
unsafe fn half(v: __m512, h: usize) -> __m256 {
    if h == 0 {
        _mm512_castps512_ps256(v)
    } else {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
    }
}

/// Q8_K's `Σ` of 4 lanes, as `q45_k` sums `accm`.
#[inline(always)]
unsafe fn hsum4(m: __m128) -> f32 {
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

#[inline(always)]
unsafe fn quarter(v: __m512, k: usize) -> __m128 {
    match k {
        0 => _mm512_extractf32x4_ps::<0>(v),
        1 => _mm512_extractf32x4_ps::<1>(v),
        2 => _mm512_extractf32x4_ps::<2>(v),
        _ => _mm512_extractf32x4_ps::<3>(v),
    }
}

#[allow(clippy::needless_range_loop)] // one index into several tile arrays
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn q4_k<const R: usize>(w: &[&[u8]], a: &[u8], out: &mut [[f32; GROUP]; 4]) {
    let nb = w[0].len() / Q4K::BYTES;
    assert!(a.len() >= group_bytes(nb) && w.len() >= R);
    for r in w.iter().take(R) {
        assert!(r.len() >= nb * Q4K::BYTES);
    }
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let mut accm = [[_mm512_setzero_ps(); 2]; R];
    for i in 0..nb {
        let blk = a.as_ptr().add(i * BLOCK);
        for r in 0..R {
            let x = w[r].as_ptr().add(i * Q4K::BYTES);
            let u = scale_min_words(std::slice::from_raw_parts(x.add(Q4K::SCALES.start), 12));
            let ms = _mm256_cvtepu8_epi16(_mm_setr_epi32(
                u[0] as i32,
                u[1] as i32,
                u[2] as i32,
                u[3] as i32,
            ));
            let scales = _mm256_permute2x128_si256::<0x00>(ms, ms);
            let mins = _mm256_extracti128_si256::<1>(ms);
            let mut sumi = [_mm512_setzero_si512(); 4];
            for j in 0..4 {
                let q = _mm256_loadu_si256(x.add(Q4K::QS.start + 32 * j) as *const __m256i);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let sc_lo = _mm256_shuffle_epi8(scales, elem_ctrl(2 * j as i32));
                let sc_hi = _mm256_shuffle_epi8(scales, elem_ctrl(2 * j as i32 + 1));
                mac(&mut sumi, bcast(lo), bcast(sc_lo), blk, 2 * j);
                mac(&mut sumi, bcast(hi), bcast(sc_hi), blk, 2 * j + 1);
            }
            let d = _mm512_set1_ps(load_f16(x.add(Q4K::D.start)));
            let dmin = _mm512_set1_ps(load_f16(x.add(Q4K::DMIN.start)));
            for (p, s) in sumi.iter().enumerate() {
                let yd = _mm512_loadu_ps(blk.add(D_PAIRS + 64 * p) as *const f32);
                let dd = _mm512_mul_ps(d, yd);
                acc[r][p] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(*s), acc[r][p]);
            }
            let mins = _mm512_broadcast_i32x4(mins);
            for q in 0..2 {
                let bs = _mm512_loadu_si512(blk.add(BS_QUADS + 64 * q) as *const __m512i);
                let pm = _mm512_cvtepi32_ps(_mm512_madd_epi16(mins, bs));
                let yd = _mm512_loadu_ps(blk.add(D_QUADS + 64 * q) as *const f32);
                accm[r][q] = _mm512_fmadd_ps(_mm512_mul_ps(dmin, yd), pm, accm[r][q]);
            }
        }
    }
    for r in 0..R {
        for t in 0..GROUP {
            let s = hsum_ps(half(acc[r][t / 2], t % 2));
            out[r][t] = s - hsum4(quarter(accm[r][t / 4], t % 4));
        }
    }
}

#[allow(clippy::needless_range_loop)] // one index into several tile arrays
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn q6_k<const R: usize>(w: &[&[u8]], a: &[u8], out: &mut [[f32; GROUP]; 4]) {
    let nb = w[0].len() / Q6K::BYTES;
    assert!(a.len() >= group_bytes(nb) && w.len() >= R);
    for r in w.iter().take(R) {
        assert!(r.len() >= nb * Q6K::BYTES);
    }
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x30);
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for i in 0..nb {
        let blk = a.as_ptr().add(i * BLOCK);
        for r in 0..R {
            let x = w[r].as_ptr().add(i * Q6K::BYTES);
            let sc16 =
                _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(Q6K::SCALES.start) as *const __m128i));
            let sc = bcast(sc16);
            let mut sumi = [_mm512_setzero_si512(); 4];
            for (p, s) in sumi.iter_mut().enumerate() {
                // the −32 offset: Σ_g sc[g]·32·bsum[g]
                let bs = _mm512_loadu_si512(blk.add(BSUMS + 64 * p) as *const __m512i);
                let off = _mm512_madd_epi16(sc, bs);
                *s = _mm512_sub_epi32(*s, _mm512_slli_epi32::<5>(off));
            }
            for h in 0..2 {
                let s = if h == 0 {
                    _mm256_permute2x128_si256::<0x00>(sc16, sc16)
                } else {
                    _mm256_permute2x128_si256::<0x11>(sc16, sc16)
                };
                let ld = |o: usize| _mm256_loadu_si256(x.add(o) as *const __m256i);
                let ql0 = ld(Q6K::QL.start + 64 * h);
                let ql1 = ld(Q6K::QL.start + 64 * h + 32);
                let qh = ld(Q6K::QH.start + 32 * h);
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
                for (k, u) in u.iter().enumerate() {
                    let scv = _mm256_shuffle_epi8(s, pair_ctrl(k as i32));
                    mac(&mut sumi, bcast(*u), bcast(scv), blk, 4 * h + k);
                }
            }
            let d = _mm512_set1_ps(load_f16(x.add(Q6K::D.start)));
            for (p, s) in sumi.iter().enumerate() {
                let yd = _mm512_loadu_ps(blk.add(D_PAIRS + 64 * p) as *const f32);
                let dd = _mm512_mul_ps(d, yd);
                acc[r][p] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(*s), acc[r][p]);
            }
        }
    }
    for r in 0..R {
        for t in 0..GROUP {
            out[r][t] = hsum_ps(half(acc[r][t / 2], t % 2));
        }
    }
}

/// Q4_K/Q5_K packed scales to 16 bytes: 8 scales then 8 mins (as `q45_k`).
#[inline(always)]
fn scale_min_words(s: &[u8]) -> [u32; 4] {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    [
        u0 & K1,
        (u2 & K2) | (((u0 >> 6) & K3) << 4),
        u1 & K1,
        ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4),
    ]
}

/// Shuffle control broadcasting i16 element `k` of each lane.
#[inline(always)]
unsafe fn elem_ctrl(k: i32) -> __m256i {
    _mm256_set1_epi16((((2 * k + 1) << 8) | (2 * k)) as i16)
}

/// Shuffle control putting i16 element `2k` of a lane-broadcast vector in the low lane
/// and element `2k + 1` in the high lane.
#[inline(always)]
unsafe fn pair_ctrl(k: i32) -> __m256i {
    let lo = ((4 * k + 1) << 8) | (4 * k);
    let hi = ((4 * k + 3) << 8) | (4 * k + 2);
    _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16))
}

macro_rules! entry {
    ($name:ident, $kernel:ident) => {
        /// `w.len()` (1 or 2) rows against one packed group. Only handed out by the
        /// dispatcher when AVX-512 F/BW and AVX2/FMA/F16C were detected.
        pub fn $name(w: &[&[u8]], a: &[u8], out: &mut [[f32; GROUP]; 4]) {
            // SAFETY: see above.
            unsafe {
                match w.len() {
                    1 => $kernel::<1>(w, a, out),
                    _ => $kernel::<2>(w, a, out),
                }
            }
        }
    };
}
entry!(tile_q4_k, q4_k);
entry!(tile_q6_k, q6_k);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::act_quant::Act;
    use crate::kernels::{dot_kquants as kq, dot_kquants_avx2 as k2, Isa};
    use half::f16;
    use llmq_formats::GgmlType;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    type One = fn(&[u8], &[u8]) -> f32;

    fn available() -> bool {
        Isa::Avx2.available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
    }

    /// Random block bytes with finite scales; `edge` adds zero and negative scales,
    /// all-zero and all-max quants.
    fn weight_rows(
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
            let fill = match (edge, rng.gen_range(0..6)) {
                (true, 0) => Some(0u8),
                (true, 1) => Some(0xff),
                _ => None,
            };
            if ty == GgmlType::Q4K {
                blk[Q4K::D].copy_from_slice(&f16b(d));
                blk[Q4K::DMIN].copy_from_slice(&f16b(rng.gen_range(0.0f32..0.01)));
                if let Some(f) = fill {
                    blk[Q4K::QS].fill(f);
                    blk[Q4K::SCALES].fill(f);
                }
            } else {
                blk[Q6K::D].copy_from_slice(&f16b(d));
                if let Some(f) = fill {
                    blk[Q6K::QL].fill(f);
                    blk[Q6K::QH].fill(f);
                    blk[Q6K::SCALES].fill(if f == 0 { 0 } else { 0x80 });
                }
            }
        }
        w
    }

    /// `n` Q8_K rows quantized from Gaussian values with outliers and a zero row.
    fn act_rows(rng: &mut ChaCha8Rng, n: usize, cols: usize) -> Vec<u8> {
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

    fn magnitude(ty: GgmlType, w: &[u8], a: &[u8]) -> f64 {
        let cols = a.len() / Q8_K_BYTES * 256;
        let mut wf = vec![0.0f32; cols];
        crate::dequant::dequantize_row(ty, w, &mut wf);
        let af: Vec<f32> = a
            .chunks_exact(Q8_K_BYTES)
            .flat_map(|blk| {
                let d = f32::from_le_bytes(blk[BlockQ8K::D].try_into().unwrap());
                blk[BlockQ8K::QS].iter().map(move |&q| d * q as i8 as f32)
            })
            .collect();
        wf.iter()
            .zip(&af)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum()
    }

    /// Every tile gives each (row, token) the AVX2 one-row kernel's bits, and agrees
    /// with the scalar reference, on random and edge-case blocks.
    #[test]
    #[allow(clippy::needless_range_loop)] // one index into several tile arrays
    fn tiles_equal_the_one_row_kernel_and_the_scalar_reference() {
        if !available() {
            return;
        }
        let cases: [(GgmlType, KTileFn, One, One); 2] = [
            (GgmlType::Q4K, tile_q4_k, k2::dot_q4_k, kq::dot_q4_k),
            (GgmlType::Q6K, tile_q6_k, k2::dot_q6_k, kq::dot_q6_k),
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for (ty, tile, one, scalar) in cases {
            let wb = ty.row_bytes(256).unwrap();
            for (nb, edge) in [(1, true), (3, true), (4, false)] {
                let rows = 3;
                let w = weight_rows(&mut rng, ty, rows, nb, edge);
                let row = |r: usize| &w[r * nb * wb..(r + 1) * nb * wb];
                let n = 16;
                let rb = nb * Q8_K_BYTES;
                let acts = act_rows(&mut rng, n, nb * 256);
                let packed = pack(&acts, rb, n);
                let mut out = [[0.0f32; GROUP]; 4];
                for rs in [&[0usize, 1][..], &[2], &[1, 2]] {
                    let ws: Vec<&[u8]> = rs.iter().map(|&r| row(r)).collect();
                    for g in 0..n / GROUP {
                        let a = &packed[g * group_bytes(nb)..(g + 1) * group_bytes(nb)];
                        tile(&ws, a, &mut out);
                        for (i, &r) in rs.iter().enumerate() {
                            for k in 0..GROUP {
                                let t = g * GROUP + k;
                                let x = &acts[t * rb..(t + 1) * rb];
                                let (got, want) = (out[i][k], one(row(r), x));
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
