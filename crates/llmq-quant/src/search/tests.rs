//! Tests of the scale searches: the fast variants against the references, bit for bit.

use super::lanes::{affine_search_lanes, qx_search_lanes};
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
                let f = make_qkx3_quants_fast(nmax, &x, weights, &mut b, rmin, rdelta, nstep, mad);
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
