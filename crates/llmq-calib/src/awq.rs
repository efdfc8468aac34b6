//! AWQ: activation-aware weight quantization (Lin, Tang, Tang, Yang, Dang, Gan, Han,
//! "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration",
//! arXiv 2306.00978, §3.2), as AutoAWQ implements it (`awq/quantize/quantizer.py`:
//! `_search_best_scale`, `_search_best_clip`, `pseudo_quantize_tensor`).
//!
//! * **Scale search** ([`search_scale`]): for the Linear layers that share one input
//!   `X`, per-input-channel scales `s = mean|x|^α` (clamped at 1e-4, normalized by
//!   `sqrt(max s · min s)`) are tried for α on the grid `i/20`, `i = 0..20`; each
//!   candidate quantizes `W·diag(s)`, divides the scales back out and measures the
//!   squared output error `‖X Wᵀ − X (Q(W·diag(s))·diag(s)⁻¹)ᵀ‖²` summed over the
//!   layers. α = 0 is plain round-to-nearest, so the chosen scales never do worse than
//!   RTN on the calibration rows. The caller folds `1/s` into the operation that
//!   produces `X` (a norm weight or the previous projection's rows).
//! * **Clip search** ([`search_clip`]): for every (row, group) the clipping range
//!   `max|w|·(1 − i/20)`, `i = 0..10` (AutoAWQ's `max_shrink` 0.5) minimizing the
//!   group's partial output error on up to [`CLIP_TOKENS`] calibration rows.
//! * **Quantizer** ([`awq_quantize`]): asymmetric min-max per group (AutoAWQ GEMM,
//!   zero point): `scale = max(max − min, 1e-5)/maxq`, `zero = clamp(−round(min/scale),
//!   0, maxq)`, `q = clamp(round(w/scale) + zero, 0, maxq)`. Scales are rounded to f16
//!   before `q` is computed (what the checkpoint stores).
//!
//! Differences from AutoAWQ, all for bounded cost on CPUs: the loss is the error of
//! the Linear outputs sharing the input (AutoAWQ runs the whole attention or MLP
//! module, which only matters through the nonlinearity after q/k and gate), measured
//! on a subsample of the calibration rows chosen by the caller; `mean|x|` is taken
//! over all rows the caller saw.

use faer::{Accum, Mat, Par};
use half::f16;
use llmq_hfquant::{rtn, IntQuantized};
use rayon::prelude::*;

/// Grid points of the scale search (AutoAWQ `n_grid`).
pub const N_GRID: usize = 20;
/// Calibration rows used by the clip search (AutoAWQ `n_sample_token`).
pub const CLIP_TOKENS: usize = 512;

/// Per-group AWQ quantizer parameters of one group (AutoAWQ `pseudo_quantize_tensor`).
fn group_params(vals: &[f32], maxq: u32) -> (f16, u8) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in vals {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        lo = 0.0;
        hi = 0.0;
    }
    let sh = rtn::f16_scale(((hi - lo).max(1e-5)) / maxq as f32);
    let z = (-(lo / sh.to_f32()).round_ties_even()).clamp(0.0, maxq as f32);
    (sh, z as u8)
}

#[inline]
fn code(x: f32, s: f16, z: u8, maxq: u32) -> u8 {
    rtn::quantize_value(x, s, z, maxq as u8)
}

/// `code(x, s, z, maxq) as f32` with the scale, zero point and top code already as
/// f32 (`sf = s.to_f32()`), in a form the compiler vectorises (the searches' hot
/// loop): round-half-to-even by adding and removing 1.5·2²³, exact for |x/sf| < 2²²
/// and within 2 of it beyond, where the clamp gives the same code; NaN gives 0, as
/// the `as u8` cast does.
#[inline(always)]
fn code_f(x: f32, sf: f32, zf: f32, maxqf: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    let r = (x / sf + SHIFT) - SHIFT;
    (r + zf).max(0.0).min(maxqf)
}

/// Asymmetric group-wise quantization of `w` (`[out, in]`, row-major) as AutoAWQ
/// GEMM stores it. `clip`, when given, holds a `max|w|` per (row, group): values are
/// clamped to `[−clip, clip]` first.
pub fn awq_quantize(
    w: &[f32],
    out: usize,
    inp: usize,
    bits: u8,
    group_size: usize,
    clip: Option<&[f32]>,
) -> IntQuantized {
    assert_eq!(w.len(), out * inp, "weight shape");
    assert!(
        group_size > 0 && inp.is_multiple_of(group_size),
        "group size"
    );
    let maxq = (1u32 << bits) - 1;
    let ng = inp / group_size;
    let mut q = vec![0u8; out * inp];
    let mut scales = vec![f16::ZERO; out * ng];
    let mut zeros = vec![0u8; out * ng];
    let mut buf = vec![0.0f32; group_size];
    for o in 0..out {
        for g in 0..ng {
            let src = &w[o * inp + g * group_size..o * inp + (g + 1) * group_size];
            buf.copy_from_slice(src);
            if let Some(c) = clip {
                let m = c[o * ng + g];
                buf.iter_mut().for_each(|v| *v = v.clamp(-m, m));
            }
            let (s, z) = group_params(&buf, maxq);
            scales[o * ng + g] = s;
            zeros[o * ng + g] = z;
            for (k, &v) in buf.iter().enumerate() {
                q[o * inp + g * group_size + k] = code(v, s, z, maxq);
            }
        }
    }
    IntQuantized {
        bits,
        group_size: Some(group_size),
        symmetric: false,
        out_features: out,
        in_features: inp,
        q,
        scales,
        zeros,
        g_idx: None,
    }
}

/// `w` quantized and dequantized in place (the "fake quantization" of the search).
fn fake_quant(w: &mut [f32], inp: usize, bits: u8, group_size: usize) {
    let maxq = (1u32 << bits) - 1;
    for row in w.chunks_mut(inp) {
        for grp in row.chunks_mut(group_size) {
            let (s, z) = group_params(grp, maxq);
            let (sf, zf, maxqf) = (s.to_f32(), z as f32, maxq as f32);
            for v in grp.iter_mut() {
                *v = sf * (code_f(*v, sf, zf, maxqf) - zf);
            }
        }
    }
}

/// `X Wᵀ` for `x` `[n, inp]` and `w` `[out, inp]`.
fn outputs(x: &Mat<f32>, w: &[f32], out: usize, inp: usize) -> Mat<f32> {
    let wm = Mat::<f32>::from_fn(inp, out, |i, o| w[o * inp + i]);
    let mut y = Mat::<f32>::zeros(x.nrows(), out);
    faer::linalg::matmul::matmul(
        y.as_mut(),
        Accum::Replace,
        x.as_ref(),
        wm.as_ref(),
        1.0f32,
        Par::Seq,
    );
    y
}

/// One Linear layer of a scale search: its weight `[out, inp]`.
pub struct AwqLayer<'a> {
    pub w: &'a [f32],
    pub out: usize,
}

/// What [`search_scale`] found.
#[derive(Debug, Clone)]
pub struct ScaleSearch {
    /// per input channel; multiply the weights' columns by these and divide the input
    pub scales: Vec<f32>,
    /// the chosen exponent α
    pub ratio: f32,
    /// mean squared output error at α = 0 (plain RTN) and at the chosen α
    pub rtn_loss: f64,
    pub best_loss: f64,
}

/// Search the per-input-channel scales for the `layers` sharing one input.
/// `x_abs_mean[i]` is `mean|x_i|` over all calibration rows; `x` holds `n` sample rows
/// (`[n, inp]`) on which the output error is measured.
pub fn search_scale(
    layers: &[AwqLayer<'_>],
    inp: usize,
    x_abs_mean: &[f32],
    x: &[f32],
    n: usize,
    bits: u8,
    group_size: usize,
) -> ScaleSearch {
    assert_eq!(x_abs_mean.len(), inp);
    assert_eq!(x.len(), n * inp);
    let xm = Mat::<f32>::from_fn(n, inp, |r, c| x[r * inp + c]);
    let refs: Vec<Mat<f32>> = layers
        .iter()
        .map(|l| outputs(&xm, l.w, l.out, inp))
        .collect();
    let total_out: usize = layers.iter().map(|l| l.out).sum();
    let denom = (n * total_out).max(1) as f64;
    // grid points in parallel; the argmin is taken in grid order (deterministic)
    let results: Vec<(f64, f32, Vec<f32>)> = (0..N_GRID)
        .into_par_iter()
        .map(|i| {
            let (ratio, s) = grid_scales(x_abs_mean, i);
            let mut loss = 0.0f64;
            for (l, r) in layers.iter().zip(&refs) {
                let mut ws: Vec<f32> = l.w.to_vec();
                for row in ws.chunks_mut(inp) {
                    row.iter_mut().zip(&s).for_each(|(v, s)| *v *= s);
                }
                fake_quant(&mut ws, inp, bits, group_size);
                for row in ws.chunks_mut(inp) {
                    row.iter_mut().zip(&s).for_each(|(v, s)| *v /= s);
                }
                let y = outputs(&xm, &ws, l.out, inp);
                for c in 0..l.out {
                    for rr in 0..n {
                        let d = (y[(rr, c)] - r[(rr, c)]) as f64;
                        loss += d * d;
                    }
                }
            }
            loss /= denom;
            (loss, ratio, s)
        })
        .collect();
    pick_scale(results, inp)
}

/// Grid point `i` of the scale search: the exponent `α = i/N_GRID` and the scales
/// `max(mean|x|^α, 1e-4)` normalized by `sqrt(max s · min s)` (computed on the host
/// for the device search too, so both try the same scales).
pub fn grid_scales(x_abs_mean: &[f32], i: usize) -> (f32, Vec<f32>) {
    let ratio = i as f32 / N_GRID as f32;
    let mut s: Vec<f32> = x_abs_mean
        .iter()
        .map(|&m| m.powf(ratio).max(1e-4))
        .collect();
    let (mx, mn) = s
        .iter()
        .fold((0.0f32, f32::INFINITY), |(a, b), &v| (a.max(v), b.min(v)));
    let norm = (mx * mn).sqrt();
    if norm.is_finite() && norm > 0.0 {
        s.iter_mut().for_each(|v| *v /= norm);
    }
    (ratio, s)
}

/// The search's answer from every grid point's (mean loss, α, scales), in grid
/// order: the first smallest loss wins (α = 0 is the RTN loss).
pub fn pick_scale(results: Vec<(f64, f32, Vec<f32>)>, inp: usize) -> ScaleSearch {
    let rtn_loss = results[0].0;
    let mut best = (f64::INFINITY, 0.0f32, vec![1.0f32; inp]);
    for r in results {
        if r.0 < best.0 {
            best = r;
        }
    }
    ScaleSearch {
        scales: best.2,
        ratio: best.1,
        rtn_loss,
        best_loss: best.0,
    }
}

/// The clip search's shrink factors `1 − i/N_GRID`, `i = 0..N_GRID/2`, as f32 (the
/// candidate range of a group is `max|w|` times one of them).
pub fn clip_factors() -> Vec<f32> {
    (0..N_GRID / 2)
        .map(|i| 1.0 - i as f32 / N_GRID as f32)
        .collect()
}

/// The rows of `n` the clip search uses: at most [`CLIP_TOKENS`], evenly spaced.
pub fn clip_rows(n: usize) -> Vec<usize> {
    let step = n.div_ceil(CLIP_TOKENS).max(1);
    (0..n).step_by(step).collect()
}

/// Search the clipping range of every (row, group) of `w` (`[out, inp]`) on the rows
/// of `x` (`[n, inp]`; at most [`CLIP_TOKENS`] evenly spaced rows are used). Returns
/// `max|w|` to clamp to, per (row, group).
pub fn search_clip(
    w: &[f32],
    out: usize,
    inp: usize,
    x: &[f32],
    n: usize,
    bits: u8,
    group_size: usize,
) -> Vec<f32> {
    assert_eq!(w.len(), out * inp);
    assert_eq!(x.len(), n * inp);
    let ng = inp / group_size;
    let rows = clip_rows(n);
    let maxq = (1u32 << bits) - 1;
    let max_shrink = N_GRID / 2;
    let mut best = vec![0.0f32; out * ng];
    let gs = group_size;
    for g in 0..ng {
        // Gram matrix of this group's input columns over the sample rows: the output
        // error of a weight change d is dᵀ G d (the same sum over rows, computed once)
        let mut gram = vec![0.0f32; gs * gs];
        for &r in &rows {
            let xr = &x[r * inp + g * gs..r * inp + (g + 1) * gs];
            for (i, &a) in xr.iter().enumerate() {
                let row = &mut gram[i * gs..(i + 1) * gs];
                row.iter_mut().zip(xr).for_each(|(d, &b)| *d += a * b);
            }
        }
        let gram = &gram;
        let found: Vec<f32> = (0..out)
            .into_par_iter()
            .map(|o| {
                let mut buf = vec![0.0f32; gs];
                let wg = &w[o * inp + g * gs..o * inp + (g + 1) * gs];
                let org_max = wg.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let mut best_err = f64::INFINITY;
                let mut best_max = org_max;
                for i in 0..max_shrink {
                    let m = org_max * (1.0 - i as f32 / N_GRID as f32);
                    buf.iter_mut()
                        .zip(wg)
                        .for_each(|(d, &v)| *d = v.clamp(-m, m));
                    let (s, z) = group_params(&buf, maxq);
                    let (sf, zf, maxqf) = (s.to_f32(), z as f32, maxq as f32);
                    // d = q(w) - w
                    buf.iter_mut()
                        .zip(wg)
                        .for_each(|(v, &w0)| *v = sf * (code_f(*v, sf, zf, maxqf) - zf) - w0);
                    let mut err = 0.0f64;
                    for (k, &dk) in buf.iter().enumerate() {
                        err += dk as f64 * dot8(&gram[k * gs..(k + 1) * gs], &buf) as f64;
                    }
                    if err < best_err {
                        best_err = err;
                        best_max = m;
                    }
                }
                best_max
            })
            .collect();
        for (o, m) in found.into_iter().enumerate() {
            best[o * ng + g] = m;
        }
    }
    best
}

/// Dot product in eight lanes (vectorizes; the summation order is fixed).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The vectorisable code is the quantizer's, on ties, huge ratios, the smallest
    /// scale, infinities and NaN.
    #[test]
    fn code_f_is_the_quantizers_code() {
        let mut r = ChaCha8Rng::seed_from_u64(7);
        let scales = [
            f16::from_bits(1),
            f16::from_f32(1e-3),
            f16::from_f32(0.0371),
            f16::from_f32(1.0),
            f16::from_f32(3.5),
            f16::MAX,
        ];
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            -f32::MAX,
            4_194_303.5,
            4_194_304.5,
            8_388_609.0,
            -4_194_304.5,
        ];
        for _ in 0..20_000 {
            xs.push(r.gen_range(-3.0f32..3.0) * 10f32.powi(r.gen_range(-6..8)));
        }
        for &s in &scales {
            // ties: exact halves of the scale
            xs.extend((-40..40).map(|k| (k as f32 + 0.5) * s.to_f32()));
            for maxq in [3u32, 7, 15, 255] {
                for z in [0u8, 1, (maxq / 2) as u8, maxq as u8] {
                    let sf = s.to_f32();
                    for &x in &xs {
                        let want = code(x, s, z, maxq) as f32;
                        let got = code_f(x, sf, z as f32, maxq as f32);
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "x {x} s {sf} z {z} maxq {maxq}"
                        );
                    }
                }
            }
        }
    }

    fn normal(r: &mut ChaCha8Rng) -> f32 {
        // Box-Muller
        let u1: f32 = r.gen_range(1e-7f32..1.0);
        let u2: f32 = r.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }

    /// Output MSE of `q` against `w` on rows `x`.
    fn out_err(x: &[f32], n: usize, w: &[f32], q: &[f32], out: usize, inp: usize) -> f64 {
        let mut e = 0.0f64;
        for r in 0..n {
            let xr = &x[r * inp..(r + 1) * inp];
            for o in 0..out {
                let a: f32 = xr
                    .iter()
                    .zip(&w[o * inp..(o + 1) * inp])
                    .map(|(a, b)| a * b)
                    .sum();
                let b: f32 = xr
                    .iter()
                    .zip(&q[o * inp..(o + 1) * inp])
                    .map(|(a, b)| a * b)
                    .sum();
                e += ((a - b) as f64).powi(2);
            }
        }
        e / (n * out) as f64
    }

    #[test]
    fn quantizer_matches_autoawq_formula() {
        // one group: min -0.5, max 1.0, 4 bits: scale 1.5/15 = 0.1, zero round(5) = 5
        let w = [-0.5f32, 0.0, 0.3, 1.0];
        let q = awq_quantize(&w, 1, 4, 4, 4, None);
        assert_eq!(q.zeros, vec![5]);
        assert!((q.scales[0].to_f32() - 0.1).abs() < 1e-4);
        assert_eq!(q.q, vec![0, 5, 8, 15]);
        assert!(!q.symmetric);
        q.validate().unwrap();
    }

    #[test]
    fn awq_beats_rtn_on_outlier_channels() {
        let (out, inp, n, gs) = (64usize, 256usize, 512usize, 128usize);
        let mut r = ChaCha8Rng::seed_from_u64(7);
        let w: Vec<f32> = (0..out * inp).map(|_| normal(&mut r) * 0.05).collect();
        // activations with a few salient channels 30x larger
        let mut x: Vec<f32> = (0..n * inp).map(|_| normal(&mut r)).collect();
        for row in x.chunks_mut(inp) {
            for c in [3usize, 77, 130, 200] {
                row[c] *= 30.0;
            }
        }
        let mean: Vec<f32> = (0..inp)
            .map(|c| (0..n).map(|r| x[r * inp + c].abs()).sum::<f32>() / n as f32)
            .collect();
        let s = search_scale(&[AwqLayer { w: &w, out }], inp, &mean, &x, n, 4, gs);
        assert!(
            s.ratio > 0.0,
            "a nonzero exponent should win, got {}",
            s.ratio
        );
        assert!(s.best_loss < s.rtn_loss);
        // the full AWQ path: scale, clip, quantize, unscale
        let mut ws = w.clone();
        for row in ws.chunks_mut(inp) {
            row.iter_mut().zip(&s.scales).for_each(|(v, s)| *v *= s);
        }
        let mut xs = x.clone();
        for row in xs.chunks_mut(inp) {
            row.iter_mut().zip(&s.scales).for_each(|(v, s)| *v /= s);
        }
        let clip = search_clip(&ws, out, inp, &xs, n, 4, gs);
        let q = awq_quantize(&ws, out, inp, 4, gs, Some(&clip));
        let mut deq = q.dequantize();
        for row in deq.chunks_mut(inp) {
            row.iter_mut().zip(&s.scales).for_each(|(v, s)| *v /= s);
        }
        let rtn = awq_quantize(&w, out, inp, 4, gs, None).dequantize();
        let e_awq = out_err(&x, n, &w, &deq, out, inp);
        let e_rtn = out_err(&x, n, &w, &rtn, out, inp);
        assert!(
            e_awq < 0.8 * e_rtn,
            "AWQ output error {e_awq} should be well below RTN's {e_rtn}"
        );
    }

    #[test]
    fn clip_never_worse_than_no_clip() {
        let (out, inp, n, gs) = (8usize, 128usize, 64usize, 32usize);
        let mut r = ChaCha8Rng::seed_from_u64(3);
        let w: Vec<f32> = (0..out * inp).map(|_| normal(&mut r).powi(3)).collect();
        let x: Vec<f32> = (0..n * inp).map(|_| normal(&mut r)).collect();
        let clip = search_clip(&w, out, inp, &x, n, 3, gs);
        let ng = inp / gs;
        for o in 0..out {
            for g in 0..ng {
                let m = w[o * inp + g * gs..o * inp + (g + 1) * gs]
                    .iter()
                    .fold(0.0f32, |a, v| a.max(v.abs()));
                let c = clip[o * ng + g];
                assert!(c <= m && c >= 0.5 * m - 1e-6, "clip {c} of max {m}");
            }
        }
        let a = awq_quantize(&w, out, inp, 3, gs, Some(&clip)).dequantize();
        let b = awq_quantize(&w, out, inp, 3, gs, None).dequantize();
        assert!(out_err(&x, n, &w, &a, out, inp) <= out_err(&x, n, &w, &b, out, inp) + 1e-12);
    }
}
