//! Scale searches shared by the GGML block quantizers: given a small group of values
//! (and optionally importance weights), pick a scale (and for affine formats a
//! minimum) plus integer levels that minimise a (weighted) error.
//!
//! These are Rust readings of the helper functions in llama.cpp's
//! `ggml/src/ggml-quants.c` (`nearest_int`, `make_qx_quants`, `make_q3_quants`,
//! `make_qkx2_quants`, `make_qkx3_quants`, `make_qp_quants`), as pinned by
//! llama-cpp-python 0.3.36. They reproduce llama.cpp bit for bit: every float is an
//! `f32`, and every sum is accumulated in the same order as the C code (float addition
//! is not associative, and ties between candidate scales are decided by those sums).
//!
//! Bit-exactness also needs llama.cpp built without fused multiply-add contraction in
//! `ggml-quants.c`, which is how it is built by default (that file is in `ggml-base`,
//! compiled without `-march=native`); a `-march=native` build of it rounds differently.
//!
//! Besides the plain (reference) searches, this module has `*_fast` variants of the
//! candidate-scanning searches. They evaluate a batch of candidate scales at once, one
//! candidate per SIMD lane, so each lane still performs exactly the scalar sequence of
//! operations of the reference; their results are bit-identical by construction (and
//! tested so). On x86-64 they are also compiled for AVX2 and picked at run time.

use half::f16;

/// Groups whose largest magnitude is below this are treated as all zero.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to the nearest integer, ties to even, as ggml's `nearest_int`: adds 1.5·2²³ so
/// the integer lands in the low mantissa bits. Only meaningful for |v| ≤ 4194303; larger
/// or non-finite inputs give the same (meaningless but deterministic) value as in C.
#[inline(always)]
pub fn nearest_int(v: f32) -> i32 {
    let biased = v + 12_582_912.0;
    (biased.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// `f32` → IEEE half bits, round-to-nearest-even, as `GGML_FP32_TO_FP16` (which maps
/// every NaN to the quiet NaN `0x7e00` with the input's sign).
#[inline]
pub fn fp32_to_fp16_bits(v: f32) -> u16 {
    if v.is_nan() {
        ((v.to_bits() >> 16) as u16 & 0x8000) | 0x7e00
    } else {
        f16::from_f32(v).to_bits()
    }
}

/// IEEE half bits → `f32` (exact).
#[inline]
pub fn fp16_bits_to_fp32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Round `v` through half precision, as storing then loading a `ggml_half` does.
#[inline]
pub fn round_to_fp16(v: f32) -> f32 {
    fp16_bits_to_fp32(fp32_to_fp16_bits(v))
}

/// The value with the largest magnitude (the first one on ties) and that magnitude.
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let av = v.abs();
        if av > amax {
            amax = av;
            max = v;
        }
    }
    (max, amax)
}

/// Weight given to element `v` by `make_qx_quants` when no explicit weights are passed.
#[inline(always)]
fn qx_default_weight(rmse_type: i32, v: f32) -> f32 {
    match rmse_type {
        1 => v * v,
        2 => 1.0,
        3 => v.abs(),
        _ => v.abs().sqrt(),
    }
}

/// Symmetric quantization of `x` to levels in `-nmax..nmax`, stored offset by `nmax` in
/// `levels` (so `0..2*nmax`). Returns the scale `d` with `x ≈ d·(levels - nmax)`.
/// llama.cpp's `make_qx_quants`.
///
/// `rmse_type` selects the search:
/// * `0`: plain rounding with `d = max/(-nmax)` (the value of largest magnitude maps to `-nmax`);
/// * `1..=4`: least-squares refinement of the scale plus a scan of 18 nearby trial
///   scales, minimising Σ w·(x − d·l)². Without `weights`, w is x² (1), 1 (2), |x| (3)
///   or √|x| (4); with `weights` the given ones are used (whatever the type ≥ 1);
/// * negative: one least-squares step only (type `-rmse_type`), returning the mean of the
///   refined and the plain scale.
pub fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    levels: &mut [i8],
    rmse_type: i32,
    weights: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let levels = &mut levels[..n];
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    if rmse_type == 0 {
        for (l, &v) in levels.iter_mut().zip(x) {
            *l = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let return_early = rmse_type < 0;
    let rmse_type = rmse_type.abs();
    let weight = |i: usize| match weights {
        Some(w) => w[i],
        None => qx_default_weight(rmse_type, x[i]),
    };
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        levels[i] = (l + nmax) as i8;
        let w = weight(i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for (i, &v) in x.iter().enumerate() {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = weight(i);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in levels.iter_mut().zip(x) {
                *l = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quantization for Q3_K's reference path (llama.cpp's `make_q3_quants`):
/// levels `-nmax..nmax` stored offset by `nmax`. With `do_rmse`, starts from plain
/// rounding and then moves single levels (up to 5 sweeps) while that lowers the
/// x²-weighted error of the least-squares scale.
pub fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let levels = &mut levels[..n];
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if !do_rmse {
        for (l, &v) in levels.iter_mut().zip(x) {
            *l = (nearest_int(iscale * v).clamp(-nmax, nmax - 1) + nmax) as i8;
        }
        return 1.0 / iscale;
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        levels[i] = l as i8;
        let w = x[i] * x[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let old = levels[i] as f32;
            let mut slx = sumlx - w * x[i] * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != levels[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in levels.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Weighted error term of one element: |diff| or diff².
#[inline(always)]
fn error_term(diff: f32, use_mad: bool) -> f32 {
    if use_mad {
        diff.abs()
    } else {
        diff * diff
    }
}

/// Shared body of `make_qkx2_quants` / `make_qkx3_quants`; `weight(i)` gives element
/// weights and `degenerate` decides when the group is constant (the two C functions
/// differ only there and in their default weights).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn affine_search(
    nmax: i32,
    x: &[f32],
    weight: impl Fn(usize) -> f32,
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    degenerate: impl Fn(f32, f32) -> bool,
) -> (f32, f32) {
    let n = x.len();
    let levels = &mut levels[..n];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weight(0);
    let mut sum_x = sum_w * x[0];
    for (i, &v) in x.iter().enumerate().skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        let w = weight(i);
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if degenerate(max, min) {
        levels.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weight(i) * error_term(diff, use_mad);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut trial = [0u8; 256];
    let trial = &mut trial[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            trial[i] = l as u8;
            let w = weight(i);
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * trial[i] as f32 + this_min - x[i];
                cur_error += weight(i) * error_term(diff, use_mad);
            }
            if cur_error < best_error {
                levels.copy_from_slice(trial);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Affine quantization `x ≈ scale·l − min_offset`, `l ∈ 0..=nmax` (llama.cpp's
/// `make_qkx2_quants`), used by the k-quants' reference paths. Starts from the range
/// `[min(x,0), max(x)]`, then tries `nstep+1` trial inverse scales
/// `(nmax + rmin + rdelta·k)/(max − min)`, fitting scale and min by weighted least
/// squares for each, and keeps the one with the lowest weighted error (|diff| when
/// `use_mad`, else diff²). At most 256 values.
///
/// Returns `(scale, min_offset)`, where `min_offset = -min ≥ 0`.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let weights = &weights[..x.len()];
    affine_search(
        nmax,
        x,
        |i| weights[i],
        levels,
        rmin,
        rdelta,
        nstep,
        use_mad,
        |max, min| max == min,
    )
}

/// As [`make_qkx2_quants`] but with weights x² when none are given and `max <= min` as
/// the constant-group test (llama.cpp's `make_qkx3_quants`, used by the
/// importance-weighted k-quant paths).
#[allow(clippy::too_many_arguments)]
pub fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    match weights {
        Some(w) => {
            let w = &w[..x.len()];
            affine_search(
                nmax,
                x,
                |i| w[i],
                levels,
                rmin,
                rdelta,
                nstep,
                use_mad,
                |max, min| max <= min,
            )
        }
        None => affine_search(
            nmax,
            x,
            |i| x[i] * x[i],
            levels,
            rmin,
            rdelta,
            nstep,
            use_mad,
            |max, min| max <= min,
        ),
    }
}

/// Quantization of non-negative values (sub-block scales or mins) to `0..=nmax` with a
/// single positive scale (llama.cpp's `make_qp_quants`): scans 8 trial scales around
/// `max/nmax` for the lowest weighted squared error, then moves single levels (up to 5
/// sweeps) while the least-squares fit improves. Returns the scale.
///
/// As in C, levels are stored as bytes, so a negative input wraps (it never happens for
/// the scales and mins the k-quants pass).
pub fn make_qp_quants(nmax: i32, x: &[f32], levels: &mut [u8], weights: &[f32]) -> f32 {
    let n = x.len();
    let levels = &mut levels[..n];
    let weights = &weights[..n];
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * levels[i] as f32;
        best_mse += weights[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    qp_refine(nmax, x, levels, weights, iscale)
}

/// The level-moving refinement that ends `make_qp_quants`, from inverse scale `iscale`.
fn qp_refine(nmax: i32, x: &[f32], levels: &mut [u8], weights: &[f32], iscale: f32) -> f32 {
    let n = x.len();
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        levels[i] = l as u8;
        // The first sums use the unwrapped level, the sweeps the stored byte (as in C).
        let w = weights[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = weights[i];
            let old = levels[i] as f32;
            let mut slx = sumlx - w * x[i] * old;
            let mut sl2 = suml2 - w * old * old;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != levels[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------
// Fast variants: candidates in lanes.
//
// The trial scales of the searches above are independent of each other except through
// the running "best" (and, for the affine search, through `min`, which an accepted
// trial replaces). The fast variants therefore evaluate a batch of trials together,
// one trial per lane, each lane accumulating over the elements in the same order as
// the scalar loop, and then accept trials in the scalar order. A lane's arithmetic is
// exactly the scalar one, so the result is bit-identical; the lanes make the loops
// vectorise and break the long add-latency chains of the scalar code.
// ---------------------------------------------------------------------------------

/// Trials evaluated together by the fast affine search (fewer once fewer remain).
/// Measured on AVX2: 16 lanes beat 4, 8, 24 and 32 by 1.3-2x.
const LANES: usize = 16;

/// Groups up to this size keep the first pass's levels for the error pass of a batch.
const KEPT_ROWS: usize = 32;

/// Largest group the fast searches accept (they use fixed stack buffers).
pub const MAX_GROUP: usize = 256;

/// Least-squares fit of one batch of affine trials.
struct AffineBatch<const L: usize> {
    iscale: [f32; L],
    det: [f32; L],
    scale: [f32; L],
    min: [f32; L],
    error: [f32; L],
}

/// The running result of the affine search between batches.
struct AffineState {
    min: f32,
    best_error: f32,
    scale: f32,
    /// The accepted trial whose levels are kept: its inverse scale and the min it used.
    accepted: Option<(f32, f32)>,
}

impl AffineState {
    /// Accept the batch's trials in order, as the scalar loop would; returns the first
    /// trial still to evaluate (the one after an accepted trial that moved `min`, since
    /// later trials depend on it).
    #[inline(always)]
    fn accept<const L: usize>(&mut self, batch: &AffineBatch<L>, first: i32, nstep: i32) -> i32 {
        for k in 0..L {
            let step = first + k as i32;
            if step > nstep {
                break;
            }
            if batch.det[k] > 0.0 && batch.error[k] < self.best_error {
                self.best_error = batch.error[k];
                self.scale = batch.scale[k];
                self.accepted = Some((batch.iscale[k], self.min));
                if batch.min[k].to_bits() != self.min.to_bits() {
                    self.min = batch.min[k];
                    return step + 1;
                }
            }
        }
        first + L as i32
    }
}

/// Evaluate trials `first..first+L` of the affine search at the current `min`/`max`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn affine_batch<const MAD: bool, const L: usize>(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    sums: (f32, f32),
    min: f32,
    max: f32,
    rmin: f32,
    rdelta: f32,
    first: i32,
) -> AffineBatch<L> {
    let (sum_w, sum_x) = sums;
    let w = &w[..x.len()];
    let mut iscale = [0.0f32; L];
    for (k, v) in iscale.iter_mut().enumerate() {
        *v = (rmin + rdelta * (first + k as i32) as f32 + nmax as f32) / (max - min);
    }
    // Levels of the first pass, kept for the error pass when the group is small enough.
    let mut kept = [[0.0f32; L]; KEPT_ROWS];
    let keep = x.len() <= KEPT_ROWS;
    let mut sum_l = [0.0f32; L];
    let mut sum_l2 = [0.0f32; L];
    let mut sum_xl = [0.0f32; L];
    for (i, (&xi, &wi)) in x.iter().zip(w).enumerate() {
        let xm = xi - min;
        for k in 0..L {
            let l = nearest_int(iscale[k] * xm).min(nmax).max(0) as f32;
            if keep {
                kept[i][k] = l;
            }
            let wl = wi * l;
            sum_l[k] += wl;
            sum_l2[k] += wl * l;
            sum_xl[k] += wl * xi;
        }
    }
    let mut det = [0.0f32; L];
    let mut scale = [0.0f32; L];
    let mut tmin = [0.0f32; L];
    for k in 0..L {
        det[k] = sum_w * sum_l2[k] - sum_l[k] * sum_l[k];
        scale[k] = (sum_w * sum_xl[k] - sum_x * sum_l[k]) / det[k];
        tmin[k] = (sum_l2[k] * sum_x - sum_l[k] * sum_xl[k]) / det[k];
        if tmin[k] > 0.0 {
            tmin[k] = 0.0;
            scale[k] = sum_xl[k] / sum_l2[k];
        }
    }
    let mut error = [0.0f32; L];
    if keep {
        for (i, (&xi, &wi)) in x.iter().zip(w).enumerate() {
            for k in 0..L {
                let diff = scale[k] * kept[i][k] + tmin[k] - xi;
                error[k] += wi * if MAD { diff.abs() } else { diff * diff };
            }
        }
    } else {
        for (&xi, &wi) in x.iter().zip(w) {
            let xm = xi - min;
            for k in 0..L {
                let l = nearest_int(iscale[k] * xm).min(nmax).max(0) as f32;
                let diff = scale[k] * l + tmin[k] - xi;
                error[k] += wi * if MAD { diff.abs() } else { diff * diff };
            }
        }
    }
    AffineBatch {
        iscale,
        det,
        scale,
        min: tmin,
        error,
    }
}

/// The lane-parallel affine search. `LE` selects `make_qkx3_quants`' constant-group test
/// (`max <= min`) over `make_qkx2_quants`' (`max == min`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn affine_search_lanes<const MAD: bool, const LE: bool>(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    assert!(
        n <= MAX_GROUP && w.len() >= n,
        "fast affine search: group of {n} values"
    );
    let levels = &mut levels[..n];
    let w = &w[..n];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if (LE && max <= min) || (!LE && max == min) {
        levels.fill(0);
        return (0.0, -min);
    }
    let iscale0 = nmax as f32 / (max - min);
    let scale = 1.0 / iscale0;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale0 * (x[i] - min)).min(nmax).max(0);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += w[i] * if MAD { diff.abs() } else { diff * diff };
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut search = AffineState {
        min,
        best_error,
        scale,
        accepted: None,
    };
    let mut first = 0;
    while first <= nstep {
        first = if nstep + 1 - first > (LANES / 2) as i32 {
            let batch = affine_batch::<MAD, LANES>(
                nmax,
                x,
                w,
                (sum_w, sum_x),
                search.min,
                max,
                rmin,
                rdelta,
                first,
            );
            search.accept(&batch, first, nstep)
        } else {
            let batch = affine_batch::<MAD, { LANES / 2 }>(
                nmax,
                x,
                w,
                (sum_w, sum_x),
                search.min,
                max,
                rmin,
                rdelta,
                first,
            );
            search.accept(&batch, first, nstep)
        };
    }
    let AffineState {
        min,
        scale,
        accepted,
        ..
    } = search;
    if let Some((iscale, trial_min)) = accepted {
        for (l, &v) in levels.iter_mut().zip(x) {
            *l = nearest_int(iscale * (v - trial_min)).min(nmax).max(0) as u8;
        }
    }
    (scale, -min)
}

/// Whether the running CPU has AVX2 (std caches the detection).
#[inline]
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::isa::avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`affine_search_lanes`] compiled for AVX2 (8 lanes in one register, native 32-bit
/// integer min/max). Only instruction selection changes: Rust never contracts `a*b + c`
/// into a fused multiply-add, so every lane still rounds exactly as the scalar code.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn affine_search_avx2<const MAD: bool, const LE: bool>(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    affine_search_lanes::<MAD, LE>(nmax, x, w, levels, rmin, rdelta, nstep)
}

#[allow(clippy::too_many_arguments)]
fn affine_search_fast<const MAD: bool, const LE: bool>(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { affine_search_avx2::<MAD, LE>(nmax, x, w, levels, rmin, rdelta, nstep) };
    }
    affine_search_lanes::<MAD, LE>(nmax, x, w, levels, rmin, rdelta, nstep)
}

/// Same result as [`make_qkx2_quants`], bit for bit, evaluating trials in lanes.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants_fast(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    if use_mad {
        affine_search_fast::<true, false>(nmax, x, weights, levels, rmin, rdelta, nstep)
    } else {
        affine_search_fast::<false, false>(nmax, x, weights, levels, rmin, rdelta, nstep)
    }
}

/// Same result as [`make_qkx3_quants`], bit for bit, evaluating trials in lanes.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx3_quants_fast(
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    assert!(n <= MAX_GROUP, "fast affine search: group of {n} values");
    let mut squares = [0.0f32; MAX_GROUP];
    let w = match weights {
        Some(w) => &w[..n],
        None => {
            for (s, &v) in squares.iter_mut().zip(x) {
                *s = v * v;
            }
            &squares[..n]
        }
    };
    if use_mad {
        affine_search_fast::<true, true>(nmax, x, w, levels, rmin, rdelta, nstep)
    } else {
        affine_search_fast::<false, true>(nmax, x, w, levels, rmin, rdelta, nstep)
    }
}

/// The 18 trial offsets of `make_qx_quants`, in the order it tries them.
const QX_TRIALS: [i32; 18] = [
    -9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9,
];

/// Same result as [`make_qx_quants`], bit for bit, evaluating the trial scales in lanes.
pub fn make_qx_quants_fast(
    nmax: i32,
    x: &[f32],
    levels: &mut [i8],
    rmse_type: i32,
    weights: Option<&[f32]>,
) -> f32 {
    if rmse_type <= 0 || x.len() > MAX_GROUP {
        return make_qx_quants(nmax, x, levels, rmse_type, weights);
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { qx_search_avx2(nmax, x, levels, rmse_type, weights) };
    }
    qx_search_lanes(nmax, x, levels, rmse_type, weights)
}

/// [`qx_search_lanes`] compiled for AVX2; see [`affine_search_avx2`].
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn qx_search_avx2(
    nmax: i32,
    x: &[f32],
    levels: &mut [i8],
    rmse_type: i32,
    weights: Option<&[f32]>,
) -> f32 {
    qx_search_lanes(nmax, x, levels, rmse_type, weights)
}

/// The body of [`make_qx_quants_fast`] for `rmse_type > 0`: the 18 trial scales in lanes.
#[inline(always)]
fn qx_search_lanes(
    nmax: i32,
    x: &[f32],
    levels: &mut [i8],
    rmse_type: i32,
    weights: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let levels = &mut levels[..n];
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    // Per-element weight w and product w·x, exactly as the scalar loop forms them.
    let mut w = [0.0f32; MAX_GROUP];
    let mut wx = [0.0f32; MAX_GROUP];
    for i in 0..n {
        w[i] = match weights {
            Some(q) => q[i],
            None => qx_default_weight(rmse_type, x[i]),
        };
        wx[i] = w[i] * x[i];
    }
    let (w, wx) = (&w[..n], &wx[..n]);
    let iscale0 = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale0 * x[i]).clamp(-nmax, nmax - 1);
        levels[i] = (l + nmax) as i8;
        let lf = l as f32;
        sumlx += wx[i] * lf;
        suml2 += w[i] * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    // 24 lanes (three AVX2 registers); the last 6 repeat trial 0's scale and are ignored.
    const B: usize = 24;
    let mut iscale = [0.0f32; B];
    for (v, &is) in iscale
        .iter_mut()
        .zip(QX_TRIALS.iter().chain([QX_TRIALS[0]; 6].iter()))
    {
        *v = -(nmax as f32 + 0.1 * is as f32) / max;
    }
    let mut slx = [0.0f32; B];
    let mut sl2 = [0.0f32; B];
    for i in 0..n {
        let (xi, wi, wxi) = (x[i], w[i], wx[i]);
        for k in 0..B {
            let l = nearest_int(iscale[k] * xi).min(nmax - 1).max(-nmax) as f32;
            slx[k] += wxi * l;
            sl2[k] += wi * l * l;
        }
    }
    let mut accepted = None;
    for k in 0..QX_TRIALS.len() {
        if sl2[k] > 0.0 && slx[k] * slx[k] > best * sl2[k] {
            scale = slx[k] / sl2[k];
            best = scale * slx[k];
            accepted = Some(iscale[k]);
        }
    }
    if let Some(iscale) = accepted {
        for (l, &v) in levels.iter_mut().zip(x) {
            *l = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as i8;
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (0.49999997, 0),
            (3.7, 4),
            (-3.7, -4),
        ];
        for (v, want) in cases {
            assert_eq!(nearest_int(v), want, "{v}");
        }
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn fp16_conversion_matches_ggml_conventions() {
        assert_eq!(fp32_to_fp16_bits(1.0), 0x3c00);
        assert_eq!(fp32_to_fp16_bits(65504.0), 0x7bff);
        assert_eq!(fp32_to_fp16_bits(65520.0), 0x7c00); // rounds up to infinity
        assert_eq!(fp32_to_fp16_bits(f32::NAN), 0x7e00);
        assert_eq!(fp32_to_fp16_bits(-f32::NAN), 0xfe00);
        assert_eq!(fp32_to_fp16_bits(5.960_464_5e-8), 0x0001); // smallest subnormal
        assert_eq!(round_to_fp16(0.1), 0.099_975_586);
    }

    /// Groups that exercise the searches: Gaussian, all-positive, constant, zero, one
    /// spike, values on a grid (many ties), tiny and huge magnitudes.
    fn group(rng: &mut ChaCha8Rng, kind: usize, n: usize) -> Vec<f32> {
        let sigma = 10f32.powf(rng.gen_range(-8.0..4.0));
        let mut x: Vec<f32> = (0..n)
            .map(|_| sigma * (rng.gen::<f32>() - 0.5) * 3.0)
            .collect();
        match kind % 8 {
            0 => {}
            1 => x.iter_mut().for_each(|v| *v = v.abs() + sigma),
            2 => x.fill(-sigma),
            3 => x.fill(0.0),
            4 => {
                x.fill(0.0);
                x[n / 3] = sigma;
            }
            5 => x
                .iter_mut()
                .for_each(|v| *v = (*v / sigma * 4.0).round() * sigma / 4.0),
            6 => x.iter_mut().for_each(|v| *v *= 1e-30),
            _ => x.iter_mut().for_each(|v| *v = v.abs()),
        }
        x
    }

    #[test]
    fn fast_affine_searches_equal_scalar() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        // (nmax, rmin, rdelta, nstep, use_mad) as used by Q2_K..Q5_K, Q4_1, Q5_1, plus
        // odd step counts.
        let params = [
            (3, -0.5, 0.1, 15, true),
            (3, -0.9, 0.05, 36, false),
            (15, -1.0, 0.1, 20, false),
            (31, -0.5, 0.1, 15, false),
            (15, -0.9, 0.05, 36, false),
            (31, -0.9, 0.05, 36, true),
            (7, -0.3, 0.07, 3, false),
            (15, -1.0, 0.1, 0, false),
        ];
        for trial in 0..4000 {
            let n = [16, 32, 8, 64, 256][trial % 5];
            let x = group(&mut rng, trial / 5, n);
            let w: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 7 == 3 {
                        0.0
                    } else {
                        rng.gen_range(0.0..4.0)
                    }
                })
                .collect();
            for &(nmax, rmin, rdelta, nstep, mad) in &params {
                let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                let r = make_qkx2_quants(nmax, &x, &w, &mut a, rmin, rdelta, nstep, mad);
                let f = make_qkx2_quants_fast(nmax, &x, &w, &mut b, rmin, rdelta, nstep, mad);
                assert_eq!(
                    (r.0.to_bits(), r.1.to_bits(), &a),
                    (f.0.to_bits(), f.1.to_bits(), &b),
                    "qkx2 {trial}"
                );
                for weights in [None, Some(&w[..])] {
                    let r = make_qkx3_quants(nmax, &x, weights, &mut a, rmin, rdelta, nstep, mad);
                    let f =
                        make_qkx3_quants_fast(nmax, &x, weights, &mut b, rmin, rdelta, nstep, mad);
                    assert_eq!(
                        (r.0.to_bits(), r.1.to_bits(), &a),
                        (f.0.to_bits(), f.1.to_bits(), &b),
                        "qkx3 {trial}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_symmetric_search_equals_scalar() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        for trial in 0..4000 {
            let n = [16, 32, 8, 256][trial % 4];
            let x = group(&mut rng, trial / 4, n);
            let w: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 5 == 1 {
                        0.0
                    } else {
                        rng.gen_range(0.0..4.0)
                    }
                })
                .collect();
            for nmax in [4, 8, 16, 32] {
                for rmse_type in [-1, 0, 1, 2, 3, 4] {
                    for weights in [None, Some(&w[..])] {
                        let (mut a, mut b) = (vec![0i8; n], vec![0i8; n]);
                        let r = make_qx_quants(nmax, &x, &mut a, rmse_type, weights);
                        let f = make_qx_quants_fast(nmax, &x, &mut b, rmse_type, weights);
                        assert_eq!(
                            (r.to_bits(), &a),
                            (f.to_bits(), &b),
                            "qx {trial} nmax {nmax} type {rmse_type}"
                        );
                    }
                }
            }
        }
    }

    /// The tests above take the AVX2 build of the lane searches on machines that have
    /// it; this one runs the portable build directly.
    #[test]
    fn portable_lane_searches_equal_scalar() {
        let mut rng = ChaCha8Rng::seed_from_u64(29);
        for trial in 0..2000 {
            let n = [16, 32, 256][trial % 3];
            let x = group(&mut rng, trial / 3, n);
            let w: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0..4.0)).collect();
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            let r = make_qkx2_quants(15, &x, &w, &mut a, -1.0, 0.1, 20, false);
            let f = affine_search_lanes::<false, false>(15, &x, &w, &mut b, -1.0, 0.1, 20);
            assert_eq!(
                (r.0.to_bits(), r.1.to_bits(), &a),
                (f.0.to_bits(), f.1.to_bits(), &b),
                "qkx2 {trial}"
            );
            let r = make_qkx3_quants(3, &x, Some(&w), &mut a, -0.9, 0.05, 36, true);
            let f = affine_search_lanes::<true, true>(3, &x, &w, &mut b, -0.9, 0.05, 36);
            assert_eq!(
                (r.0.to_bits(), r.1.to_bits(), &a),
                (f.0.to_bits(), f.1.to_bits(), &b),
                "qkx3 {trial}"
            );
            let (mut a, mut b) = (vec![0i8; n], vec![0i8; n]);
            let r = make_qx_quants(32, &x, &mut a, 1, Some(&w));
            let f = qx_search_lanes(32, &x, &mut b, 1, Some(&w));
            assert_eq!((r.to_bits(), &a), (f.to_bits(), &b), "qx {trial}");
        }
    }

    #[test]
    fn searches_reconstruct_simple_groups() {
        // Values exactly on a symmetric grid are reproduced exactly.
        let x: Vec<f32> = (0..16).map(|i| (i % 8) as f32 - 4.0).collect();
        let mut l = [0i8; 16];
        let d = make_qx_quants(4, &x, &mut l, 1, None);
        for (v, q) in x.iter().zip(l) {
            assert_eq!(d * (q as i32 - 4) as f32, *v);
        }
        // An affine grid is reproduced to rounding.
        let x: Vec<f32> = (0..32).map(|i| 0.25 * (i % 16) as f32 - 1.0).collect();
        let mut l = [0u8; 32];
        let (scale, min) = make_qkx2_quants(15, &x, &[1.0; 32], &mut l, -1.0, 0.1, 20, false);
        for (v, q) in x.iter().zip(l) {
            assert!(
                (scale * q as f32 - min - v).abs() < 1e-6,
                "{v} vs {}",
                scale * q as f32 - min
            );
        }
        // Non-negative scales: levels are in range and the fit is close.
        let s = [0.5f32, 1.0, 0.25, 0.75, 0.0, 1.0, 0.125, 0.9];
        let mut l = [0u8; 8];
        let d = make_qp_quants(63, &s, &mut l, &[1.0; 8]);
        for (v, q) in s.iter().zip(l) {
            assert!(q <= 63 && (d * q as f32 - v).abs() <= 0.5 * d + 1e-6);
        }
        // All-zero groups give zero scales and levels.
        let mut l = [7i8; 16];
        assert_eq!(make_q3_quants(4, &[0.0; 16], &mut l, true), 0.0);
        assert_eq!(l, [0; 16]);
    }
}
