//! Fast kernels against the dequantize-then-dot reference, scalar against AVX2, on odd
//! shapes and activations with outliers.

#![allow(clippy::needless_range_loop)]

use super::act_quant::Act;
use super::*;
use crate::tensor::{Bytes, WeightMatrix};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

fn gaussian(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = rng.gen_range(f32::MIN_POSITIVE..1.0);
            let v: f32 = rng.gen_range(0.0..1.0);
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

/// `n` activation rows; row 1 (if any) has a few large outliers, row 2 a zero block.
fn activations(rng: &mut ChaCha8Rng, n: usize, cols: usize) -> Vec<f32> {
    let mut x = gaussian(rng, n * cols);
    if n > 1 {
        for k in 0..4 {
            let c = rng.gen_range(0..cols);
            x[cols + c] = if k % 2 == 0 { 60.0 } else { -45.0 };
        }
    }
    if n > 2 {
        x[2 * cols..2 * cols + 32.min(cols)].fill(0.0);
    }
    x
}

fn weights(rng: &mut ChaCha8Rng, ty: GgmlType, rows: usize, cols: usize) -> WeightMatrix {
    let mut v = gaussian(rng, rows * cols);
    // uneven row scales and a shifted row, so mins/offsets matter
    for r in 0..rows {
        let s = 0.02 * (1.0 + r as f32 % 5.0);
        for c in &mut v[r * cols..(r + 1) * cols] {
            *c *= s;
            if r % 3 == 1 {
                *c += 0.03;
            }
        }
    }
    if ty == GgmlType::F32 {
        return WeightMatrix::from_f32(rows, cols, v);
    }
    let mut bytes = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
    llmq_quant::quantize(ty, &v, cols, None, &mut bytes).unwrap();
    let n = bytes.len();
    WeightMatrix::new(ty, rows, cols, Bytes::new(Arc::new(bytes), 0, n)).unwrap()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|a| a * a).sum::<f32>().sqrt()
}

/// The activations as the kernels see them (quantized, then back to f32).
fn act_roundtrip(act: Act, isa: Isa, x: &[f32], cols: usize) -> Vec<f32> {
    if act == Act::F32 {
        return x.to_vec();
    }
    let rb = act.row_bytes(cols);
    let mut out = Vec::with_capacity(x.len());
    for xr in x.chunks(cols) {
        let mut q = vec![0u8; rb];
        act.quantize(isa, xr, &mut q);
        let (bb, off, bs) = match act {
            Act::Q8_0 => (34, 2, 32),
            Act::Q8_1 => (36, 4, 32),
            _ => (292, 4, 256),
        };
        for b in q.chunks(bb) {
            let d = if act == Act::Q8K {
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            } else {
                f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
            };
            out.extend(b[off..off + bs].iter().map(|&q| d * q as i8 as f32));
        }
    }
    out
}

/// Max over y of |a − b| / (‖w_r‖·‖x_t‖).
fn max_rel(w: &WeightMatrix, x: &[f32], n: usize, a: &[f32], b: &[f32]) -> f32 {
    let wn: Vec<f32> = (0..w.rows).map(|r| norm(&w.row_f32(r))).collect();
    let mut worst = 0.0f32;
    for t in 0..n {
        let xn = norm(&x[t * w.cols..(t + 1) * w.cols]);
        for r in 0..w.rows {
            let i = t * w.rows + r;
            let scale = wn[r] * xn + 1e-20;
            worst = worst.max((a[i] - b[i]).abs() / scale);
            assert!(a[i].is_finite(), "non-finite output");
        }
    }
    worst
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if Isa::Avx2.available() {
        v.push(Isa::Avx2);
    }
    v
}

fn shapes(ty: GgmlType) -> Vec<(usize, usize, usize)> {
    let bs = ty.block_size();
    let cols: Vec<usize> = if bs == 256 {
        vec![256, 768]
    } else if bs == 32 {
        vec![96, 288, 512]
    } else {
        vec![5, 96, 517]
    };
    let mut out = vec![];
    for &c in &cols {
        for &(rows, n) in &[(1, 1), (7, 3), (37, 17), (64, 4), (13, 1)] {
            out.push((rows, c, n));
        }
    }
    out
}

fn act_of(ty: GgmlType) -> Act {
    dispatch::kernel(ty, Isa::Scalar).unwrap().act
}

/// Fast kernels against the reference run on the activations the kernels see: only float
/// summation order differs.
#[test]
fn fast_matches_reference_on_quantized_activations() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &ty in FAST_TYPES {
        for (rows, cols, n) in shapes(ty) {
            let w = weights(&mut rng, ty, rows, cols);
            let x = activations(&mut rng, n, cols);
            for isa in isas() {
                let xq = act_roundtrip(act_of(ty), isa, &x, cols);
                let mut want = vec![0.0; n * rows];
                matmul_reference(&w, &xq, n, &mut want);
                let mut got = vec![f32::NAN; n * rows];
                matmul_with_isa(&w, &x, n, &mut got, isa);
                let e = max_rel(&w, &xq, n, &got, &want);
                // Q8_1's block sum `s` is stored as f16, which the round trip lacks
                let tol = if act_of(ty) == Act::Q8_1 { 5e-4 } else { 2e-5 };
                assert!(
                    e < tol,
                    "{ty:?} {isa:?} {rows}x{cols} n={n}: relative error {e}"
                );
            }
        }
    }
}

/// Fast kernels against the exact-activation reference: the error is that of quantizing
/// the activations to 8 bits (≈ 0.5% of a block's max per value).
#[test]
fn fast_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for &ty in FAST_TYPES {
        let mut worst = 0.0f32;
        for (rows, cols, n) in shapes(ty) {
            let w = weights(&mut rng, ty, rows, cols);
            let x = activations(&mut rng, n, cols);
            let mut want = vec![0.0; n * rows];
            matmul_reference(&w, &x, n, &mut want);
            let mut got = vec![f32::NAN; n * rows];
            matmul(&w, &x, n, &mut got);
            worst = worst.max(max_rel(&w, &x, n, &got, &want));
        }
        let tol = if act_of(ty) == Act::F32 { 1e-5 } else { 1e-2 };
        assert!(worst < tol, "{ty:?}: relative error {worst}");
        eprintln!("{ty:?}: max relative error {worst:.2e}");
    }
}

#[test]
fn scalar_matches_avx2() {
    if !Isa::Avx2.available() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &ty in FAST_TYPES {
        for (rows, cols, n) in shapes(ty) {
            let w = weights(&mut rng, ty, rows, cols);
            let x = activations(&mut rng, n, cols);
            let mut a = vec![0.0; n * rows];
            let mut b = vec![0.0; n * rows];
            matmul_with_isa(&w, &x, n, &mut a, Isa::Scalar);
            matmul_with_isa(&w, &x, n, &mut b, Isa::Avx2);
            let e = max_rel(&w, &x, n, &a, &b);
            assert!(e < 1e-5, "{ty:?} {rows}x{cols} n={n}: {e}");
        }
    }
}

#[test]
fn activation_quantizers_agree() {
    if !Isa::Avx2.available() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for act in [Act::Q8_0, Act::Q8_1, Act::Q8K] {
        for n in [1, 3] {
            let cols = 768;
            let mut x = activations(&mut rng, 3, cols);
            x.truncate(n * cols);
            // exact ties, and a block whose largest magnitude is negative and repeated
            x[5] = 0.5;
            x[40] = -3.0;
            x[41] = 3.0;
            for xr in x.chunks(cols) {
                let mut a = vec![0u8; act.row_bytes(cols)];
                let mut b = vec![1u8; act.row_bytes(cols)];
                act.quantize(Isa::Scalar, xr, &mut a);
                act.quantize(Isa::Avx2, xr, &mut b);
                assert_eq!(a, b, "{act:?}");
            }
        }
    }
}

#[test]
fn matches_ggml_q8_k_reference() {
    // quantize_row_q8_K_ref: iscale = -127/max, d = 1/iscale, bsums.
    let mut x = vec![0.0f32; 256];
    x[3] = -2.0;
    x[7] = 1.0;
    x[200] = 2.0;
    let mut q = vec![0u8; 292];
    Act::Q8K.quantize(Isa::Scalar, &x, &mut q);
    let d = f32::from_le_bytes([q[0], q[1], q[2], q[3]]);
    // max = -2 (first of largest magnitude): iscale = 63.5; 63.5 rounds to even 64
    assert_eq!(d, 1.0 / 63.5);
    assert_eq!(q[4 + 3] as i8, -127);
    assert_eq!(q[4 + 7] as i8, 64);
    assert_eq!(q[4 + 200] as i8, 127);
    assert_eq!(i16::from_le_bytes([q[260], q[261]]), -127 + 64);
    assert_eq!(i16::from_le_bytes([q[260 + 24], q[261 + 24]]), 127);
}

#[test]
fn empty_and_single() {
    let w = WeightMatrix::from_f32(3, 4, (0..12).map(|v| v as f32).collect());
    let mut y = vec![0.0; 3];
    matmul(&w, &[1.0, 0.0, 0.0, 1.0], 1, &mut y);
    assert_eq!(y, vec![3.0, 11.0, 19.0]);
    let mut y: Vec<f32> = vec![];
    matmul(&w, &[], 0, &mut y);
}

#[test]
fn every_quantizable_type_has_a_fast_kernel() {
    for &ty in llmq_quant::QUANTIZABLE {
        assert!(has_fast_kernel(ty), "{ty:?}");
    }
    assert!(!has_fast_kernel(GgmlType::IQ2XXS));
}
