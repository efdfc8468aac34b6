//! The floating-point weight grids — NVFP4, MXFP4 and FP8 E4M3 — as one representation,
//! [`FpQuantized`]: an element code per weight (E2M1 nibble or E4M3 byte), one scale per
//! group (its decoded value) and NVFP4's FP32 global scale; round-to-nearest with an
//! optional MSE scale search; dequantization in the order compressed-tensors computes it.
//!
//! * NVFP4 (NVIDIA; compressed-tensors `nvfp4-pack-quantized`, preset `NVFP4A16`): groups
//!   of 16 along the input dimension, an E4M3 scale each, and a tensor-wide FP32
//!   `global_scale = 448·6 / amax` (`generate_gparam`). A group's stored scale is
//!   `e4m3(amax_g / 6 · global_scale)`; a weight is `e2m1 · (scale / global_scale)`.
//! * MXFP4 (OCP Microscaling v1.0; `mxfp4-pack-quantized`): groups of 32, an E8M0 scale
//!   `2^(floor(log2 amax_g) − 2)` (as llama.cpp and the MX spec's reference choose it);
//!   a weight is `e2m1 · scale`.
//! * FP8 E4M3 (`float-quantized`): one FP32 scale `amax / 448` per output channel, per
//!   tensor, or per 128×128 block (`FP8_BLOCK`, DeepSeek-V3's layout); a weight is
//!   `e4m3 · scale`.
//!
//! The MSE search is FP-Quant's (IST-DASLab, the MR-GPTQ paper arXiv 2509.23202): the
//! group maximum is shrunk over 100 steps down to 0.8 of itself and the scale with the
//! smallest `Σ|w − ŵ|^2.4` is kept (for MXFP4, whose scales are powers of two, the two
//! exponents around the nominal one).
//!
//! Dequantization follows compressed-tensors' `_dequantize`: `scale / global_scale` in
//! f32 first, then `code · scale`; FP4 outputs are then rounded to bf16, as its
//! decompressors return them (`unpack_fp4_from_uint8` gives bf16 values).

use half::bf16;
use llmq_formats::minifloat::{
    e2m1_to_f32, e4m3_to_f32, f32_to_e2m1, f32_to_e4m3, E2M1_MAX, E4M3_MAX,
};

/// Which floating-point grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FpScheme {
    /// E2M1, E4M3 scale per 16, FP32 global scale
    Nvfp4,
    /// E2M1, E8M0 scale per 32
    Mxfp4,
    /// E4M3, FP32 scale per output channel
    Fp8Channel,
    /// E4M3, one FP32 scale
    Fp8Tensor,
    /// E4M3, FP32 scale per 128×128 block
    Fp8Block,
}

/// Side of an `FP8_BLOCK` block.
pub const FP8_BLOCK: usize = 128;
/// FP-Quant's MSE search: steps, smallest shrink factor, error exponent.
const MSE_STEPS: usize = 100;
const MSE_MIN_SHRINK: f32 = 0.8;
const MSE_NORM: f32 = 2.4;

impl FpScheme {
    /// Columns sharing a scale along the input dimension (`None`: the whole row).
    pub fn group_size(self) -> Option<usize> {
        match self {
            FpScheme::Nvfp4 => Some(16),
            FpScheme::Mxfp4 => Some(32),
            FpScheme::Fp8Block => Some(FP8_BLOCK),
            FpScheme::Fp8Channel | FpScheme::Fp8Tensor => None,
        }
    }

    /// Whether the elements are E2M1 (else E4M3).
    pub fn is_fp4(self) -> bool {
        matches!(self, FpScheme::Nvfp4 | FpScheme::Mxfp4)
    }

    /// Bits per weight including scales (not the global scale).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            FpScheme::Nvfp4 => 4.5,
            FpScheme::Mxfp4 => 4.25,
            _ => 8.0,
        }
    }

    /// Shape of the scale tensor for a `[out, in]` weight.
    pub fn scale_shape(self, out: usize, inp: usize) -> [usize; 2] {
        match self {
            FpScheme::Nvfp4 => [out, inp.div_ceil(16)],
            FpScheme::Mxfp4 => [out, inp.div_ceil(32)],
            FpScheme::Fp8Channel => [out, 1],
            FpScheme::Fp8Tensor => [1, 1],
            FpScheme::Fp8Block => [out.div_ceil(FP8_BLOCK), inp.div_ceil(FP8_BLOCK)],
        }
    }

    /// The code of `x` at effective scale `s` and its value.
    #[inline]
    pub fn encode(self, x: f32, s: f32) -> (u8, f32) {
        if s == 0.0 {
            return (0, 0.0);
        }
        if self.is_fp4() {
            let c = f32_to_e2m1(x / s);
            (c, e2m1_to_f32(c) * s)
        } else {
            let c = f32_to_e4m3(x / s);
            (c, e4m3_to_f32(c) * s)
        }
    }

    /// The element value of `code`.
    #[inline]
    pub fn element(self, code: u8) -> f32 {
        if self.is_fp4() {
            e2m1_to_f32(code)
        } else {
            e4m3_to_f32(code)
        }
    }

    /// The stored scale (decoded) for a group whose largest magnitude is `amax`.
    pub fn nominal_scale(self, amax: f32, global: f32) -> f32 {
        match self {
            FpScheme::Nvfp4 => e4m3_to_f32(f32_to_e4m3(amax / E2M1_MAX * global)),
            FpScheme::Mxfp4 => {
                if amax > 0.0 {
                    let e = (amax.log2().floor() - 2.0).clamp(-127.0, 127.0);
                    f32::powi(2.0, e as i32)
                } else {
                    f32::powi(2.0, -127)
                }
            }
            _ => {
                if amax > 0.0 {
                    amax / E4M3_MAX
                } else {
                    1.0
                }
            }
        }
    }

    /// The stored scale for `vals` (one group of one row): nominal, or the MSE search's.
    pub fn group_scale(self, vals: &[f32], global: f32, mse: bool) -> f32 {
        let amax = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let nominal = self.nominal_scale(amax, global);
        if !mse || amax == 0.0 {
            return nominal;
        }
        let err = |stored: f32| -> f32 {
            let s = self.effective(stored, global);
            vals.iter()
                .map(|&x| (x - self.encode(x, s).1).abs().powf(MSE_NORM))
                .sum()
        };
        let candidates: Vec<f32> = match self {
            FpScheme::Mxfp4 => vec![nominal, nominal * 2.0],
            _ => (0..MSE_STEPS)
                .map(|k| {
                    let p = 1.0 - (1.0 - MSE_MIN_SHRINK) * k as f32 / (MSE_STEPS - 1) as f32;
                    self.nominal_scale(amax * p, global)
                })
                .collect(),
        };
        let mut best = (err(nominal), nominal);
        for c in candidates {
            let e = err(c);
            if e < best.0 {
                best = (e, c);
            }
        }
        best.1
    }

    /// The effective scale: stored scale over the global one (NVFP4), else itself.
    #[inline]
    pub fn effective(self, stored: f32, global: f32) -> f32 {
        if self == FpScheme::Nvfp4 {
            stored / global
        } else {
            stored
        }
    }

    /// NVFP4's tensor-wide global scale `448·6 / amax` (1 for other schemes or zeros).
    pub fn global_scale(self, w: &[f32]) -> f32 {
        if self != FpScheme::Nvfp4 {
            return 1.0;
        }
        let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if amax > 0.0 {
            E4M3_MAX * E2M1_MAX / amax
        } else {
            1.0
        }
    }
}

/// A weight `[out, in]` on a floating-point grid.
#[derive(Clone, Debug, PartialEq)]
pub struct FpQuantized {
    pub scheme: FpScheme,
    pub out_features: usize,
    pub in_features: usize,
    /// one code per weight, row-major (E2M1 in the low 4 bits, or E4M3)
    pub codes: Vec<u8>,
    /// decoded stored scales, row-major over [`FpScheme::scale_shape`]
    pub scales: Vec<f32>,
    /// NVFP4's global scale (1 otherwise)
    pub global_scale: f32,
}

impl FpQuantized {
    /// Index into `scales` of weight `(o, i)`.
    #[inline]
    pub fn scale_index(&self, o: usize, i: usize) -> usize {
        let [_, cols] = self.scheme.scale_shape(self.out_features, self.in_features);
        match self.scheme {
            FpScheme::Nvfp4 => o * cols + i / 16,
            FpScheme::Mxfp4 => o * cols + i / 32,
            FpScheme::Fp8Channel => o,
            FpScheme::Fp8Tensor => 0,
            FpScheme::Fp8Block => (o / FP8_BLOCK) * cols + i / FP8_BLOCK,
        }
    }

    /// The weights as compressed-tensors' decompressor computes them.
    pub fn dequantize(&self) -> Vec<f32> {
        let (o_n, i_n) = (self.out_features, self.in_features);
        let mut out = vec![0.0f32; o_n * i_n];
        for o in 0..o_n {
            for i in 0..i_n {
                let s = self
                    .scheme
                    .effective(self.scales[self.scale_index(o, i)], self.global_scale);
                let v = self.scheme.element(self.codes[o * i_n + i]) * s;
                out[o * i_n + i] = if self.scheme.is_fp4() {
                    bf16::from_f32(v).to_f32()
                } else {
                    v
                };
            }
        }
        out
    }
}

/// Round-to-nearest of `w` (`[out, in]`, row-major) onto `scheme`, with FP-Quant's MSE
/// scale search when `mse`.
pub fn rtn_fp(w: &[f32], out: usize, inp: usize, scheme: FpScheme, mse: bool) -> FpQuantized {
    assert_eq!(w.len(), out * inp, "weight size");
    let global = scheme.global_scale(w);
    let shape = scheme.scale_shape(out, inp);
    let mut scales = vec![0.0f32; shape[0] * shape[1]];
    match scheme {
        FpScheme::Nvfp4 | FpScheme::Mxfp4 => {
            let g = scheme.group_size().unwrap();
            for o in 0..out {
                for k in 0..shape[1] {
                    let cols = k * g..((k + 1) * g).min(inp);
                    scales[o * shape[1] + k] = scheme.group_scale(
                        &w[o * inp + cols.start..o * inp + cols.end],
                        global,
                        mse,
                    );
                }
            }
        }
        FpScheme::Fp8Channel => {
            for o in 0..out {
                scales[o] = scheme.group_scale(&w[o * inp..(o + 1) * inp], global, mse);
            }
        }
        FpScheme::Fp8Tensor => scales[0] = scheme.group_scale(w, global, mse),
        FpScheme::Fp8Block => {
            for bo in 0..shape[0] {
                for bi in 0..shape[1] {
                    let mut vals = Vec::with_capacity(FP8_BLOCK * FP8_BLOCK);
                    for o in bo * FP8_BLOCK..((bo + 1) * FP8_BLOCK).min(out) {
                        let c = bi * FP8_BLOCK..((bi + 1) * FP8_BLOCK).min(inp);
                        vals.extend_from_slice(&w[o * inp + c.start..o * inp + c.end]);
                    }
                    scales[bo * shape[1] + bi] = scheme.group_scale(&vals, global, mse);
                }
            }
        }
    }
    let mut q = FpQuantized {
        scheme,
        out_features: out,
        in_features: inp,
        codes: vec![0u8; out * inp],
        scales,
        global_scale: global,
    };
    for o in 0..out {
        for i in 0..inp {
            let s = scheme.effective(q.scales[q.scale_index(o, i)], global);
            q.codes[o * inp + i] = scheme.encode(w[o * inp + i], s).0;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(out: usize, inp: usize) -> Vec<f32> {
        (0..out * inp)
            .map(|k| ((k * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (k % 37) as f32 * 0.1))
            .collect()
    }

    fn rel_err(w: &[f32], q: &FpQuantized) -> f64 {
        let d = q.dequantize();
        let num: f64 = w
            .iter()
            .zip(&d)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = w.iter().map(|a| (*a as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn every_scheme_round_trips_within_its_precision() {
        let (o, i) = (130, 256);
        let w = weights(o, i);
        for (scheme, bound) in [
            (FpScheme::Nvfp4, 0.12),
            (FpScheme::Mxfp4, 0.2),
            (FpScheme::Fp8Channel, 0.04),
            (FpScheme::Fp8Tensor, 0.04),
            (FpScheme::Fp8Block, 0.04),
        ] {
            let q = rtn_fp(&w, o, i, scheme, false);
            let e = rel_err(&w, &q);
            assert!(e < bound, "{scheme:?}: {e}");
            let m = rtn_fp(&w, o, i, scheme, true);
            let em = rel_err(&w, &m);
            assert!(em <= e * 1.001, "{scheme:?}: MSE search {em} vs {e}");
        }
    }

    #[test]
    fn nvfp4_global_scale_and_stored_scales() {
        let w = weights(4, 64);
        let q = rtn_fp(&w, 4, 64, FpScheme::Nvfp4, false);
        let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(q.global_scale, 448.0 * 6.0 / amax);
        // stored scales are E4M3 values, the largest at most 448
        for &s in &q.scales {
            assert_eq!(e4m3_to_f32(f32_to_e4m3(s)), s);
            assert!(s <= 448.0);
        }
        // zeros quantize to zeros
        let z = rtn_fp(&[0.0; 32], 1, 32, FpScheme::Nvfp4, true);
        assert!(z.dequantize().iter().all(|&v| v == 0.0));
    }
}
