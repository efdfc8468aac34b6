//! Row layouts for floating-point coded weights kept packed in memory (compressed-tensors
//! `nvfp4-pack-quantized`, `mxfp4-pack-quantized` and `float-quantized` checkpoints;
//! `shared/docs/reference-facts.md` §5e, OCP MX v1.0 for E2M1 / E8M0, NVIDIA's FP8 E4M3).
//! Checkpoints are repacked into these layouts once at load time, losslessly: every
//! value [`dequantize_fp_row`] gives is the value compressed-tensors' decompressor gives
//! (FP4 products rounded to bf16 as it returns them; FP8 `e4m3 · scale` in f32).
//!
//! | type | row layout |
//! |---|---|
//! | [`FpType::Nvfp4`] | the tensor's FP32 global scale `g` (4 bytes LE), then per 16 columns one E4M3 scale byte `s` and 8 bytes of E2M1 codes (column `2j` in the low nibble of byte `j`, `2j+1` in the high one); value `bf16(e2m1 · (s / g))` |
//! | [`FpType::Mxfp4`] | ggml's `block_mxfp4` (17 bytes per 32 columns: E8M0 `e`, then byte `j` holds column `j` low and `j + 16` high); value `e2m1 · 2^(e − 127)` |
//! | [`FpType::Fp8`] | per `block` columns an FP32 scale (4 bytes LE) and `block` E4M3 bytes; value `e4m3 · scale` |
//!
//! The per-row copy of NVFP4's global scale lets stacked MoE experts (each with its own
//! global scale) share one matrix. MXFP4 rows are byte for byte ggml's `MXFP4` type, so
//! the same bytes run as `WeightType::Ggml(MXFP4)` (Q8_0 activations) or as
//! [`FpType::Mxfp4`] (f32 activations).

use half::bf16;
use llmq_formats::minifloat::{e2m1_to_f32, e4m3_to_f32, f32_to_e4m3};

/// Floating-point coded rows ([`crate::WeightType::Fp`]), multiplied with f32
/// activations (`crate::kernels::dot_fp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FpType {
    /// E2M1 codes, an E4M3 scale per 16, the FP32 global scale per row.
    Nvfp4,
    /// E2M1 codes, an E8M0 scale per 32, in ggml's `block_mxfp4` layout.
    Mxfp4,
    /// E4M3 codes with an FP32 scale per `block` columns (a power of two ≤ 128).
    Fp8 { block: u16 },
}

/// Bytes of NVFP4's per-row global scale.
pub const NVFP4_ROW_HEADER: usize = 4;
/// Bytes of one NVFP4 block (16 values).
pub const NVFP4_BLOCK_BYTES: usize = 9;
/// Bytes of one MXFP4 block (32 values).
pub const MXFP4_BLOCK_BYTES: usize = 17;

impl FpType {
    /// Columns per block.
    pub fn block(self) -> usize {
        match self {
            FpType::Nvfp4 => 16,
            FpType::Mxfp4 => 32,
            FpType::Fp8 { block } => block as usize,
        }
    }

    /// Bytes of a row of `cols` values (`None` unless whole blocks).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let b = self.block();
        if b == 0 || !cols.is_multiple_of(b) {
            return None;
        }
        Some(match self {
            FpType::Nvfp4 => NVFP4_ROW_HEADER + cols / 16 * NVFP4_BLOCK_BYTES,
            FpType::Mxfp4 => cols / 32 * MXFP4_BLOCK_BYTES,
            FpType::Fp8 { block } => cols / block as usize * (4 + block as usize),
        })
    }

    /// `"NVFP4_F32"`, `"MXFP4_F32"`, `"FP8_B128"`: the grid, and for FP4 the activations.
    pub fn name(self) -> String {
        match self {
            FpType::Nvfp4 => "NVFP4_F32".into(),
            FpType::Mxfp4 => "MXFP4_F32".into(),
            FpType::Fp8 { block } => format!("FP8_B{block}"),
        }
    }
}

/// Which grid an [`FpGroups`] weight is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpGrid {
    Nvfp4,
    Mxfp4,
    Fp8,
}

/// A floating-point coded weight in the checkpoints' terms (PyTorch orientation
/// `[rows = out_features, cols = in_features]`), ready to be repacked.
#[derive(Clone, Copy, Debug)]
pub struct FpGroups<'a> {
    pub grid: FpGrid,
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]` codes: E2M1 nibbles (low 4 bits) or E4M3 bytes
    pub codes: &'a [u8],
    /// decoded stored scales, row-major `[scale_rows, scale_cols]`: the scale of weight
    /// `(r, c)` is `scales[(r / rows_per_scale) · scale_cols + c / cols_per_scale]`
    pub scales: &'a [f32],
    pub rows_per_scale: usize,
    pub cols_per_scale: usize,
    pub scale_cols: usize,
    /// NVFP4's global scale (ignored otherwise)
    pub global_scale: f32,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl FpGroups<'_> {
    /// The packed type of this weight for the f32-activation kernels, or why it cannot
    /// be packed (the caller keeps it dense then).
    pub fn fp_type(&self) -> Result<FpType, String> {
        let (r, c) = (self.rows, self.cols);
        if self.codes.len() != r * c || c == 0 {
            return Err(format!("{} codes for [{r}, {c}]", self.codes.len()));
        }
        let (rps, cps) = (self.rows_per_scale.max(1), self.cols_per_scale.max(1));
        let n_scales = r.div_ceil(rps) * self.scale_cols;
        if self.scales.len() != n_scales || c.div_ceil(cps) > self.scale_cols.max(1) {
            return Err(format!(
                "{} scales for [{r}, {c}] in groups of {rps}x{cps}",
                self.scales.len()
            ));
        }
        match self.grid {
            FpGrid::Nvfp4 if cps == 16 && c.is_multiple_of(16) => Ok(FpType::Nvfp4),
            FpGrid::Mxfp4 if cps == 32 && c.is_multiple_of(32) => Ok(FpType::Mxfp4),
            FpGrid::Fp8 => {
                // blocks of up to 128 columns, each inside one scale group
                let block = gcd(gcd(c, cps.min(c)), 128);
                Ok(FpType::Fp8 {
                    block: block as u16,
                })
            }
            _ => Err(format!(
                "{:?} with scale groups of {cps} columns over {c} columns",
                self.grid
            )),
        }
    }

    fn scale(&self, r: usize, c: usize) -> f32 {
        self.scales
            [(r / self.rows_per_scale.max(1)) * self.scale_cols + c / self.cols_per_scale.max(1)]
    }

    /// Repacks into the rows of [`FpGroups::fp_type`]. Scales that are not finite or
    /// not on their grid (E4M3, a power of two), and FP8 NaN codes, are refused.
    pub fn pack(&self) -> Result<(FpType, Vec<u8>), String> {
        let ty = self.fp_type()?;
        let (rows, cols) = (self.rows, self.cols);
        let rb = ty.row_bytes(cols).ok_or("columns are not whole blocks")?;
        let mut data = vec![0u8; rows * rb];
        let b = ty.block();
        for (r, out) in data.chunks_exact_mut(rb).enumerate() {
            let codes = &self.codes[r * cols..(r + 1) * cols];
            match ty {
                FpType::Nvfp4 => {
                    let g = self.global_scale;
                    if !g.is_finite() || g == 0.0 {
                        return Err(format!("global scale {g}"));
                    }
                    out[..4].copy_from_slice(&g.to_le_bytes());
                    for (k, blk) in out[4..].chunks_exact_mut(NVFP4_BLOCK_BYTES).enumerate() {
                        let s = self.scale(r, k * 16);
                        let byte = f32_to_e4m3(s);
                        if !s.is_finite() || e4m3_to_f32(byte) != s {
                            return Err(format!("scale {s} is not an E4M3 value"));
                        }
                        blk[0] = byte;
                        for j in 0..8 {
                            let c = &codes[k * 16 + 2 * j..];
                            blk[1 + j] = (c[0] & 15) | (c[1] << 4);
                        }
                    }
                }
                FpType::Mxfp4 => {
                    for (k, blk) in out.chunks_exact_mut(MXFP4_BLOCK_BYTES).enumerate() {
                        let s = self.scale(r, k * 32);
                        blk[0] = e8m0_of(s).ok_or_else(|| format!("scale {s} is not 2^k"))?;
                        let c = &codes[k * 32..(k + 1) * 32];
                        for j in 0..16 {
                            blk[1 + j] = (c[j] & 15) | (c[j + 16] << 4);
                        }
                    }
                }
                FpType::Fp8 { .. } => {
                    if codes.iter().any(|&q| q & 0x7F == 0x7F) {
                        return Err("an FP8 code is NaN".into());
                    }
                    for (k, blk) in out.chunks_exact_mut(4 + b).enumerate() {
                        let s = self.scale(r, k * b);
                        if !s.is_finite() {
                            return Err(format!("scale {s}"));
                        }
                        blk[..4].copy_from_slice(&s.to_le_bytes());
                        blk[4..].copy_from_slice(&codes[k * b..(k + 1) * b]);
                    }
                }
            }
        }
        Ok((ty, data))
    }
}

/// The E8M0 byte whose value `2^(e − 127)` is `s` exactly.
fn e8m0_of(s: f32) -> Option<u8> {
    let e = if s == f32::from_bits(0x0040_0000) {
        0
    } else {
        (s.to_bits() >> 23) as i32 & 0xFF
    };
    (e < 255 && llmq_formats::minifloat::e8m0_to_f32(e as u8) == s).then_some(e as u8)
}

/// `2^(e − 127)` for an E8M0 byte (`2^-127` for 0).
#[inline]
pub fn e8m0_value(e: u8) -> f32 {
    llmq_formats::minifloat::e8m0_to_f32(e)
}

/// The value of an E4M3 byte (not NaN), from its bits: the magnitude bits as an f32
/// bit pattern are the value times 2^-120 (E4M3 subnormals land on f32 subnormals).
#[inline]
pub fn e4m3_value(b: u8) -> f32 {
    let m = f32::from_bits(((b & 0x7F) as u32) << 20) * f32::from_bits((127 + 120) << 23);
    if b & 0x80 != 0 {
        -m
    } else {
        m
    }
}

/// The 8 E2M1 magnitudes times `s`, each rounded to bf16 (NVFP4's stored values).
#[inline]
pub fn nvfp4_levels(s: f32) -> [f32; 8] {
    llmq_formats::minifloat::E2M1_VALUES.map(|v| bf16::from_f32(v * s).to_f32())
}

/// Dequantizes one packed row (`out.len()` values).
pub fn dequantize_fp_row(ty: FpType, src: &[u8], out: &mut [f32]) {
    match ty {
        FpType::Nvfp4 => {
            let g = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            for (ob, blk) in out
                .chunks_exact_mut(16)
                .zip(src[4..].chunks_exact(NVFP4_BLOCK_BYTES))
            {
                let lv = nvfp4_levels(e4m3_value(blk[0]) / g);
                for (j, &q) in blk[1..].iter().enumerate() {
                    for (k, c) in [q & 15, q >> 4].into_iter().enumerate() {
                        let v = lv[(c & 7) as usize];
                        ob[2 * j + k] = if c & 8 != 0 { -v } else { v };
                    }
                }
            }
        }
        FpType::Mxfp4 => {
            for (ob, blk) in out
                .chunks_exact_mut(32)
                .zip(src.chunks_exact(MXFP4_BLOCK_BYTES))
            {
                let s = e8m0_value(blk[0]);
                for j in 0..16 {
                    ob[j] = e2m1_to_f32(blk[1 + j] & 15) * s;
                    ob[j + 16] = e2m1_to_f32(blk[1 + j] >> 4) * s;
                }
            }
        }
        FpType::Fp8 { block } => {
            let b = block as usize;
            for (ob, blk) in out.chunks_exact_mut(b).zip(src.chunks_exact(4 + b)) {
                let s = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                for (o, &q) in ob.iter_mut().zip(&blk[4..]) {
                    *o = e4m3_value(q) * s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn e4m3_from_bits_is_the_e4m3_value() {
        for b in 0..=255u8 {
            if b & 0x7F != 0x7F {
                let (a, w) = (super::e4m3_value(b), super::e4m3_to_f32(b));
                assert_eq!(a.to_bits(), w.to_bits(), "{b:#x}");
            }
        }
    }
}
