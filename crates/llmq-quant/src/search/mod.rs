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

mod lanes;
pub use lanes::{make_qkx2_quants_fast, make_qkx3_quants_fast, make_qx_quants_fast, MAX_GROUP};

#[cfg(test)]
mod tests;
