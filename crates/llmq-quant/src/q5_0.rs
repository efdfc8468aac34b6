//! Q5_0: blocks of 32 values stored as one f16 scale `d`, the fifth bits of the 32
//! levels (`qh`, a little-endian u32, bit `j` for value `j`) and their low 4 bits (value
//! `j` in the low nibble of byte `j`, value `j+16` in its high nibble); value =
//! `d * (q - 16)`.
//!
//! Implements llama.cpp's `quantize_q5_0` from `ggml/src/ggml-quants.c`: without
//! importance weights `quantize_row_q5_0_ref` (the value of largest magnitude maps to
//! level 0, `d = max / -16`), with weights `quantize_row_q5_0_impl` (a weighted
//! `make_qx_quants` search per block); and `dequantize_row_q5_0`. Block layout
//! `block_q5_0` in `ggml/src/ggml-common.h`.

#[cfg(target_arch = "x86_64")]
use crate::q4_0::avx2;
use crate::q4_0::{c_trunc, first_absmax_value};
use crate::search::{fp16_bits_to_fp32, fp32_to_fp16_bits, make_qx_quants, make_qx_quants_fast};
use llmq_formats::blocks::{le_u16, le_u32, BlockQ5_0};

/// Values per block.
pub const BLOCK_VALUES: usize = BlockQ5_0::VALUES;
/// Bytes per block: f16 scale + 4 bytes of high bits + 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = BlockQ5_0::BYTES;

fn check_sizes(x: &[f32], imatrix: Option<&[f32]>, y: &[u8]) {
    assert_eq!(
        x.len() % BLOCK_VALUES,
        0,
        "row is not a whole number of Q5_0 blocks"
    );
    assert_eq!(
        y.len(),
        x.len() / BLOCK_VALUES * BLOCK_BYTES,
        "Q5_0 output size"
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
                let mut amax = 0.0f32;
                let mut max = 0.0f32;
                for &v in xb {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -16.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                yb[BlockQ5_0::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
                let mut qh = 0u32;
                for j in 0..BLOCK_VALUES / 2 {
                    let lo = (c_trunc(xb[j] * id + 16.5) as i8).min(31) as u8;
                    let hi = (c_trunc(xb[j + 16] * id + 16.5) as i8).min(31) as u8;
                    yb[BlockQ5_0::QS.start + j] = (lo & 0x0f) | ((hi & 0x0f) << 4);
                    qh |= ((lo as u32 & 0x10) >> 4) << j;
                    qh |= ((hi as u32 & 0x10) >> 4) << (j + 16);
                }
                yb[BlockQ5_0::QH].copy_from_slice(&qh.to_le_bytes());
            }
        }
    }
}

/// Same bytes as [`quantize_row_ref`] for finite inputs. The unweighted path runs
/// AVX2 block kernels when the CPU has them (vectorisable scalar code otherwise); the
/// weighted path uses the lane-parallel `make_qx_quants_fast` search.
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

/// `quantize_row_q5_0_impl`: per-element weights `imatrix · sqrt(σ² + x²)` with σ² the
/// row's mean square, then a weighted scale search per block.
fn quantize_row_weighted<const FAST: bool>(x: &[f32], imatrix: &[f32], y: &mut [u8]) {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / x.len() as f32;
    let mut weight = [0.0f32; BLOCK_VALUES];
    let mut levels = [0i8; BLOCK_VALUES];
    for ((xb, qw), yb) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(imatrix.chunks_exact(BLOCK_VALUES))
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
    {
        for ((w, &q), &v) in weight.iter_mut().zip(qw).zip(xb) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let d = if FAST {
            make_qx_quants_fast(16, xb, &mut levels, 1, Some(&weight))
        } else {
            make_qx_quants(16, xb, &mut levels, 1, Some(&weight))
        };
        yb[BlockQ5_0::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
        let mut qh = 0u32;
        for j in 0..BLOCK_VALUES / 2 {
            let lo = levels[j] as u8;
            let hi = levels[j + 16] as u8;
            yb[BlockQ5_0::QS.start + j] = (lo & 0x0f) | ((hi & 0x0f) << 4);
            qh |= ((lo as u32 & 0x10) >> 4) << j;
            qh |= ((hi as u32 & 0x10) >> 4) << (j + 16);
        }
        yb[BlockQ5_0::QH].copy_from_slice(&qh.to_le_bytes());
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
        let max = avx2::first_absmax_value(xb, &v);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            // Subnormal scale: C's out-of-range conversions, done by the scalar code.
            quantize_block(xb, yb);
            continue;
        }
        yb[BlockQ5_0::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
        let levels = avx2::truncate_to_levels(&avx2::scale_offset(&v, id, 16.5), 31);
        yb[BlockQ5_0::QH].copy_from_slice(&avx2::fifth_bits(levels).to_le_bytes());
        avx2::store_nibbles(levels, (&mut yb[BlockQ5_0::QS]).try_into().unwrap());
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
    let max = first_absmax_value(xb);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    yb[BlockQ5_0::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
    let mut levels = [0u8; BLOCK_VALUES];
    for (l, &v) in levels.iter_mut().zip(xb) {
        *l = (c_trunc(v * id + 16.5) as i8).min(31) as u8;
    }
    let mut qh = 0u32;
    for (j, &l) in levels.iter().enumerate() {
        qh |= ((l as u32) >> 4) << j;
    }
    yb[BlockQ5_0::QH].copy_from_slice(&qh.to_le_bytes());
    for j in 0..BLOCK_VALUES / 2 {
        yb[BlockQ5_0::QS.start + j] = (levels[j] & 0x0f) | ((levels[j + 16] & 0x0f) << 4);
    }
}

/// Dequantize whole blocks: `d * (q - 16)`.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q5_0 dequant size"
    );
    for (xb, yb) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(xb, BlockQ5_0::D));
        let qh = le_u32(xb, BlockQ5_0::QH);
        for j in 0..BLOCK_VALUES / 2 {
            let q = xb[BlockQ5_0::QS.start + j];
            let high_lo = ((qh >> j) << 4) & 0x10;
            let high_hi = (qh >> (j + 12)) & 0x10;
            yb[j] = (((q & 0x0f) as u32 | high_lo) as i32 - 16) as f32 * d;
            yb[j + 16] = (((q >> 4) as u32 | high_hi) as i32 - 16) as f32 * d;
        }
    }
}

/// Same values as [`dequantize_row_ref`], vectorised.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q5_0 dequant size"
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
        let d = fp16_bits_to_fp32(le_u16(xb, BlockQ5_0::D));
        let qh = le_u32(xb, BlockQ5_0::QH);
        let mut levels = [0i32; BLOCK_VALUES];
        for (j, &q) in xb[BlockQ5_0::QS].iter().enumerate() {
            levels[j] = (q & 0x0f) as i32;
            levels[j + 16] = (q >> 4) as i32;
        }
        for (j, (out, &l)) in yb.iter_mut().zip(&levels).enumerate() {
            let high = ((qh >> j) & 1) as i32;
            *out = ((l | (high << 4)) - 16) as f32 * d;
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
        name: "Q5_0",
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
        // Relative RMS error on N(0, 1) rows: step Δ = amax/16 gives Δ/√12 ≈ 0.038σ plus clipping at +15Δ; measured 0.0429
        // (0.0432 with an imatrix).
        // The rows are seeded, so the bound (≈10% above the measurement) only trips on a
        // real change of the algorithm.
        let plain = relative_rms(&FORMAT, false);
        assert!(plain < 0.048, "relative rms {plain}");
        let weighted = relative_rms(&FORMAT, true);
        assert!(weighted < 0.048, "relative rms with imatrix {weighted}");
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
        // Zeros: d = -0.0 (0x8000, as llama.cpp), every level 16 (fifth bit set).
        let mut y = [0u8; BLOCK_BYTES];
        quantize_row(&[0.0; 32], None, &mut y);
        assert_eq!(&y[..6], &[0x00, 0x80, 0xff, 0xff, 0xff, 0xff]);
        assert!(y[6..].iter().all(|&b| b == 0));
        // max = -16 → d = 1; value v ↦ level v + 16: values −16..=15 give levels 0..=31.
        let x: Vec<f32> = (0..32).map(|j| j as f32 - 16.0).collect();
        quantize_row(&x, None, &mut y);
        assert_eq!(&y[..2], &[0x00, 0x3c]);
        assert_eq!(&y[2..6], &0xffff_0000u32.to_le_bytes());
        for j in 0..16 {
            assert_eq!(y[6 + j], (j as u8) | ((j as u8) << 4), "byte {j}");
        }
    }
}
