//! GGML blocks that are integer groups in the GPTQ sense, read into [`IntQuantized`]
//! without loss (llama.cpp `ggml-common.h` / `ggml-quants.c`):
//!
//! - `Q4_0`: per 32 values one f16 scale `d` and 4-bit codes, `w = d·(q − 8)`: 4-bit,
//!   group 32, symmetric (zero 8). Byte `j` of a block holds element `j` in its low
//!   nibble and element `j + 16` in its high nibble.
//! - `Q5_0`: per 32 values one f16 scale, 4 low bits as in `Q4_0` and the fifth bit of
//!   element `j` in bit `j` of a little-endian `u32`, `w = d·(q − 16)`: 5-bit, group
//!   32, symmetric (zero 16).
//! - `Q8_0`: per 32 values one f16 scale and signed 8-bit codes, `w = d·q`: 8-bit,
//!   group 32, symmetric (stored code `q + 128`, zero 128).
//!
//! `IntQuantized::dequantize` computes `s·(q − z)` in f32, the same product the GGML
//! dequantizers compute, so the values are bit-identical. Other types (affine mins,
//! super-block scales, codebooks) are not integer groups: callers dequantize them.

use crate::IntQuantized;
use half::f16;
use llmq_formats::GgmlType;

/// `bytes` (`rows` rows of `cols` values of type `ty`) as integer groups, for `Q4_0`,
/// `Q5_0` and `Q8_0`; `None` for every other type or when the sizes do not match.
pub fn int_from_ggml(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Option<IntQuantized> {
    const QK: usize = 32;
    let (bits, block_bytes) = match ty {
        GgmlType::Q4_0 => (4u8, 18usize),
        GgmlType::Q5_0 => (5u8, 22usize),
        GgmlType::Q8_0 => (8u8, 34usize),
        _ => return None,
    };
    if cols == 0 || !cols.is_multiple_of(QK) || bytes.len() != rows * cols / QK * block_bytes {
        return None;
    }
    let n_blocks = rows * cols / QK;
    let mut q = vec![0u8; rows * cols];
    let mut scales = Vec::with_capacity(n_blocks);
    for (b, blk) in bytes.chunks_exact(block_bytes).enumerate() {
        scales.push(f16::from_le_bytes([blk[0], blk[1]]));
        let out = &mut q[b * QK..(b + 1) * QK];
        if bits == 4 {
            for j in 0..16 {
                out[j] = blk[2 + j] & 0x0f;
                out[j + 16] = blk[2 + j] >> 4;
            }
        } else if bits == 5 {
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            for j in 0..16 {
                out[j] = (blk[6 + j] & 0x0f) | (((qh >> j) & 1) << 4) as u8;
                out[j + 16] = (blk[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
            }
        } else {
            for j in 0..QK {
                out[j] = (blk[2 + j] as i8 as i16 + 128) as u8;
            }
        }
    }
    let zero = 1u8 << (bits - 1);
    let r = IntQuantized {
        bits,
        group_size: Some(QK),
        symmetric: true,
        out_features: rows,
        in_features: cols,
        q,
        scales,
        zeros: vec![zero; n_blocks],
        g_idx: None,
    };
    r.validate().ok()?;
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `block_q5_0` dequantized as ggml-quants.c `dequantize_row_q5_0` writes it.
    fn llmq_quant_ref_q5_0(x: &[u8], y: &mut [f32]) {
        for (b, yb) in x.chunks_exact(22).zip(y.chunks_exact_mut(32)) {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let xh0 = ((qh >> j) << 4) & 0x10;
                let xh1 = (qh >> (j + 12)) & 0x10;
                let x0 = ((b[6 + j] & 0x0f) as u32 | xh0) as i32 - 16;
                let x1 = ((b[6 + j] >> 4) as u32 | xh1) as i32 - 16;
                yb[j] = x0 as f32 * d;
                yb[j + 16] = x1 as f32 * d;
            }
        }
    }

    #[test]
    fn q4_0_and_q8_0_blocks_dequantize_bit_for_bit() {
        let (rows, cols) = (3usize, 64usize);
        // Q4_0: scale 0.5, codes cycling 0..16
        let mut b4 = Vec::new();
        let mut want4 = Vec::new();
        for blk in 0..rows * cols / 32 {
            let d = f16::from_f32(0.5 + blk as f32 * 0.125);
            b4.extend_from_slice(&d.to_le_bytes());
            let codes: Vec<u8> = (0..32).map(|j| ((j * 5 + blk) % 16) as u8).collect();
            for j in 0..16 {
                b4.push(codes[j] | (codes[j + 16] << 4));
            }
            want4.extend(codes.iter().map(|&c| (c as i32 - 8) as f32 * d.to_f32()));
        }
        let q = int_from_ggml(GgmlType::Q4_0, &b4, rows, cols).unwrap();
        let got = q.dequantize();
        assert!(got
            .iter()
            .zip(&want4)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        // Q8_0: signed codes
        let mut b8 = Vec::new();
        let mut want8 = Vec::new();
        for blk in 0..rows * cols / 32 {
            let d = f16::from_f32(-0.03 * (blk + 1) as f32);
            b8.extend_from_slice(&d.to_le_bytes());
            for j in 0..32i32 {
                let c = ((j * 37 + blk as i32 * 11) % 256 - 128) as i8;
                b8.push(c as u8);
                want8.push(c as f32 * d.to_f32());
            }
        }
        let q = int_from_ggml(GgmlType::Q8_0, &b8, rows, cols).unwrap();
        assert_eq!(q.zeros[0], 128);
        let got = q.dequantize();
        assert!(got
            .iter()
            .zip(&want8)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        // Q5_0 against llmq-quant's own dequantizer on arbitrary blocks
        let b5: Vec<u8> = (0..rows * cols / 32 * 22)
            .map(|i| {
                if i % 22 == 1 {
                    0x2c
                } else {
                    (i * 89 % 251) as u8
                }
            })
            .collect();
        let mut want5 = vec![0f32; rows * cols];
        llmq_quant_ref_q5_0(&b5, &mut want5);
        let q = int_from_ggml(GgmlType::Q5_0, &b5, rows, cols).unwrap();
        assert_eq!((q.bits, q.zeros[0]), (5, 16));
        let got = q.dequantize();
        assert!(got
            .iter()
            .zip(&want5)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        // other types and bad sizes are refused
        assert!(int_from_ggml(GgmlType::Q4_1, &b4, rows, cols).is_none());
        assert!(int_from_ggml(GgmlType::Q4_0, &b4[1..], rows, cols).is_none());
    }
}
