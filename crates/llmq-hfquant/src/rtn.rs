//! Round-to-nearest group-wise integer quantization producing [`IntQuantized`].
//!
//! Follows AutoGPTQ's `Quantizer.find_params` / `quantize`
//! (`auto_gptq/quantization/quantizer.py`, the min/max quantizer that GPTQ also uses
//! for its grid):
//! - `xmin = min(min(x), 0)`, `xmax = max(max(x), 0)`;
//! - symmetric: `xmax = max(|xmin|, xmax)`, and `xmin = -xmax` where `xmin < 0`;
//!   the zero point is `(maxq + 1) / 2`;
//! - a group that is all zero gets `xmin = -1, xmax = 1`;
//! - `scale = (xmax - xmin) / maxq`; asymmetric `zero = round(-xmin / scale)`;
//! - `q = clamp(round(x / scale) + zero, 0, maxq)`, `round` being half-to-even like
//!   `torch.round`.
//!
//! One deliberate difference: the scale is rounded to f16 (what the files store)
//! *before* zero and q are computed, so `IntQuantized::dequantize` reproduces
//! exactly what a loader computes from the file.
//!
//! These pieces are the one min-max group quantizer of the workspace: GPTQ
//! (`llmq-calib`) takes its grid from [`group_params`], and AWQ, whose grid differs
//! (no forced zero, a minimum range), shares the f16 clamp [`f16_scale`] and the
//! rounding [`quantize_value`].

use half::f16;

use crate::{Error, IntQuantized, Result};

/// What to quantize to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtnConfig {
    /// 2, 3, 4 or 8 (any of 1..=8 works)
    pub bits: u8,
    /// columns per group; `None` = per output channel
    pub group_size: Option<usize>,
    pub symmetric: bool,
}

/// Scale (already f16) and zero point of one group, AutoGPTQ style.
pub fn group_params(vals: &[f32], bits: u8, symmetric: bool) -> (f16, u8) {
    let maxq = ((1u32 << bits) - 1) as f32;
    let mut xmin = vals.iter().copied().fold(0.0f32, f32::min);
    let mut xmax = vals.iter().copied().fold(0.0f32, f32::max);
    if symmetric {
        xmax = xmax.max(xmin.abs());
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let scale = f16_scale((xmax - xmin) / maxq);
    let zero = if symmetric {
        1u8 << (bits - 1)
    } else {
        (-xmin / scale.to_f32()).round_ties_even().clamp(0.0, maxq) as u8
    };
    (scale, zero)
}

/// Rounds a positive scale to f16, keeping it positive and finite.
pub fn f16_scale(s: f32) -> f16 {
    let h = f16::from_f32(s);
    if !h.is_finite() {
        f16::MAX
    } else if h.to_f32() <= 0.0 || s.is_nan() {
        f16::from_bits(1) // smallest positive subnormal
    } else {
        h
    }
}

/// Code of `x` for a group with this scale and zero point.
pub fn quantize_value(x: f32, scale: f16, zero: u8, maxq: u8) -> u8 {
    ((x / scale.to_f32()).round_ties_even() + zero as f32).clamp(0.0, maxq as f32) as u8
}

/// Quantizes a row-major `[out, in]` f32 weight.
pub fn quantize_rtn(w: &[f32], out: usize, inp: usize, cfg: &RtnConfig) -> Result<IntQuantized> {
    if !(1..=8).contains(&cfg.bits) {
        return Err(Error::Invalid(format!("bits {} not in 1..=8", cfg.bits)));
    }
    if w.len() != out * inp {
        return Err(Error::Invalid(format!(
            "weight has {} values, want {out}x{inp}",
            w.len()
        )));
    }
    let gs = match cfg.group_size {
        Some(0) => return Err(Error::Invalid("group_size 0".into())),
        Some(g) => g.min(inp.max(1)),
        None => inp.max(1),
    };
    let ng = inp.div_ceil(gs).max(1);
    let maxq = ((1u16 << cfg.bits) - 1) as u8;
    let mut q = vec![0u8; out * inp];
    let mut scales = Vec::with_capacity(out * ng);
    let mut zeros = Vec::with_capacity(out * ng);
    for o in 0..out {
        let row = &w[o * inp..(o + 1) * inp];
        for g in 0..ng {
            let (lo, hi) = (g * gs, ((g + 1) * gs).min(inp));
            let (s, z) = group_params(&row[lo..hi], cfg.bits, cfg.symmetric);
            for i in lo..hi {
                q[o * inp + i] = quantize_value(row[i], s, z, maxq);
            }
            scales.push(s);
            zeros.push(z);
        }
    }
    Ok(IntQuantized {
        bits: cfg.bits,
        group_size: cfg.group_size,
        symmetric: cfg.symmetric,
        out_features: out,
        in_features: inp,
        q,
        scales,
        zeros,
        g_idx: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asym_matches_hand_computation() {
        // group [-1, 0, 2, 3] at 2 bits: scale = 4/3 -> f16, zero = round(1/s) = 1
        let w = [-1.0f32, 0.0, 2.0, 3.0];
        let q = quantize_rtn(
            &w,
            1,
            4,
            &RtnConfig {
                bits: 2,
                group_size: Some(4),
                symmetric: false,
            },
        )
        .unwrap();
        let s = f16::from_f32(4.0 / 3.0);
        assert_eq!(q.scales, vec![s]);
        assert_eq!(q.zeros, vec![1]);
        let expect: Vec<u8> = w
            .iter()
            .map(|&x| ((x / s.to_f32()).round_ties_even() + 1.0).clamp(0.0, 3.0) as u8)
            .collect();
        assert_eq!(q.q, expect);
        q.validate().unwrap();
    }

    #[test]
    fn sym_uses_gptq_grid() {
        let w = [-2.0f32, 1.0, 0.5, 0.25];
        let q = quantize_rtn(
            &w,
            1,
            4,
            &RtnConfig {
                bits: 4,
                group_size: None,
                symmetric: true,
            },
        )
        .unwrap();
        // xmax = 2, xmin = -2, scale = 4/15, zero = 8
        assert_eq!(q.zeros, vec![8]);
        assert_eq!(q.scales, vec![f16::from_f32(4.0 / 15.0)]);
        assert_eq!(q.q[0], 0); // -2 / (4/15) = -7.5 -> -8 (half to even) + 8
        q.validate().unwrap();
    }

    #[test]
    fn error_bounded_by_half_step() {
        let (out, inp) = (16, 256);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05)
            .collect();
        for bits in [2u8, 3, 4, 8] {
            for sym in [false, true] {
                let cfg = RtnConfig {
                    bits,
                    group_size: Some(64),
                    symmetric: sym,
                };
                let q = quantize_rtn(&w, out, inp, &cfg).unwrap();
                q.validate().unwrap();
                let d = q.dequantize();
                for o in 0..out {
                    for i in 0..inp {
                        let s = q.scales[o * 4 + i / 64].to_f32();
                        let err = (d[o * inp + i] - w[o * inp + i]).abs();
                        // asym: within half a step (plus f16 rounding of the scale)
                        if !sym {
                            assert!(err <= 0.5 * s * 1.01 + 1e-7, "bits {bits} err {err} s {s}");
                        } else {
                            assert!(err <= s * 1.01, "bits {bits} err {err} s {s}");
                        }
                    }
                }
            }
        }
    }
}
