//! Exact re-expression of quantized weights on another grid, the test that makes a
//! conversion lossless: a weight moves to a target grid without loss only when the
//! target can hold the very same values.
//!
//! - [`remap`]: integer groups (`w = s·(q − z)`, GPTQ paper convention) onto another
//!   bit width, group size or symmetry, keeping every scale and shifting codes and zero
//!   points together (`(q + k) − (z + k) = q − z`), when every group of the target
//!   sees one source scale and zero and the shifted codes fit.
//! - [`fit_ggml`]: f32 values onto GGML `Q4_0` / `Q8_0` blocks of 32
//!   (`w = d·(q − 8)`, `w = d·q`, llama.cpp `ggml-quants.c`), searching the f16 block
//!   scale among `±min|w| / k`; a block fits only when `d·k` reproduces every value
//!   bit for bit.

use half::f16;
use llmq_formats::GgmlType;
use llmq_hfquant::IntQuantized;

/// The shape of a target integer grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntGrid {
    pub bits: u8,
    /// `None` = one group per row
    pub group_size: Option<usize>,
    pub symmetric: bool,
    /// whether the layout stores an act-order `g_idx`
    pub allow_g_idx: bool,
}

/// `q` on `grid` with the same dequantized values, if the grid can hold them.
pub fn remap(q: &IntQuantized, grid: &IntGrid) -> Option<IntQuantized> {
    let (out, inp, ng_s) = (q.out_features, q.in_features, q.n_groups());
    let act_order = !q.has_default_g_idx();
    if act_order && (!grid.allow_g_idx || grid.group_size != q.group_size) {
        return None;
    }
    let ng_t = match grid.group_size {
        Some(g) => inp.div_ceil(g),
        None => 1,
    };
    let group_t = |i: usize| -> usize {
        if act_order {
            q.group_of(i)
        } else {
            grid.group_size.map_or(0, |g| i / g)
        }
    };
    let maxq_t = ((1u16 << grid.bits) - 1) as i32;
    let mid_t = 1i32 << (grid.bits - 1);
    let mut scales = vec![f16::ZERO; out * ng_t];
    let mut zeros = vec![0u8; out * ng_t];
    let mut codes = vec![0u8; out * inp];
    // per target group: (source scale, source zero, min code, max code)
    let mut seen: Vec<Option<(u16, u8, u8, u8)>> = vec![None; ng_t];
    for o in 0..out {
        seen.iter_mut().for_each(|s| *s = None);
        for i in 0..inp {
            let sg = q.group_of(i);
            let (s, z) = (q.scales[o * ng_s + sg], q.zeros[o * ng_s + sg]);
            let c = q.q[o * inp + i];
            let slot = &mut seen[group_t(i)];
            match slot {
                None => *slot = Some((s.to_bits(), z, c, c)),
                Some((ss, zz, lo, hi)) => {
                    if *ss != s.to_bits() || *zz != z {
                        return None;
                    }
                    *lo = (*lo).min(c);
                    *hi = (*hi).max(c);
                }
            }
        }
        for (g, slot) in seen.iter().enumerate() {
            let Some((s, z, lo, hi)) = *slot else {
                continue;
            };
            let z = z as i32;
            // shift k: codes and zero move together
            let k = if grid.symmetric {
                mid_t - z
            } else {
                let lo_k = (-(lo as i32)).max(-z);
                let hi_k = (maxq_t - hi as i32).min(maxq_t - z);
                if lo_k > hi_k {
                    return None;
                }
                0.clamp(lo_k, hi_k)
            };
            if lo as i32 + k < 0 || hi as i32 + k > maxq_t || z + k < 0 || z + k > maxq_t {
                return None;
            }
            scales[o * ng_t + g] = f16::from_bits(s);
            zeros[o * ng_t + g] = (z + k) as u8;
        }
        for i in 0..inp {
            let g = group_t(i);
            let k = zeros[o * ng_t + g] as i32 - q.zeros[o * ng_s + q.group_of(i)] as i32;
            codes[o * inp + i] = (q.q[o * inp + i] as i32 + k) as u8;
        }
    }
    let r = IntQuantized {
        bits: grid.bits,
        group_size: grid.group_size,
        symmetric: grid.symmetric,
        out_features: out,
        in_features: inp,
        q: codes,
        scales,
        zeros,
        g_idx: if act_order { q.g_idx.clone() } else { None },
    };
    r.validate().ok()?;
    Some(r)
}

/// Values of one `Q4_0` / `Q8_0` block for scale `d` and signed code `k`, exactly as
/// the dequantizers compute them (`(q - 8) as f32 * d`, `q as f32 * d`).
fn value(d: f32, k: i32) -> f32 {
    k as f32 * d
}

/// The signed code range of a fittable type.
fn code_range(ty: GgmlType) -> Option<(i32, i32)> {
    match ty {
        GgmlType::Q4_0 => Some((-8, 7)),
        GgmlType::Q8_0 => Some((-128, 127)),
        _ => None,
    }
}

/// Fits one block of 32 values: the f16 scale and signed codes, if exact.
fn fit_block(x: &[f32], lo: i32, hi: i32) -> Option<(f16, Vec<i32>)> {
    let m = x
        .iter()
        .filter(|v| **v != 0.0)
        .map(|v| v.abs())
        .fold(f32::INFINITY, f32::min);
    let kmax = lo.unsigned_abs().max(hi.unsigned_abs()) as i32;
    let candidates: Vec<f16> = if m.is_finite() {
        (1..=kmax)
            .flat_map(|k| [f16::from_f32(m / k as f32), f16::from_f32(-m / k as f32)])
            .collect()
    } else {
        vec![f16::ZERO, f16::NEG_ZERO]
    };
    'cand: for d in candidates {
        let df = d.to_f32();
        let mut ks = Vec::with_capacity(x.len());
        for &v in x {
            let k = if df == 0.0 {
                0
            } else {
                (v / df).round() as i32
            };
            if k < lo || k > hi || value(df, k).to_bits() != v.to_bits() {
                continue 'cand;
            }
            ks.push(k);
        }
        return Some((d, ks));
    }
    None
}

/// `values` (rows of `row_len`) as `ty` blocks reproducing every value bit for bit, if
/// possible; only `Q4_0` and `Q8_0` are tried.
pub fn fit_ggml(ty: GgmlType, values: &[f32], row_len: usize) -> Option<Vec<u8>> {
    let (lo, hi) = code_range(ty)?;
    if row_len == 0 || !row_len.is_multiple_of(32) {
        return None;
    }
    let mut out = Vec::with_capacity(values.len() / 32 * ty.type_size());
    for block in values.chunks(32) {
        let (d, ks) = fit_block(block, lo, hi)?;
        out.extend_from_slice(&d.to_le_bytes());
        match ty {
            GgmlType::Q4_0 => {
                // byte j: low nibble = element j, high nibble = element j + 16
                for j in 0..16 {
                    let a = (ks[j] + 8) as u8;
                    let b = (ks[j + 16] + 8) as u8;
                    out.push(a | (b << 4));
                }
            }
            _ => out.extend(ks.iter().map(|&k| k as i8 as u8)),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int4(sym: bool, gs: usize) -> IntQuantized {
        let (out, inp) = (4usize, 64usize);
        let ng = inp / gs;
        IntQuantized {
            bits: 4,
            group_size: Some(gs),
            symmetric: sym,
            out_features: out,
            in_features: inp,
            q: (0..out * inp).map(|i| (i * 7 % 16) as u8).collect(),
            scales: (0..out * ng)
                .map(|i| f16::from_f32(0.01 + i as f32 * 0.003))
                .collect(),
            zeros: (0..out * ng)
                .map(|i| if sym { 8 } else { (i % 16) as u8 })
                .collect(),
            g_idx: None,
        }
    }

    #[test]
    fn remap_keeps_values_across_layouts() {
        let q = int4(true, 32);
        // more bits, finer groups, asymmetric storage: all exact
        for grid in [
            IntGrid {
                bits: 8,
                group_size: Some(32),
                symmetric: true,
                allow_g_idx: false,
            },
            IntGrid {
                bits: 4,
                group_size: Some(16),
                symmetric: false,
                allow_g_idx: false,
            },
            IntGrid {
                bits: 4,
                group_size: Some(32),
                symmetric: true,
                allow_g_idx: true,
            },
        ] {
            let r = remap(&q, &grid).expect("exact");
            assert_eq!(r.dequantize(), q.dequantize(), "{grid:?}");
        }
        // coarser groups with different scales: not exact
        let coarse = IntGrid {
            bits: 4,
            group_size: Some(64),
            symmetric: true,
            allow_g_idx: false,
        };
        assert!(remap(&q, &coarse).is_none());
        // fewer bits: codes do not fit
        let two = IntGrid {
            bits: 2,
            group_size: Some(32),
            symmetric: false,
            allow_g_idx: false,
        };
        assert!(remap(&q, &two).is_none());
        // asymmetric zero points cannot become symmetric
        let a = int4(false, 32);
        let sym = IntGrid {
            bits: 4,
            group_size: Some(32),
            symmetric: true,
            allow_g_idx: false,
        };
        assert!(remap(&a, &sym).is_none());
    }

    #[test]
    fn q4_0_fit_reproduces_int4_g32_sym() {
        let q = int4(true, 32);
        let w = q.dequantize();
        let bytes = fit_ggml(GgmlType::Q4_0, &w, 64).expect("fits");
        let mut back = vec![0f32; w.len()];
        llmq_quant::dequantize(GgmlType::Q4_0, &bytes, &mut back).unwrap();
        assert!(back.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()));
        // asymmetric groups are not on a Q4_0 grid
        let a = int4(false, 32).dequantize();
        assert!(fit_ggml(GgmlType::Q4_0, &a, 64).is_none());
    }
}
