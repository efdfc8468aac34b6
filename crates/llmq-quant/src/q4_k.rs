//! Q4_K: 4.5 bits per weight. Super-blocks of 256 values in 8 sub-blocks of 32, each
//! `x ≈ d·sc·q − dmin·m` with 4-bit `q` and 6-bit sub-block scale `sc` and min `m`.
//!
//! Block layout (`block_q4_K` in llama.cpp's `ggml/src/ggml-common.h`, 144 bytes):
//! `d: f16`, `dmin: f16` (little-endian), `scales: [u8; 12]` (eight 6-bit scales and
//! eight 6-bit mins, see `pack_scales_mins`), `qs: [u8; 128]` (value `64·g + l` in the
//! low nibble of `qs[32·g + l]`, value `64·g + 32 + l` in its high nibble).
//!
//! Quantization follows `quantize_q4_K` of `ggml/src/ggml-quants.c` (llama-cpp-python
//! 0.3.36): without importance weights `quantize_row_q4_K_ref` (`make_qkx2_quants` per
//! sub-block, sub-block scales rounded against the largest), with them
//! `quantize_row_q4_K_impl` (`make_qkx3_quants`, then `make_qp_quants` on the scales).

use crate::search::{
    fp16_bits_to_fp32, fp32_to_fp16_bits, make_qkx2_quants, make_qkx2_quants_fast,
    make_qkx3_quants, make_qkx3_quants_fast, make_qp_quants, nearest_int,
};
use llmq_formats::blocks::{le_u16, BlockQ4K};

/// Values per super-block.
const BLOCK_VALUES: usize = BlockQ4K::VALUES;
/// Bytes per super-block.
const BLOCK_BYTES: usize = BlockQ4K::BYTES;

/// Pack eight 6-bit sub-block scales and mins into the 12-byte k4 layout shared by Q4_K
/// and Q5_K: entries 0..4 take a whole byte each (`scales[j]`, `scales[j+4]`); entries
/// 4..8 keep their low nibbles in `scales[j+4]` and their top two bits in bits 6..7 of
/// `scales[j-4]` (scale) and `scales[j]` (min). Inputs above 63 are packed with the same
/// (wrapping) byte arithmetic as the C code.
pub(crate) fn pack_scales_mins(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(&ls[..4]);
    s[4..8].copy_from_slice(&lm[..4]);
    for j in 4..8 {
        s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
        s[j - 4] |= (((ls[j] >> 4) as u32) << 6) as u8;
        s[j] |= (((lm[j] >> 4) as u32) << 6) as u8;
    }
    s
}

/// Scale and min of sub-block `j` from the 12-byte k4 layout (`get_scale_min_k4`).
#[inline(always)]
pub(crate) fn unpack_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Sub-block scales and mins, and the levels, of one super-block before packing: what
/// the two search strategies shared by Q4_K and Q5_K produce.
pub(crate) struct AffineSuperBlock {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub levels: [u8; BLOCK_VALUES],
}

/// `quantize_row_q{4,5}_K_ref` up to packing the levels: per-sub-block
/// `make_qkx2_quants` with weights `rms(sub-block) + |x|`, then 6-bit scales and mins
/// relative to the largest, then requantization of every value against the rounded
/// scales. `nmax` is 15 (Q4_K) or 31 (Q5_K), `rmin`/`nstep` the search range.
pub(crate) fn affine_block_plain<const FAST: bool>(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> AffineSuperBlock {
    let mut levels = [0u8; BLOCK_VALUES];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0.0f32; 32];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let ls = &mut levels[32 * j..32 * j + 32];
        let (scale, min) = if FAST {
            make_qkx2_quants_fast(nmax, xs, &weights, ls, rmin, 0.1, nstep, false)
        } else {
            make_qkx2_quants(nmax, xs, &weights, ls, rmin, 0.1, nstep, false)
        };
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let mut block = AffineSuperBlock {
        d: fp32_to_fp16_bits(max_scale / 63.0),
        dmin: fp32_to_fp16_bits(max_min / 63.0),
        scales: pack_scales_mins(&ls, &lm),
        levels,
    };
    requantize_affine(x, nmax, &mut block);
    block
}

/// `quantize_row_q{4,5}_K_impl` up to packing the levels: per-sub-block
/// `make_qkx3_quants` with weights `imatrix·sqrt(σ² + x²)`, then `make_qp_quants` for the
/// 6-bit scales and mins (weighted by each sub-block's total weight), then requantization.
/// `clamp_scales` applies the extra `min(63, ·)` that the Q5_K version has.
pub(crate) fn affine_block_weighted<const FAST: bool>(
    x: &[f32],
    imatrix: &[f32],
    nmax: i32,
    clamp_scales: bool,
) -> AffineSuperBlock {
    let mut sum_x2 = 0.0f32;
    for &v in &x[..BLOCK_VALUES] {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / BLOCK_VALUES as f32;
    let mut levels = [0u8; BLOCK_VALUES];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut sub_weight = [0.0f32; 8];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let qw = &imatrix[32 * j..32 * j + 32];
        let mut weights = [0.0f32; 32];
        for ((w, &q), &v) in weights.iter_mut().zip(qw).zip(xs) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0.0f32;
        for &w in &weights {
            sumw += w;
        }
        sub_weight[j] = sumw;
        let ls = &mut levels[32 * j..32 * j + 32];
        (scales[j], mins[j]) = if FAST {
            make_qkx3_quants_fast(nmax, xs, Some(&weights), ls, -0.9, 0.05, 36, false)
        } else {
            make_qkx3_quants(nmax, xs, Some(&weights), ls, -0.9, 0.05, 36, false)
        };
    }
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, &scales, &mut ls, &sub_weight);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sub_weight);
    if clamp_scales {
        for v in ls.iter_mut().chain(lm.iter_mut()) {
            *v = (*v).min(63);
        }
    }
    let mut block = AffineSuperBlock {
        d: fp32_to_fp16_bits(d_block),
        dmin: fp32_to_fp16_bits(m_block),
        scales: pack_scales_mins(&ls, &lm),
        levels,
    };
    requantize_affine(x, nmax, &mut block);
    block
}

/// Recompute every level against the stored (rounded) scales and mins; sub-blocks whose
/// scale rounds to zero keep the levels of the search.
fn requantize_affine(x: &[f32], nmax: i32, block: &mut AffineSuperBlock) {
    let d_all = fp16_bits_to_fp32(block.d);
    let dmin_all = fp16_bits_to_fp32(block.dmin);
    for j in 0..8 {
        let (sc, m) = unpack_scale_min(j, &block.scales);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        let xs = &x[32 * j..32 * j + 32];
        for (l, &v) in block.levels[32 * j..32 * j + 32].iter_mut().zip(xs) {
            *l = nearest_int((v + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

fn quantize_block<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let block = match imatrix {
        None => affine_block_plain::<FAST>(x, 15, -1.0, 20),
        Some(w) => affine_block_weighted::<FAST>(x, w, 15, false),
    };
    y[BlockQ4K::D].copy_from_slice(&block.d.to_le_bytes());
    y[BlockQ4K::DMIN].copy_from_slice(&block.dmin.to_le_bytes());
    y[BlockQ4K::SCALES].copy_from_slice(&block.scales);
    let (qs, levels) = (&mut y[BlockQ4K::QS], &block.levels);
    for g in 0..4 {
        for l in 0..32 {
            qs[32 * g + l] = levels[64 * g + l] | (levels[64 * g + 32 + l] << 4);
        }
    }
}

fn quantize_row_with<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let nb = x.len() / BLOCK_VALUES;
    assert_eq!(
        x.len(),
        nb * BLOCK_VALUES,
        "Q4_K row of {} values is not whole super-blocks",
        x.len()
    );
    assert_eq!(y.len(), nb * BLOCK_BYTES, "Q4_K output buffer size");
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "Q4_K importance weights: one per value");
    }
    for (i, (xb, yb)) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        let wb = imatrix.map(|w| &w[i * BLOCK_VALUES..(i + 1) * BLOCK_VALUES]);
        quantize_block::<FAST>(xb, wb, yb);
    }
}

/// Quantize a row (whole super-blocks) to Q4_K with the plain scalar searches.
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<false>(x, imatrix, y);
}

/// Quantize a row to Q4_K; same bytes as [`quantize_row_ref`], lane-parallel searches.
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<true>(x, imatrix, y);
}

/// Dequantize Q4_K blocks (`dequantize_row_q4_K`), a literal reading.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q4_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(b, BlockQ4K::D));
        let min = fp16_bits_to_fp32(le_u16(b, BlockQ4K::DMIN));
        let scales = &b[BlockQ4K::SCALES];
        let qs = &b[BlockQ4K::QS];
        let mut o = 0;
        for g in 0..4 {
            let (sc1, m1) = unpack_scale_min(2 * g, scales);
            let (sc2, m2) = unpack_scale_min(2 * g + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &qs[32 * g..32 * g + 32];
            for &v in q {
                out[o] = d1 * (v & 0xf) as f32 - m1;
                o += 1;
            }
            for &v in q {
                out[o] = d2 * (v >> 4) as f32 - m2;
                o += 1;
            }
        }
    }
}

/// Dequantize Q4_K blocks; same values as [`dequantize_row_ref`], laid out so the inner
/// loops vectorise (fixed-size sub-block slices, no running index).
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q4_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let b: &[u8; BLOCK_BYTES] = b.try_into().unwrap();
        let d = fp16_bits_to_fp32(le_u16(b, BlockQ4K::D));
        let min = fp16_bits_to_fp32(le_u16(b, BlockQ4K::DMIN));
        let scales = &b[BlockQ4K::SCALES];
        for (g, out) in out.chunks_exact_mut(64).enumerate() {
            let q: &[u8; 32] = b[BlockQ4K::QS.start + 32 * g..][..32].try_into().unwrap();
            let (sc1, m1) = unpack_scale_min(2 * g, scales);
            let (sc2, m2) = unpack_scale_min(2 * g + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (lo, hi) = out.split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * (q[l] & 0xf) as f32 - m1;
                hi[l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}
