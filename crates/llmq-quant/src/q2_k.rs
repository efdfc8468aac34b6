//! Q2_K: 2.625 bits per weight. Super-blocks of 256 values in 16 sub-blocks of 16, each
//! `x ≈ d·sc·q − dmin·m` with 2-bit `q` and 4-bit sub-block scale `sc` and min `m`.
//!
//! Block layout (`block_q2_K` in llama.cpp's `ggml/src/ggml-common.h`, 84 bytes):
//! `scales: [u8; 16]` (scale in the low nibble, min in the high nibble), `qs: [u8; 64]`
//! (see `pack_2bit`), `d: f16`, `dmin: f16` (little-endian).
//!
//! Quantization follows `quantize_q2_K` of `ggml/src/ggml-quants.c` (llama-cpp-python
//! 0.3.36): without importance weights `quantize_row_q2_K_ref` (`make_qkx2_quants`
//! minimising the |x|-weighted absolute error, scales and mins rounded against the
//! largest), with them `quantize_row_q2_K_impl` (`make_qkx3_quants`, then
//! `make_qp_quants` on the scales and mins).

use crate::search::{
    fp16_bits_to_fp32, fp32_to_fp16_bits, make_qkx2_quants, make_qkx2_quants_fast,
    make_qkx3_quants, make_qkx3_quants_fast, make_qp_quants, nearest_int,
};
use llmq_formats::blocks::{le_u16, BlockQ2K};

/// Values per super-block.
const BLOCK_VALUES: usize = BlockQ2K::VALUES;
/// Bytes per super-block.
const BLOCK_BYTES: usize = BlockQ2K::BYTES;

/// Pack 256 two-bit levels into 64 bytes as Q2_K and Q3_K store them: in each half of
/// 128 values, value `32·s + l` goes to bits `2s..2s+2` of byte `l` of that half's 32.
pub(crate) fn pack_2bit(levels: &[u8; BLOCK_VALUES], qs: &mut [u8]) {
    for half in 0..2 {
        let lv = &levels[128 * half..128 * half + 128];
        for l in 0..32 {
            qs[32 * half + l] = lv[l] | (lv[l + 32] << 2) | (lv[l + 64] << 4) | (lv[l + 96] << 6);
        }
    }
}

/// Recompute the levels of every sub-block whose rounded scale is nonzero against the
/// stored scale and min (both search strategies end this way).
fn requantize(
    x: &[f32],
    d_all: f32,
    dmin_all: f32,
    scales: &[u8; 16],
    levels: &mut [u8; BLOCK_VALUES],
) {
    for j in 0..16 {
        let d = d_all * (scales[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * (scales[j] >> 4) as f32;
        for (l, &v) in levels[16 * j..16 * j + 16]
            .iter_mut()
            .zip(&x[16 * j..16 * j + 16])
        {
            *l = nearest_int((v + dm) / d).clamp(0, 3) as u8;
        }
    }
}

/// `quantize_row_q2_K_ref` for one super-block: returns (d, dmin, scales, levels).
fn block_plain<const FAST: bool>(x: &[f32]) -> (u16, u16, [u8; 16], [u8; BLOCK_VALUES]) {
    let mut levels = [0u8; BLOCK_VALUES];
    let mut sub_scales = [0.0f32; 16];
    let mut sub_mins = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut weights = [0.0f32; 16];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        let ls = &mut levels[16 * j..16 * j + 16];
        let (scale, min) = if FAST {
            make_qkx2_quants_fast(3, xs, &weights, ls, -0.5, 0.1, 15, true)
        } else {
            make_qkx2_quants(3, xs, &weights, ls, -0.5, 0.1, 15, true)
        };
        sub_scales[j] = scale;
        sub_mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let mut scales = [0u8; 16];
    let mut d = fp32_to_fp16_bits(0.0);
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (s, &v) in scales.iter_mut().zip(&sub_scales) {
            *s = nearest_int(iscale * v) as u8;
        }
        d = fp32_to_fp16_bits(max_scale / 15.0);
    }
    let mut dmin = fp32_to_fp16_bits(0.0);
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (s, &v) in scales.iter_mut().zip(&sub_mins) {
            *s |= (nearest_int(iscale * v) << 4) as u8;
        }
        dmin = fp32_to_fp16_bits(max_min / 15.0);
    }
    requantize(
        x,
        fp16_bits_to_fp32(d),
        fp16_bits_to_fp32(dmin),
        &scales,
        &mut levels,
    );
    (d, dmin, scales, levels)
}

/// `quantize_row_q2_K_impl` for one super-block: returns (d, dmin, scales, levels).
fn block_weighted<const FAST: bool>(
    x: &[f32],
    imatrix: &[f32],
) -> (u16, u16, [u8; 16], [u8; BLOCK_VALUES]) {
    let mut sum_x2 = 0.0f32;
    for &v in &x[..BLOCK_VALUES] {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / BLOCK_VALUES as f32;
    let mut levels = [0u8; BLOCK_VALUES];
    let mut sub_scales = [0.0f32; 16];
    let mut sub_mins = [0.0f32; 16];
    let mut sub_weight = [0.0f32; 16];
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let qw = &imatrix[16 * j..16 * j + 16];
        let mut weights = [0.0f32; 16];
        for ((w, &q), &v) in weights.iter_mut().zip(qw).zip(xs) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        for &w in &weights {
            sub_weight[j] += w;
        }
        let ls = &mut levels[16 * j..16 * j + 16];
        (sub_scales[j], sub_mins[j]) = if FAST {
            make_qkx3_quants_fast(3, xs, Some(&weights), ls, -0.9, 0.05, 36, false)
        } else {
            make_qkx3_quants(3, xs, Some(&weights), ls, -0.9, 0.05, 36, false)
        };
    }
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp_quants(15, &sub_scales, &mut ls, &sub_weight);
    let mm = make_qp_quants(15, &sub_mins, &mut lm, &sub_weight);
    let d = fp32_to_fp16_bits(dm);
    let dmin = fp32_to_fp16_bits(mm);
    let mut scales = [0u8; 16];
    for j in 0..16 {
        scales[j] = ls[j] | ((lm[j] as u32) << 4) as u8;
    }
    requantize(
        x,
        fp16_bits_to_fp32(d),
        fp16_bits_to_fp32(dmin),
        &scales,
        &mut levels,
    );
    (d, dmin, scales, levels)
}

fn quantize_row_with<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let nb = x.len() / BLOCK_VALUES;
    assert_eq!(
        x.len(),
        nb * BLOCK_VALUES,
        "Q2_K row of {} values is not whole super-blocks",
        x.len()
    );
    assert_eq!(y.len(), nb * BLOCK_BYTES, "Q2_K output buffer size");
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "Q2_K importance weights: one per value");
    }
    for (i, (xb, yb)) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        let (d, dmin, scales, levels) = match imatrix {
            None => block_plain::<FAST>(xb),
            Some(w) => block_weighted::<FAST>(xb, &w[i * BLOCK_VALUES..(i + 1) * BLOCK_VALUES]),
        };
        yb[BlockQ2K::SCALES].copy_from_slice(&scales);
        pack_2bit(&levels, &mut yb[BlockQ2K::QS]);
        yb[BlockQ2K::D].copy_from_slice(&d.to_le_bytes());
        yb[BlockQ2K::DMIN].copy_from_slice(&dmin.to_le_bytes());
    }
}

/// Quantize a row (whole super-blocks) to Q2_K with the plain scalar searches.
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<false>(x, imatrix, y);
}

/// Quantize a row to Q2_K; same bytes as [`quantize_row_ref`], lane-parallel searches.
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<true>(x, imatrix, y);
}

/// Dequantize Q2_K blocks (`dequantize_row_q2_K`), a literal reading.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q2_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let scales = &b[BlockQ2K::SCALES];
        let d = fp16_bits_to_fp32(le_u16(b, BlockQ2K::D));
        let min = fp16_bits_to_fp32(le_u16(b, BlockQ2K::DMIN));
        let mut o = 0;
        let mut is = 0;
        for half in 0..2 {
            let q = &b[BlockQ2K::QS.start + 32 * half..][..32];
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let sc = scales[is];
                    is += 1;
                    let dl = d * (sc & 0xf) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for &v in &q[16 * part..16 * part + 16] {
                        out[o] = dl * ((v >> shift) & 3) as f32 - ml;
                        o += 1;
                    }
                }
            }
        }
    }
}

/// Dequantize Q2_K blocks; same values as [`dequantize_row_ref`], over fixed-size
/// slices (16 values per sub-block) so the inner loop vectorises.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q2_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let b: &[u8; BLOCK_BYTES] = b.try_into().unwrap();
        let d = fp16_bits_to_fp32(le_u16(b, BlockQ2K::D));
        let min = fp16_bits_to_fp32(le_u16(b, BlockQ2K::DMIN));
        for (j, out) in out.chunks_exact_mut(16).enumerate() {
            // Sub-block j: half j/8, bit pair (j/2)%4, bytes 16·(j%2)..+16 of that half.
            let sc = b[j];
            let dl = d * (sc & 0xf) as f32;
            let ml = min * (sc >> 4) as f32;
            let start = 16 + 32 * (j / 8) + 16 * (j % 2);
            let q: &[u8; 16] = b[start..start + 16].try_into().unwrap();
            let shift = 2 * ((j / 2) % 4) as u32;
            for l in 0..16 {
                out[l] = dl * ((q[l] >> shift) & 3) as f32 - ml;
            }
        }
    }
}
