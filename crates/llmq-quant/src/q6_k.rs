//! Q6_K: 6.5625 bits per weight. Super-blocks of 256 values in 16 sub-blocks of 16, each
//! `x ≈ d·sc·(q − 32)` with 6-bit `q` and signed 8-bit sub-block scale `sc`.
//!
//! Block layout (`block_q6_K` in llama.cpp's `ggml/src/ggml-common.h`, 210 bytes):
//! `ql: [u8; 128]` (low nibbles), `qh: [u8; 64]` (top two bits), `scales: [i8; 16]`,
//! `d: f16`. In each half of 128 values, value `32·s + l` has its low nibble in
//! `ql[64·half + l + 32·(s%2)]` (high nibble of that byte when `s ≥ 2`) and its top bits
//! at bits `2s..2s+2` of `qh[32·half + l]`.
//!
//! Quantization follows `quantize_q6_K` of `ggml/src/ggml-quants.c` (llama-cpp-python
//! 0.3.36): `make_qx_quants` (x²-weighted, or imatrix-weighted when given) per
//! sub-block, then 8-bit scales rounded against the largest; the reference
//! (`quantize_row_q6_K_ref`) and weighted (`quantize_row_q6_K_impl`) paths differ only in
//! those weights.

use crate::search::{
    fp16_bits_to_fp32, fp32_to_fp16_bits, make_qx_quants, make_qx_quants_fast, nearest_int,
    GROUP_MAX_EPS,
};
use llmq_formats::blocks::{le_u16, BlockQ6K};

/// Values per super-block.
const BLOCK_VALUES: usize = BlockQ6K::VALUES;
/// Bytes per super-block.
const BLOCK_BYTES: usize = BlockQ6K::BYTES;

fn quantize_block<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let mut levels = [0i8; BLOCK_VALUES];
    let mut sub_scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let qw = imatrix.map(|w| &w[16 * j..16 * j + 16]);
        let ls = &mut levels[16 * j..16 * j + 16];
        let scale = if FAST {
            make_qx_quants_fast(32, xs, ls, 1, qw)
        } else {
            make_qx_quants(32, xs, ls, 1, qw)
        };
        sub_scales[j] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = fp32_to_fp16_bits(1.0 / iscale);
    let mut scales = [0i8; 16];
    for (s, &v) in scales.iter_mut().zip(&sub_scales) {
        *s = nearest_int(iscale * v).min(127) as i8;
    }
    let d_all = fp16_bits_to_fp32(d);
    for j in 0..16 {
        let dl = d_all * scales[j] as f32;
        if dl == 0.0 {
            continue;
        }
        for (l, &v) in levels[16 * j..16 * j + 16]
            .iter_mut()
            .zip(&x[16 * j..16 * j + 16])
        {
            *l = (nearest_int(v / dl).clamp(-32, 31) + 32) as i8;
        }
    }
    let levels = levels.map(|l| l as u8);
    let (ql, rest) = y.split_at_mut(BlockQ6K::QL.len());
    let qh = &mut rest[..BlockQ6K::QH.len()];
    for half in 0..2 {
        let lv = &levels[128 * half..128 * half + 128];
        let ql = &mut ql[64 * half..64 * half + 64];
        let qh = &mut qh[32 * half..32 * half + 32];
        for l in 0..32 {
            let (a, b, c, e) = (lv[l], lv[l + 32], lv[l + 64], lv[l + 96]);
            ql[l] = (a & 0xf) | ((c & 0xf) << 4);
            ql[l + 32] = (b & 0xf) | ((e & 0xf) << 4);
            qh[l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
    for (o, &s) in y[BlockQ6K::SCALES].iter_mut().zip(&scales) {
        *o = s as u8;
    }
    y[BlockQ6K::D].copy_from_slice(&d.to_le_bytes());
}

fn quantize_row_with<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let nb = x.len() / BLOCK_VALUES;
    assert_eq!(
        x.len(),
        nb * BLOCK_VALUES,
        "Q6_K row of {} values is not whole super-blocks",
        x.len()
    );
    assert_eq!(y.len(), nb * BLOCK_BYTES, "Q6_K output buffer size");
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "Q6_K importance weights: one per value");
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

/// Quantize a row (whole super-blocks) to Q6_K with the plain scalar searches.
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<false>(x, imatrix, y);
}

/// Quantize a row to Q6_K; same bytes as [`quantize_row_ref`], lane-parallel searches.
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_with::<true>(x, imatrix, y);
}

/// Dequantize Q6_K blocks (`dequantize_row_q6_K`), a literal reading.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q6_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(b, BlockQ6K::D));
        for half in 0..2 {
            let ql = &b[BlockQ6K::QL.start + 64 * half..][..64];
            let qh = &b[BlockQ6K::QH.start + 32 * half..][..32];
            let sc = &b[BlockQ6K::SCALES.start + 8 * half..][..8];
            let out = &mut out[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                out[l] = d * sc[is] as i8 as f32 * q1 as f32;
                out[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                out[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                out[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
            }
        }
    }
}

/// Dequantize Q6_K blocks; same values as [`dequantize_row_ref`], a quarter-block
/// (four sub-blocks sharing 16 `ql`/`qh` bytes) at a time over fixed-size arrays, with
/// the per-sub-block products `d·sc` hoisted.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "Q6_K dequantize sizes"
    );
    for (b, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let b: &[u8; BLOCK_BYTES] = b.try_into().unwrap();
        let d = fp16_bits_to_fp32(le_u16(b, BlockQ6K::D));
        for (half, out) in out.chunks_exact_mut(128).enumerate() {
            let out: &mut [f32; 128] = out.try_into().unwrap();
            for part in 0..2 {
                let off = 16 * part;
                let ql0: &[u8; 16] = b[BlockQ6K::QL.start + 64 * half + off..][..16]
                    .try_into()
                    .unwrap();
                let ql1: &[u8; 16] = b[BlockQ6K::QL.start + 64 * half + 32 + off..][..16]
                    .try_into()
                    .unwrap();
                let qh: &[u8; 16] = b[BlockQ6K::QH.start + 32 * half + off..][..16]
                    .try_into()
                    .unwrap();
                let sc =
                    |s: usize| d * b[BlockQ6K::SCALES.start + 8 * half + part + 2 * s] as i8 as f32;
                let (d0, d1, d2, d3) = (sc(0), sc(1), sc(2), sc(3));
                for l in 0..16 {
                    let q0 = ((ql0[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q1 = ((ql1[l] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q2 = ((ql0[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql1[l] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    out[off + l] = d0 * q0 as f32;
                    out[off + 32 + l] = d1 * q1 as f32;
                    out[off + 64 + l] = d2 * q2 as f32;
                    out[off + 96 + l] = d3 * q3 as f32;
                }
            }
        }
    }
}
