//! Q3_K: 3.4375 bits per weight. Super-blocks of 256 values in 16 sub-blocks of 16, each
//! `x ≈ d·(sc − 32)·(q − 4)` with 3-bit `q` and 6-bit sub-block scale `sc`.
//!
//! Block layout (`block_q3_K` in llama.cpp's `ggml/src/ggml-common.h`, 110 bytes):
//! `hmask: [u8; 32]` (bit 2 of value `j` is bit `j/32` of `hmask[j%32]`), `qs: [u8; 64]`
//! (low two bits, packed as Q2_K's), `scales: [u8; 12]` (see `pack_scales`), `d: f16`.
//!
//! Quantization follows `quantize_q3_K` of `ggml/src/ggml-quants.c` (llama-cpp-python
//! 0.3.36): without importance weights `quantize_row_q3_K_ref` (`make_q3_quants` per
//! sub-block, 6-bit scales rounded against the largest), with them
//! `quantize_row_q3_K_impl` (`make_qx_quants` with weights for the values, then again
//! for the 6-bit scales).

use crate::q2_k::pack_2bit;
use crate::search::{
    fp16_bits_to_fp32, fp32_to_fp16_bits, make_q3_quants, make_qx_quants, make_qx_quants_fast,
    nearest_int,
};
use llmq_formats::blocks::{le_u16, BlockQ3K};

/// Values per super-block.
const BLOCK_VALUES: usize = BlockQ3K::VALUES;
/// Bytes per super-block.
const BLOCK_BYTES: usize = BlockQ3K::BYTES;

/// Pack sixteen 6-bit scales (already offset by 32, so `0..64`) into 12 bytes: low
/// nibbles of scales 0..8 in the low nibbles of bytes 0..8, of scales 8..16 in their high
/// nibbles; the top two bits of scale `j` in bits `2·(j/4)..` of byte `8 + j%4`.
fn pack_scales(ls: &[i32; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            s[j] = (l & 0xf) as u8;
        } else {
            s[j - 8] |= ((l & 0xf) << 4) as u8;
        }
        s[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
    }
    s
}

/// The signed scale of sub-block `j` (`-32..32`) from the 12-byte packing.
#[inline(always)]
fn unpack_scale(j: usize, s: &[u8]) -> i32 {
    let low = if j < 8 { s[j] & 0xf } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Requantize against the stored scales (sub-blocks with a zero scale keep the search's
/// levels), then write hmask, qs, scales and d.
fn finish_block(
    x: &[f32],
    d: u16,
    scales: [u8; 12],
    levels: &mut [u8; BLOCK_VALUES],
    y: &mut [u8],
) {
    let d_all = fp16_bits_to_fp32(d);
    for j in 0..16 {
        let dl = d_all * unpack_scale(j, &scales) as f32;
        if dl == 0.0 {
            continue;
        }
        for (l, &v) in levels[16 * j..16 * j + 16]
            .iter_mut()
            .zip(&x[16 * j..16 * j + 16])
        {
            *l = (nearest_int(v / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    let hmask = &mut y[BlockQ3K::HMASK];
    hmask.fill(0);
    for (j, l) in levels.iter_mut().enumerate() {
        if *l > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *l -= 4;
        }
    }
    pack_2bit(levels, &mut y[BlockQ3K::QS]);
    y[BlockQ3K::SCALES].copy_from_slice(&scales);
    y[BlockQ3K::D].copy_from_slice(&d.to_le_bytes());
}

/// `quantize_row_q3_K_ref` for one super-block.
fn block_plain(x: &[f32], y: &mut [u8]) {
    let mut levels = [0i8; BLOCK_VALUES];
    let mut sub_scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for j in 0..16 {
        sub_scales[j] = make_q3_quants(
            4,
            &x[16 * j..16 * j + 16],
            &mut levels[16 * j..16 * j + 16],
            true,
        );
        let scale = sub_scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = sub_scales[j];
        }
    }
    let mut scales = [0u8; 12];
    let mut d = fp32_to_fp16_bits(0.0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        let mut ls = [0i32; 16];
        for (l, &v) in ls.iter_mut().zip(&sub_scales) {
            // C stores the rounded value in an int8_t before clamping.
            *l = (nearest_int(iscale * v) as i8 as i32).clamp(-32, 31) + 32;
        }
        scales = pack_scales(&ls);
        d = fp32_to_fp16_bits(1.0 / iscale);
    }
    let mut levels = levels.map(|l| l as u8);
    finish_block(x, d, scales, &mut levels, y);
}

/// `quantize_row_q3_K_impl` for one super-block.
fn block_weighted<const FAST: bool>(x: &[f32], imatrix: &[f32], y: &mut [u8]) {
    let mut sum_x2 = 0.0f32;
    for &v in &x[..BLOCK_VALUES] {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / BLOCK_VALUES as f32;
    let mut levels = [0i8; BLOCK_VALUES];
    let mut sub_scales = [0.0f32; 16];
    let mut sub_weight = [0.0f32; 16];
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let qw = &imatrix[16 * j..16 * j + 16];
        let mut weights = [0.0f32; 16];
        for ((w, &q), &v) in weights.iter_mut().zip(qw).zip(xs) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0.0f32;
        for &w in &weights {
            sumw += w;
        }
        sub_weight[j] = sumw;
        let ls = &mut levels[16 * j..16 * j + 16];
        sub_scales[j] = if FAST {
            make_qx_quants_fast(4, xs, ls, 1, Some(&weights))
        } else {
            make_qx_quants(4, xs, ls, 1, Some(&weights))
        };
    }
    let mut scale_levels = [0i8; 16];
    let d_block = if FAST {
        make_qx_quants_fast(32, &sub_scales, &mut scale_levels, 1, Some(&sub_weight))
    } else {
        make_qx_quants(32, &sub_scales, &mut scale_levels, 1, Some(&sub_weight))
    };
    let scales = pack_scales(&scale_levels.map(|l| l as i32));
    let mut levels = levels.map(|l| l as u8);
    finish_block(x, fp32_to_fp16_bits(d_block), scales, &mut levels, y);
}

fn quantize_row_with<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let nb = x.len() / BLOCK_VALUES;
    assert_eq!(
        x.len(),
        nb * BLOCK_VALUES,
        "Q3_K row of {} values is not whole super-blocks",
        x.len()
    );
    assert_eq!(y.len(), nb * BLOCK_BYTES, "Q3_K output buffer size");
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "Q3_K importance weights: one per value");
    }
    for (i, (xb, yb)) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        match imatrix {
            None => block_plain(xb, yb),
            Some(w) => block_weighted::<FAST>(xb, &w[i * BLOCK_VALUES..(i + 1) * BLOCK_VALUES], yb),
        }
    }
}

/// Quantize a row (whole super-blocks) to Q3_K with the plain scalar searches.
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<false>(x, imatrix, y);
}

/// Quantize a row to Q3_K; same bytes as [`quantize_row_ref`]. Only the weighted path has
/// a faster search: the unweighted one (`make_q3_quants`) is an inherently sequential
/// greedy refinement and is shared with the reference.
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<true>(x, imatrix, y);
}

/// Dequantize Q3_K blocks (`dequantize_row_q3_K`), a literal reading.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q3_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let hm = &b[BlockQ3K::HMASK];
        let scales = &b[BlockQ3K::SCALES];
        let d_all = fp16_bits_to_fp32(le_u16(b, BlockQ3K::D));
        let mut o = 0;
        let mut is = 0;
        let mut m = 1u8;
        for half in 0..2 {
            let q = &b[BlockQ3K::QS.start + 32 * half..][..32];
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let dl = d_all * unpack_scale(is, scales) as f32;
                    is += 1;
                    for l in 16 * part..16 * part + 16 {
                        let low = ((q[l] >> shift) & 3) as i32;
                        let minus = if hm[l] & m != 0 { 0 } else { 4 };
                        out[o] = dl * (low - minus) as f32;
                        o += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

/// Dequantize Q3_K blocks; same values as [`dequantize_row_ref`], sub-block by sub-block
/// over fixed-size slices with branch-free bit extraction.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q3_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let b: &[u8; BLOCK_BYTES] = b.try_into().unwrap();
        let d_all = fp16_bits_to_fp32(le_u16(b, BlockQ3K::D));
        for (j, out) in out.chunks_exact_mut(16).enumerate() {
            let dl = d_all * unpack_scale(j, &b[BlockQ3K::SCALES]) as f32;
            let pair = (j / 2) % 4;
            let hbit = (j / 2) as u32;
            let start = 16 * (j % 2);
            let q: &[u8; 16] = b[BlockQ3K::QS.start + 32 * (j / 8) + start..][..16]
                .try_into()
                .unwrap();
            let hm: &[u8; 16] = b[start..start + 16].try_into().unwrap();
            for l in 0..16 {
                let low = ((q[l] >> (2 * pair)) & 3) as i32;
                let high = ((hm[l] >> hbit) & 1) as i32;
                out[l] = dl * (low - 4 + 4 * high) as f32;
            }
        }
    }
}
