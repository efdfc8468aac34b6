//! Q4_1: blocks of 32 values stored as f16 scale `d`, f16 minimum `m` and 32 4-bit
//! levels `q` (value `j` in the low nibble of byte `j`, value `j+16` in its high
//! nibble), value = `d * q + m`.
//!
//! Implements llama.cpp's `quantize_q4_1` from `ggml/src/ggml-quants.c`: without
//! importance weights `quantize_row_q4_1_ref` (`m = min`, `d = (max - min) / 15`), with
//! weights `quantize_row_q4_1_impl` (a weighted `make_qkx3_quants` search per block);
//! and `dequantize_row_q4_1`. Block layout `block_q4_1` in `ggml/src/ggml-common.h`.

#[cfg(target_arch = "x86_64")]
use crate::q4_0::avx2;
use crate::q4_0::c_trunc;
use crate::search::{
    fp16_bits_to_fp32, fp32_to_fp16_bits, make_qkx3_quants, make_qkx3_quants_fast,
};
use llmq_formats::blocks::{le_u16, BlockQ4_1};

/// Values per block.
pub const BLOCK_VALUES: usize = BlockQ4_1::VALUES;
/// Bytes per block: f16 scale, f16 minimum, 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = BlockQ4_1::BYTES;

fn check_sizes(x: &[f32], imatrix: Option<&[f32]>, y: &[u8]) {
    assert_eq!(
        x.len() % BLOCK_VALUES,
        0,
        "row is not a whole number of Q4_1 blocks"
    );
    assert_eq!(
        y.len(),
        x.len() / BLOCK_VALUES * BLOCK_BYTES,
        "Q4_1 output size"
    );
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "imatrix needs one weight per row element");
    }
}

/// Quantize one row, reference path (plain scalar code, as in C).
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    check_sizes(x, imatrix, y);
    match imatrix {
        Some(w) => quantize_row_weighted::<false>(x, w, y),
        None => {
            for (xb, yb) in x
                .chunks_exact(BLOCK_VALUES)
                .zip(y.chunks_exact_mut(BLOCK_BYTES))
            {
                let mut min = f32::MAX;
                let mut max = -f32::MAX;
                for &v in xb {
                    if v < min {
                        min = v;
                    }
                    if v > max {
                        max = v;
                    }
                }
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                yb[BlockQ4_1::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
                yb[BlockQ4_1::M].copy_from_slice(&fp32_to_fp16_bits(min).to_le_bytes());
                for j in 0..BLOCK_VALUES / 2 {
                    let lo = (c_trunc((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
                    let hi = (c_trunc((xb[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
                    yb[BlockQ4_1::QS.start + j] = lo | (hi << 4);
                }
            }
        }
    }
}

/// Same bytes as [`quantize_row_ref`] for finite inputs. The unweighted path runs
/// AVX2 block kernels when the CPU has them (vectorisable scalar code otherwise); the
/// weighted path uses the lane-parallel `make_qkx3_quants_fast` search.
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    check_sizes(x, imatrix, y);
    if let Some(w) = imatrix {
        quantize_row_weighted::<true>(x, w, y);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: AVX2 support was checked just above.
        unsafe { quantize_blocks_avx2(x, y) };
        return;
    }
    quantize_blocks(x, y);
}

/// `quantize_row_q4_1_impl`: per-element weights `imatrix · sqrt(σ² + x²)` with σ² the
/// row's mean square, then a weighted affine search per block.
fn quantize_row_weighted<const FAST: bool>(x: &[f32], imatrix: &[f32], y: &mut [u8]) {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / x.len() as f32;
    let mut weight = [0.0f32; BLOCK_VALUES];
    let mut levels = [0u8; BLOCK_VALUES];
    for ((xb, qw), yb) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(imatrix.chunks_exact(BLOCK_VALUES))
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
    {
        for ((w, &q), &v) in weight.iter_mut().zip(qw).zip(xb) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let (d, min_offset) = if FAST {
            make_qkx3_quants_fast(15, xb, Some(&weight), &mut levels, -0.9, 0.05, 36, false)
        } else {
            make_qkx3_quants(15, xb, Some(&weight), &mut levels, -0.9, 0.05, 36, false)
        };
        yb[BlockQ4_1::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
        yb[BlockQ4_1::M].copy_from_slice(&fp32_to_fp16_bits(-min_offset).to_le_bytes());
        for j in 0..BLOCK_VALUES / 2 {
            yb[BlockQ4_1::QS.start + j] = levels[j] | (levels[j + 16] << 4);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
    {
        let xb: &[f32; BLOCK_VALUES] = xb.try_into().unwrap();
        let yb: &mut [u8; BLOCK_BYTES] = yb.try_into().unwrap();
        let v = avx2::load(xb);
        let (min, max) = avx2::min_max(xb, &v);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            // Subnormal scale: C's out-of-range conversions, done by the scalar code.
            quantize_block(xb, yb);
            continue;
        }
        yb[BlockQ4_1::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
        yb[BlockQ4_1::M].copy_from_slice(&fp32_to_fp16_bits(min).to_le_bytes());
        let levels = avx2::truncate_to_levels(&avx2::shift_scale_half(&v, min, id), 15);
        avx2::store_nibbles(levels, (&mut yb[BlockQ4_1::QS]).try_into().unwrap());
    }
}

#[inline(always)]
fn quantize_blocks(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block(xb.try_into().unwrap(), yb.try_into().unwrap());
    }
}

#[inline(always)]
fn quantize_block(xb: &[f32; BLOCK_VALUES], yb: &mut [u8; BLOCK_BYTES]) {
    let (min, max) = min_max(xb);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    yb[BlockQ4_1::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
    yb[BlockQ4_1::M].copy_from_slice(&fp32_to_fp16_bits(min).to_le_bytes());
    let mut levels = [0u8; BLOCK_VALUES];
    for (l, &v) in levels.iter_mut().zip(xb) {
        *l = (c_trunc((v - min) * id + 0.5) as i8).min(15) as u8;
    }
    for j in 0..BLOCK_VALUES / 2 {
        yb[BlockQ4_1::QS.start + j] = levels[j] | (levels[j + 16] << 4);
    }
}

/// Minimum and maximum of a block, lane-wise then reduced, each the first element
/// holding that value (as the reference's sequential scan finds them).
#[inline(always)]
pub(crate) fn min_max(xb: &[f32; BLOCK_VALUES]) -> (f32, f32) {
    let mut lane_min = [f32::MAX; 8];
    let mut lane_max = [-f32::MAX; 8];
    for chunk in xb.chunks_exact(8) {
        for ((lo, hi), &v) in lane_min.iter_mut().zip(lane_max.iter_mut()).zip(chunk) {
            *lo = if v < *lo { v } else { *lo };
            *hi = if v > *hi { v } else { *hi };
        }
    }
    let mut min = lane_min
        .iter()
        .fold(f32::MAX, |m, &v| if v < m { v } else { m });
    let mut max = lane_max
        .iter()
        .fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    // A sequential strict scan keeps the first element equal to the extreme; that only
    // shows for ±0 (equal, but stored with different signs).
    if min == 0.0 {
        min = *xb.iter().find(|&&v| v == 0.0).unwrap_or(&min);
    }
    if max == 0.0 {
        max = *xb.iter().find(|&&v| v == 0.0).unwrap_or(&max);
    }
    (min, max)
}

/// Dequantize whole blocks: `d * q + m`.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q4_1 dequant size"
    );
    for (xb, yb) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(xb, BlockQ4_1::D));
        let m = fp16_bits_to_fp32(le_u16(xb, BlockQ4_1::M));
        for j in 0..BLOCK_VALUES / 2 {
            let q = xb[BlockQ4_1::QS.start + j];
            yb[j] = (q & 0x0f) as f32 * d + m;
            yb[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

/// Same values as [`dequantize_row_ref`], vectorised.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q4_1 dequant size"
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
        let xb: &[u8; BLOCK_BYTES] = xb.try_into().unwrap();
        let yb: &mut [f32; BLOCK_VALUES] = yb.try_into().unwrap();
        let d = fp16_bits_to_fp32(le_u16(xb, BlockQ4_1::D));
        let m = fp16_bits_to_fp32(le_u16(xb, BlockQ4_1::M));
        let (lo, hi) = yb.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&xb[BlockQ4_1::QS]) {
            *l = (q & 0x0f) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8_0::test_support::*;

    fn quantize_row_portable(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
        match imatrix {
            Some(_) => quantize_row(x, imatrix, y),
            None => quantize_blocks(x, y),
        }
    }

    const FORMAT: Format = Format {
        name: "Q4_1",
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
        // Relative RMS error on N(0, 1) rows: step Δ = (max − min)/15 with a range ≈ 4.1σ gives Δ/√12 ≈ 0.079σ; measured
        // 0.0778 (0.0769 with an imatrix).
        // The rows are seeded, so the bound (≈10% above the measurement) only trips on a
        // real change of the algorithm.
        let plain = relative_rms(&FORMAT, false);
        assert!(plain < 0.086, "relative rms {plain}");
        let weighted = relative_rms(&FORMAT, true);
        assert!(weighted < 0.086, "relative rms with imatrix {weighted}");
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
        // Zeros: d = 0, m = 0, levels 0.
        let mut y = [0xffu8; BLOCK_BYTES];
        quantize_row(&[0.0; 32], None, &mut y);
        assert!(y.iter().all(|&b| b == 0));
        // 1..=16 twice: min 1, d = 1; value v ↦ level v − 1.
        let x: Vec<f32> = (0..32).map(|j| (j % 16 + 1) as f32).collect();
        quantize_row(&x, None, &mut y);
        assert_eq!(&y[..4], &[0x00, 0x3c, 0x00, 0x3c]);
        for j in 0..16 {
            assert_eq!(y[4 + j], (j as u8) | ((j as u8) << 4), "byte {j}");
        }
    }
}
