//! The lane-batched (`*_fast`) candidate-scale searches: one candidate scale per SIMD
//! lane, each lane running exactly the scalar sequence of the reference searches in
//! [`super`], so the results are bit-identical; compiled for AVX2 as well and chosen at
//! run time.

use super::*;

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
pub(super) fn affine_search_lanes<const MAD: bool, const LE: bool>(
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
pub(super) fn qx_search_lanes(
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
