//! Plain float "quantizers": F32 copy, F16 and BF16 with round-to-nearest-even
//! (as `ggml_fp32_to_fp16` / `ggml_fp32_to_bf16`, which also keep NaN a NaN).

use half::{bf16, f16};

pub fn quantize_row_f32(x: &[f32], _w: Option<&[f32]>, y: &mut [u8]) {
    for (v, o) in x.iter().zip(y.chunks_exact_mut(4)) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}
pub fn dequantize_row_f32(x: &[u8], y: &mut [f32]) {
    for (b, o) in x.chunks_exact(4).zip(y.iter_mut()) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}
pub fn quantize_row_f16(x: &[f32], _w: Option<&[f32]>, y: &mut [u8]) {
    for (v, o) in x.iter().zip(y.chunks_exact_mut(2)) {
        o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
    }
}
pub fn dequantize_row_f16(x: &[u8], y: &mut [f32]) {
    for (b, o) in x.chunks_exact(2).zip(y.iter_mut()) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}
pub fn quantize_row_bf16(x: &[f32], _w: Option<&[f32]>, y: &mut [u8]) {
    for (v, o) in x.iter().zip(y.chunks_exact_mut(2)) {
        o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
    }
}
pub fn dequantize_row_bf16(x: &[u8], y: &mut [f32]) {
    for (b, o) in x.chunks_exact(2).zip(y.iter_mut()) {
        *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}
