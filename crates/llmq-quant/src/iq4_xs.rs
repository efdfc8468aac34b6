//! IQ4_XS: super-blocks of 256 values = 8 blocks of 32, each value a 4-bit index into
//! the IQ4_NL level table, each block with a 6-bit signed scale `ls - 32` relative to
//! the super-block's f16 scale `d`; value = `d * (ls - 32) * table[index]`. Layout
//! (`block_iq4_xs` in `ggml/src/ggml-common.h`): `d` (f16), `scales_h` (u16, two high
//! bits per block), `scales_l` (4 bytes, low nibbles, block `2i` low / `2i+1` high),
//! `qs` (128 bytes, per block value `j` low and `j+16` high nibble).
//!
//! Implements llama.cpp's `quantize_iq4_xs` / `dequantize_row_iq4_xs` from
//! `ggml/src/ggml-quants.c`: the per-block scale search of `quantize_row_iq4_nl_impl`
//! (see [`crate::iq4_nl`]), then `d = -max_scale / 32`, block scales rounded to
//! `-32..=31` and the levels recomputed with the rounded scales.

use crate::iq4_nl::{block_scale, block_weights, pack_levels, sigma2, LEVELS_F32};
use crate::search::{fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int};
use llmq_formats::blocks::{le_u16, BlockIq4Xs};

/// Values per super-block.
pub const BLOCK_VALUES: usize = BlockIq4Xs::VALUES;
/// Bytes per super-block: f16 `d`, u16 `scales_h`, 4 bytes `scales_l`, 128 bytes `qs`.
pub const BLOCK_BYTES: usize = BlockIq4Xs::BYTES;

const SUB_BLOCKS: usize = BLOCK_VALUES / 32;

fn check_sizes(x: &[f32], imatrix: Option<&[f32]>, y: &[u8]) {
    assert_eq!(
        x.len() % BLOCK_VALUES,
        0,
        "row is not a whole number of IQ4_XS super-blocks"
    );
    assert_eq!(
        y.len(),
        x.len() / BLOCK_VALUES * BLOCK_BYTES,
        "IQ4_XS output size"
    );
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "imatrix needs one weight per row element");
    }
}

#[inline(always)]
fn quantize_super_block<const FAST: bool>(
    x: &[f32; BLOCK_VALUES],
    imatrix: Option<&[f32]>,
    y: &mut [u8; BLOCK_BYTES],
) {
    let sigma2 = sigma2(x);
    let mut weight = [0.0f32; 32];
    let mut scales = [0.0f32; SUB_BLOCKS];
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for (ib, scale) in scales.iter_mut().enumerate() {
        let xb: &[f32; 32] = x[32 * ib..32 * ib + 32].try_into().unwrap();
        let qw = imatrix.map(|w| &w[32 * ib..32 * ib + 32]);
        block_weights(xb, qw, sigma2, &mut weight);
        *scale = block_scale::<FAST>(xb, &weight);
        if scale.abs() > amax_scale {
            amax_scale = scale.abs();
            max_scale = *scale;
        }
    }
    let d = -max_scale / 32.0;
    y[BlockIq4Xs::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; SUB_BLOCKS / 2];
    let (_, qs) = y.split_at_mut(BlockIq4Xs::QS.start);
    for (ib, &scale) in scales.iter().enumerate() {
        let l = nearest_int(id * scale).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let xb: &[f32; 32] = x[32 * ib..32 * ib + 32].try_into().unwrap();
        pack_levels::<FAST>(xb, idl, &mut qs[16 * ib..16 * ib + 16]);
        let biased = (l + 32) as u8;
        scales_l[ib / 2] |= (biased & 0x0f) << (4 * (ib % 2));
        scales_h |= ((biased >> 4) as u16) << (2 * ib);
    }
    y[BlockIq4Xs::SCALES_H].copy_from_slice(&scales_h.to_le_bytes());
    y[BlockIq4Xs::SCALES_L].copy_from_slice(&scales_l);
}

#[inline(always)]
fn quantize_blocks<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    for (ibl, (xb, yb)) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        let qw = imatrix.map(|w| &w[ibl * BLOCK_VALUES..(ibl + 1) * BLOCK_VALUES]);
        quantize_super_block::<FAST>(xb.try_into().unwrap(), qw, yb.try_into().unwrap());
    }
}

/// Quantize one row, reference path (plain scalar code, as in C).
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    check_sizes(x, imatrix, y);
    quantize_blocks::<false>(x, imatrix, y);
}

/// Same bytes as [`quantize_row_ref`]; lane-parallel search (AVX2 when available).
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    check_sizes(x, imatrix, y);
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: AVX2 support was checked just above.
        unsafe { quantize_blocks_avx2(x, imatrix, y) };
        return;
    }
    quantize_blocks::<true>(x, imatrix, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_blocks::<true>(x, imatrix, y);
}

/// The 6-bit biased scale of block `ib` (0..8) from `scales_h` and `scales_l`.
#[inline(always)]
fn block_scale_bits(scales_h: u16, scales_l: &[u8], ib: usize) -> i32 {
    let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
    let high = (scales_h >> (2 * ib)) & 3;
    (low as i32) | ((high as i32) << 4)
}

/// Dequantize whole super-blocks.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "IQ4_XS dequant size"
    );
    for (xb, yb) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(xb, BlockIq4Xs::D));
        let scales_h = le_u16(xb, BlockIq4Xs::SCALES_H);
        for ib in 0..SUB_BLOCKS {
            let dl = d * (block_scale_bits(scales_h, &xb[BlockIq4Xs::SCALES_L], ib) - 32) as f32;
            for j in 0..16 {
                let q = xb[BlockIq4Xs::QS.start + 16 * ib + j];
                yb[32 * ib + j] = dl * LEVELS_F32[(q & 0x0f) as usize];
                yb[32 * ib + j + 16] = dl * LEVELS_F32[(q >> 4) as usize];
            }
        }
    }
}

/// Same values as [`dequantize_row_ref`], vectorised.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "IQ4_XS dequant size"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: AVX2 support was checked just above.
        unsafe { dequantize_blocks_avx2(x, y) };
        return;
    }
    dequantize_blocks(x, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_blocks_avx2(x: &[u8], y: &mut [f32]) {
    dequantize_blocks(x, y);
}

#[inline(always)]
fn dequantize_blocks(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(xb, BlockIq4Xs::D));
        let scales_h = le_u16(xb, BlockIq4Xs::SCALES_H);
        let qs = &xb[BlockIq4Xs::QS];
        for (ib, (out, q)) in yb.chunks_exact_mut(32).zip(qs.chunks_exact(16)).enumerate() {
            let dl = d * (block_scale_bits(scales_h, &xb[BlockIq4Xs::SCALES_L], ib) - 32) as f32;
            let (lo, hi) = out.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
                *l = dl * LEVELS_F32[(q & 0x0f) as usize];
                *h = dl * LEVELS_F32[(q >> 4) as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8_0::test_support::*;

    fn quantize_row_portable(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
        quantize_blocks::<true>(x, imatrix, y);
    }

    const FORMAT: Format = Format {
        name: "IQ4_XS",
        block_values: BLOCK_VALUES,
        block_bytes: BLOCK_BYTES,
        quant_ref: quantize_row_ref,
        quant: quantize_row,
        dequant_ref: dequantize_row_ref,
        dequant: dequantize_row,
        quant_portable: quantize_row_portable,
        dequant_portable: dequantize_blocks,
    };

    #[test]
    fn fast_path_matches_reference() {
        fast_matches_ref(&FORMAT);
    }

    #[test]
    fn zero_rows_and_extreme_inputs() {
        zeros_and_extremes(&FORMAT);
    }

    #[test]
    fn gaussian_round_trip_error() {
        // Relative RMS error on N(0, 1) rows: as IQ4_NL plus 6-bit block scales; measured 0.0768 (0.0809 with an imatrix).
        // The rows are seeded, so the bound (≈10% above the measurement) only trips on a
        // real change of the algorithm.
        let plain = relative_rms(&FORMAT, false);
        assert!(plain < 0.085, "relative rms {plain}");
        let weighted = relative_rms(&FORMAT, true);
        assert!(weighted < 0.089, "relative rms with imatrix {weighted}");
    }

    #[test]
    fn imatrix_lowers_weighted_error() {
        let (without, with) = weighted_error(&FORMAT);
        assert!(
            with < 0.95 * without,
            "weighted error {with} with imatrix vs {without} without"
        );
    }

    #[test]
    fn known_blocks() {
        // Zeros: d = -0.0 (0x8000), every block scale 0 stored as 32 (high bits 0b10),
        // every index 8, as llama.cpp.
        let mut y = [0u8; BLOCK_BYTES];
        quantize_row(&[0.0; 256], None, &mut y);
        assert_eq!(&y[..8], &[0x00, 0x80, 0xaa, 0xaa, 0, 0, 0, 0]);
        assert!(y[8..].iter().all(|&b| b == 0x88));
    }
}
