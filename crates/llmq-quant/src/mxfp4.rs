//! MXFP4 (OCP Microscaling v1.0, GGML type 39): blocks of 32 E2M1 values sharing one
//! E8M0 power-of-two scale. Layout `block_mxfp4` of llama.cpp's `ggml-common.h`
//! ([`BlockMxfp4`]): value `j` in the low nibble of `qs[j]`, value `j+16` in the high
//! nibble; value = `kvalues_mxfp4[nibble] · 2^(e − 128)` with the doubled E2M1 levels
//! [`E2M1_DOUBLED`].
//!
//! The quantizer is llama.cpp's `quantize_row_mxfp4_ref` (`ggml/src/ggml-quants.c`,
//! 0.3.36): `e = floor(log2(amax)) − 2 + 127` (0 for an all-zero block), then each value
//! takes the level nearest it, the first one on a tie. llama.cpp ignores importance
//! weights for this type and so does this module. A block whose `amax` is below `2^-125`
//! makes that exponent negative; C's `uint8_t` cast then wraps on x86 (as numpy's does
//! in gguf-py), and so does this one, except that a wrapped `0xFF` (llama.cpp's loader
//! refuses that exponent as NaN) becomes 0. Such blocks dequantize to zeros either way.

use llmq_formats::blocks::BlockMxfp4;
use llmq_formats::minifloat::E2M1_DOUBLED;

/// Values per block.
pub const BLOCK_VALUES: usize = BlockMxfp4::VALUES;
/// Bytes per block: the E8M0 byte and 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = BlockMxfp4::BYTES;

/// `GGML_E8M0_TO_FP32_HALF`: `2^(e − 128)`, the scale of the doubled levels.
#[inline]
pub fn e8m0_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000u32 << e)
    } else {
        f32::from_bits(((e - 1) as u32) << 23)
    }
}

/// The block exponent llama.cpp chooses for a block whose largest magnitude is `amax`.
#[inline]
pub fn block_exponent(amax: f32) -> u8 {
    if amax > 0.0 {
        let e = (amax.log2().floor() - 2.0 + 127.0) as i32 as u8;
        if e == 0xFF {
            0
        } else {
            e
        }
    } else {
        0
    }
}

/// `best_index_mxfp4`: the level nearest `x` at scale `d`, the first on a tie.
#[inline]
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (E2M1_DOUBLED[0] as f32 * d - x).abs();
    for (i, &k) in E2M1_DOUBLED.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

fn check_sizes(n_values: usize, n_bytes: usize) {
    assert_eq!(
        n_values % BLOCK_VALUES,
        0,
        "row is not a whole number of MXFP4 blocks"
    );
    assert_eq!(
        n_bytes,
        n_values / BLOCK_VALUES * BLOCK_BYTES,
        "MXFP4 output size"
    );
}

/// Quantize whole blocks (scalar reference). Importance weights are ignored, as in
/// llama.cpp.
pub fn quantize_row_ref(x: &[f32], _imatrix: Option<&[f32]>, y: &mut [u8]) {
    check_sizes(x.len(), y.len());
    for (xb, yb) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
    {
        let amax = xb
            .iter()
            .fold(0.0f32, |m, v| if m < v.abs() { v.abs() } else { m });
        let e = block_exponent(amax);
        let d = e8m0_half(e);
        yb[BlockMxfp4::E.start] = e;
        let qs = &mut yb[BlockMxfp4::QS];
        for j in 0..BLOCK_VALUES / 2 {
            qs[j] = best_index(xb[j], d) | (best_index(xb[j + BLOCK_VALUES / 2], d) << 4);
        }
    }
}

/// Quantize whole blocks: the reference (its cost is small next to reading the source).
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_ref(x, imatrix, y)
}

/// Dequantize whole blocks (scalar reference).
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    check_sizes(y.len(), x.len());
    for (xb, yb) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = e8m0_half(xb[BlockMxfp4::E.start]);
        let qs = &xb[BlockMxfp4::QS];
        for j in 0..BLOCK_VALUES / 2 {
            yb[j] = E2M1_DOUBLED[(qs[j] & 15) as usize] as f32 * d;
            yb[j + BLOCK_VALUES / 2] = E2M1_DOUBLED[(qs[j] >> 4) as usize] as f32 * d;
        }
    }
}

/// Dequantize whole blocks.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    dequantize_row_ref(x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_scale_is_a_power_of_two() {
        assert_eq!(e8m0_half(128), 1.0);
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(1), f32::from_bits(0x0040_0000));
        assert_eq!(e8m0_half(0), f32::from_bits(0x0020_0000));
    }

    #[test]
    fn a_block_round_trips_through_its_levels() {
        // amax 6 → e = floor(log2 6) − 2 + 127 = 127, d = 0.5: the E2M1 grid itself
        let x: Vec<f32> = (0..32).map(|i| E2M1_DOUBLED[i % 16] as f32 * 0.5).collect();
        let mut y = [0u8; BLOCK_BYTES];
        quantize_row_ref(&x, None, &mut y);
        assert_eq!(y[0], 127);
        let mut back = [0.0f32; 32];
        dequantize_row_ref(&y, &mut back);
        assert_eq!(back.to_vec(), x);
    }

    #[test]
    fn values_take_the_nearest_level() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 0.37).collect();
        let mut y = [0u8; BLOCK_BYTES];
        quantize_row_ref(&x, None, &mut y);
        let mut back = [0.0f32; 32];
        dequantize_row_ref(&y, &mut back);
        let d = e8m0_half(y[0]);
        for (v, b) in x.iter().zip(&back) {
            let best = E2M1_DOUBLED
                .iter()
                .map(|&k| (k as f32 * d - v).abs())
                .fold(f32::INFINITY, f32::min);
            assert_eq!((b - v).abs(), best, "{v}");
        }
        // all zeros: exponent 0, all codes 0
        let mut z = [0xAAu8; BLOCK_BYTES];
        quantize_row_ref(&[0.0; 32], None, &mut z);
        assert!(z.iter().all(|&b| b == 0));
    }
}
