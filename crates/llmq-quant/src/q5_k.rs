//! Q5_K: 5.5 bits per weight. Super-blocks of 256 values in 8 sub-blocks of 32, each
//! `x ≈ d·sc·q − dmin·m` with 5-bit `q` and 6-bit sub-block scale `sc` and min `m`.
//!
//! Block layout (`block_q5_K` in llama.cpp's `ggml/src/ggml-common.h`, 176 bytes):
//! `d: f16`, `dmin: f16` (little-endian), `scales: [u8; 12]` (the k4 packing of Q4_K),
//! `qh: [u8; 32]` (bit `2g` of `qh[l]` is bit 4 of value `64·g + l`, bit `2g+1` that of
//! value `64·g + 32 + l`), `qs: [u8; 128]` (low nibbles, arranged as in Q4_K).
//!
//! Quantization follows `quantize_q5_K` of `ggml/src/ggml-quants.c` (llama-cpp-python
//! 0.3.36): `quantize_row_q5_K_ref` without importance weights, `quantize_row_q5_K_impl`
//! with them; both are the Q4_K searches with 31 levels (see [`crate::q4_k`]).

use crate::q4_k::{affine_block_plain, affine_block_weighted, unpack_scale_min};
use crate::search::fp16_bits_to_fp32;
use llmq_formats::blocks::{le_u16, BlockQ5K};

/// Values per super-block.
const BLOCK_VALUES: usize = BlockQ5K::VALUES;
/// Bytes per super-block.
const BLOCK_BYTES: usize = BlockQ5K::BYTES;

fn quantize_block<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let block = match imatrix {
        None => affine_block_plain::<FAST>(x, 31, -0.5, 15),
        Some(w) => affine_block_weighted::<FAST>(x, w, 31, true),
    };
    y[BlockQ5K::D].copy_from_slice(&block.d.to_le_bytes());
    y[BlockQ5K::DMIN].copy_from_slice(&block.dmin.to_le_bytes());
    y[BlockQ5K::SCALES].copy_from_slice(&block.scales);
    let (qh, qs) = y[BlockQ5K::QH.start..].split_at_mut(BlockQ5K::QH.len());
    qh.fill(0);
    for g in 0..4 {
        let (bit_lo, bit_hi) = (1u8 << (2 * g), 2u8 << (2 * g));
        for l in 0..32 {
            let mut lo = block.levels[64 * g + l];
            if lo > 15 {
                lo -= 16;
                qh[l] |= bit_lo;
            }
            let mut hi = block.levels[64 * g + 32 + l];
            if hi > 15 {
                hi -= 16;
                qh[l] |= bit_hi;
            }
            qs[32 * g + l] = lo | (hi << 4);
        }
    }
}

fn quantize_row_with<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let nb = x.len() / BLOCK_VALUES;
    assert_eq!(
        x.len(),
        nb * BLOCK_VALUES,
        "Q5_K row of {} values is not whole super-blocks",
        x.len()
    );
    assert_eq!(y.len(), nb * BLOCK_BYTES, "Q5_K output buffer size");
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "Q5_K importance weights: one per value");
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

/// Quantize a row (whole super-blocks) to Q5_K with the plain scalar searches.
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<false>(x, imatrix, y);
}

/// Quantize a row to Q5_K; same bytes as [`quantize_row_ref`], lane-parallel searches.
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<true>(x, imatrix, y);
}

/// Dequantize Q5_K blocks (`dequantize_row_q5_K`), a literal reading.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q5_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(b, BlockQ5K::D));
        let min = fp16_bits_to_fp32(le_u16(b, BlockQ5K::DMIN));
        let scales = &b[BlockQ5K::SCALES];
        let qh = &b[BlockQ5K::QH];
        let mut o = 0;
        let (mut u1, mut u2) = (1u8, 2u8);
        for g in 0..4 {
            let ql = &b[BlockQ5K::QS.start + 32 * g..][..32];
            let (sc1, m1) = unpack_scale_min(2 * g, scales);
            let (sc2, m2) = unpack_scale_min(2 * g + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            for l in 0..32 {
                let high = if qh[l] & u1 != 0 { 16 } else { 0 };
                out[o] = d1 * ((ql[l] & 0xf) + high) as f32 - m1;
                o += 1;
            }
            for l in 0..32 {
                let high = if qh[l] & u2 != 0 { 16 } else { 0 };
                out[o] = d2 * ((ql[l] >> 4) + high) as f32 - m2;
                o += 1;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

/// Dequantize Q5_K blocks; same values as [`dequantize_row_ref`], with branch-free bit
/// extraction over fixed-size slices so the inner loop vectorises.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q5_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let b: &[u8; BLOCK_BYTES] = b.try_into().unwrap();
        let d = fp16_bits_to_fp32(le_u16(b, BlockQ5K::D));
        let min = fp16_bits_to_fp32(le_u16(b, BlockQ5K::DMIN));
        let scales = &b[BlockQ5K::SCALES];
        let qh: &[u8; 32] = b[BlockQ5K::QH].try_into().unwrap();
        for (g, out) in out.chunks_exact_mut(64).enumerate() {
            let ql: &[u8; 32] = b[BlockQ5K::QS.start + 32 * g..][..32].try_into().unwrap();
            let (sc1, m1) = unpack_scale_min(2 * g, scales);
            let (sc2, m2) = unpack_scale_min(2 * g + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (lo, hi) = out.split_at_mut(32);
            let shift = 2 * g as u32;
            for l in 0..32 {
                let h = qh[l] >> shift;
                lo[l] = d1 * ((ql[l] & 0xf) | ((h & 1) << 4)) as f32 - m1;
                hi[l] = d2 * ((ql[l] >> 4) | ((h & 2) << 3)) as f32 - m2;
            }
        }
    }
}
