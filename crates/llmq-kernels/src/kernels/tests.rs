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
    } else if bs == 64 {
        vec![64, 192, 512]
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
    // and the other way: a kernel row without a dequantizer would leave the reference
    // path (and `row_f32`) unable to read the weights.
    for &ty in FAST_TYPES {
        assert!(llmq_quant::is_quantizable(ty), "{ty:?}");
        assert!(crate::dequant::computes(ty), "{ty:?}");
    }
}

#[test]
fn types_nothing_computes_are_refused_when_the_matrix_is_built() {
    use crate::error::KernelError;
    use std::sync::Arc;
    for ty in [
        GgmlType::IQ2XXS,
        GgmlType::IQ1M,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
    ] {
        let n = ty.row_bytes(256).unwrap() * 2;
        let data = Bytes::whole(Arc::new(vec![0u8; n]));
        let err = WeightMatrix::new(ty, 2, 256, data).unwrap_err();
        assert_eq!(err, KernelError::UnsupportedType(ty));
        assert!(err.to_string().contains(ty.name()), "{err}");
        let mut out = [0.0f32; 256];
        assert_eq!(
            crate::dequant::try_dequantize_row(ty, &vec![0u8; n / 2], &mut out),
            Err(KernelError::UnsupportedType(ty))
        );
    }
    // a computable type with bytes that do not fit is a layout error
    let data = Bytes::whole(Arc::new(vec![0u8; 10]));
    let err = WeightMatrix::new(GgmlType::Q4_0, 1, 32, data).unwrap_err();
    assert!(matches!(err, KernelError::Layout(_)), "{err:?}");
}

// ---- group-wise integer weights (GPTQ / AWQ / compressed-tensors) ----

use crate::int_blocks::IntGroups;
use crate::tensor::IntAct;

/// A random integer weight: codes, f16 scales, zeros (mid when symmetric), and the group
/// of each column (`gs` columns per group in order, or shuffled like GPTQ act-order).
struct RandInt {
    bits: u8,
    rows: usize,
    cols: usize,
    q: Vec<u8>,
    scales: Vec<f16>,
    zeros: Vec<u8>,
    n_groups: usize,
    g_idx: Vec<u32>,
}

impl RandInt {
    fn new(
        rng: &mut ChaCha8Rng,
        bits: u8,
        rows: usize,
        cols: usize,
        gs: Option<usize>,
        sym: bool,
        act_order: bool,
    ) -> RandInt {
        let maxq = (1u32 << bits) - 1;
        let gs = gs.unwrap_or(cols);
        let n_groups = cols.div_ceil(gs);
        let mut g_idx: Vec<u32> = (0..cols).map(|i| (i / gs) as u32).collect();
        if act_order {
            // GPTQ desc_act: g_idx[perm[i]] = i / gs for a random column permutation
            let mut perm: Vec<usize> = (0..cols).collect();
            for i in (1..cols).rev() {
                perm.swap(i, rng.gen_range(0..=i));
            }
            for (i, &p) in perm.iter().enumerate() {
                g_idx[p] = (i / gs) as u32;
            }
        }
        RandInt {
            bits,
            rows,
            cols,
            q: (0..rows * cols)
                .map(|_| rng.gen_range(0..=maxq) as u8)
                .collect(),
            scales: (0..rows * n_groups)
                .map(|_| f16::from_f32(rng.gen_range(0.001f32..0.05)))
                .collect(),
            zeros: (0..rows * n_groups)
                .map(|_| {
                    if sym {
                        1u8 << (bits - 1)
                    } else {
                        rng.gen_range(0..=maxq) as u8
                    }
                })
                .collect(),
            n_groups,
            g_idx,
        }
    }

    fn groups(&self) -> IntGroups<'_> {
        IntGroups {
            bits: self.bits,
            rows: self.rows,
            cols: self.cols,
            q: &self.q,
            scales: &self.scales,
            zeros: &self.zeros,
            n_groups: self.n_groups,
            group_of_col: &self.g_idx,
        }
    }

    /// `w[o][i] = s[o][g_idx[i]] · (q[o][i] − z[o][g_idx[i]])`, in f32.
    fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0.0; self.rows * self.cols];
        for o in 0..self.rows {
            for i in 0..self.cols {
                let g = o * self.n_groups + self.g_idx[i] as usize;
                let q = self.q[o * self.cols + i] as f32;
                w[o * self.cols + i] = self.scales[g].to_f32() * (q - self.zeros[g] as f32);
            }
        }
        w
    }
}

/// `y = x · Wᵀ` in f64.
fn dense_matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0.0; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let mut s = 0.0f64;
            for c in 0..cols {
                s += x[t * cols + c] as f64 * w[r * cols + c] as f64;
            }
            y[t * rows + r] = s as f32;
        }
    }
    y
}

/// Max |a − b| / (‖w_r‖·‖x_t‖) for a dense `w`.
fn max_rel_dense(w: &[f32], rows: usize, cols: usize, x: &[f32], a: &[f32], b: &[f32]) -> f32 {
    let n = x.len() / cols;
    let mut worst = 0.0f32;
    for t in 0..n {
        let xn = norm(&x[t * cols..(t + 1) * cols]);
        for r in 0..rows {
            let i = t * rows + r;
            assert!(a[i].is_finite() && b[i].is_finite(), "non-finite output");
            let scale = norm(&w[r * cols..(r + 1) * cols]) * xn + 1e-20;
            worst = worst.max((a[i] - b[i]).abs() / scale);
        }
    }
    worst
}

/// Every supported combination: bits × group size × sym/asym × act-order.
fn int_cases() -> Vec<(u8, Option<usize>, bool, bool)> {
    let mut v = vec![];
    for bits in [2u8, 3, 4, 8] {
        for gs in [Some(32), Some(64), Some(128), None, Some(48), Some(16)] {
            for sym in [true, false] {
                for act_order in [false, true] {
                    v.push((bits, gs, sym, act_order));
                }
            }
        }
    }
    v
}

/// Repacking is lossless: the matrix dequantizes to exactly the checkpoint formula, and
/// the exact (f32-activation) product equals `x · dequant(W)ᵀ` to f32 rounding.
#[test]
fn int_weights_dequantize_exactly_and_f32_product_matches() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (rows, cols) = (13, 384);
    for (bits, gs, sym, ao) in int_cases() {
        let ri = RandInt::new(&mut rng, bits, rows, cols, gs, sym, ao);
        let want_w = ri.dequantize();
        let w = WeightMatrix::from_int_groups(&ri.groups(), IntAct::F32).unwrap();
        let case = format!(
            "bits {bits} group {gs:?} sym {sym} act-order {ao} ({:?})",
            w.ty
        );
        assert_eq!(w.to_f32(), want_w, "{case}: dequantized values");
        let aligned = gs.is_none_or(|g| g % 32 == 0);
        assert_eq!(w.ty.block_size() == 32, aligned, "{case}: block length");
        assert_eq!(
            w.col_order.is_some(),
            ao && gs.is_some(),
            "{case}: column order"
        );
        for n in [1, 5] {
            let x = activations(&mut rng, n, cols);
            let want = dense_matmul(&want_w, rows, cols, &x, n);
            for isa in isas() {
                let mut got = vec![f32::NAN; n * rows];
                matmul_with_isa(&w, &x, n, &mut got, isa);
                let e = max_rel_dense(&want_w, rows, cols, &x, &got, &want);
                assert!(e < 1e-6, "{case} {isa:?} n={n}: relative error {e}");
            }
        }
    }
}

/// The Q8_0-activation kernels (scalar and AVX2) equal the product with the activations
/// they see (quantized per 32 stored columns) to float rounding, and each other.
#[test]
fn int_weights_q8_0_kernels_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (rows, cols) = (37, 256);
    for (bits, gs, sym, ao) in int_cases() {
        if gs.is_some_and(|g| g % 32 != 0) || cols % gs.unwrap_or(32) != 0 {
            continue; // these run in f32 (tested above)
        }
        let ri = RandInt::new(&mut rng, bits, rows, cols, gs, sym, ao);
        let want_w = ri.dequantize();
        let w = WeightMatrix::from_int_groups(&ri.groups(), IntAct::Q8_0).unwrap();
        let case = format!("bits {bits} group {gs:?} sym {sym} act-order {ao}");
        for n in [1, 3, 6] {
            let x = activations(&mut rng, n, cols);
            let mut per_isa = vec![];
            for isa in isas() {
                // activations as the kernel sees them: gathered, Q8_0 round trip, scattered
                let perm: Vec<usize> = match &w.col_order {
                    Some(o) => o.perm_of_row(0).iter().map(|&c| c as usize).collect(),
                    None => (0..cols).collect(),
                };
                let xp: Vec<f32> = (0..n * cols)
                    .map(|k| x[k / cols * cols + perm[k % cols]])
                    .collect();
                let xpq = act_roundtrip(Act::Q8_0, isa, &xp, cols);
                let mut xq = vec![0.0; n * cols];
                for k in 0..n * cols {
                    xq[k / cols * cols + perm[k % cols]] = xpq[k];
                }
                let want = dense_matmul(&want_w, rows, cols, &xq, n);
                let mut got = vec![f32::NAN; n * rows];
                matmul_with_isa(&w, &x, n, &mut got, isa);
                let e = max_rel_dense(&want_w, rows, cols, &xq, &got, &want);
                assert!(e < 2e-6, "{case} {isa:?} n={n}: relative error {e}");
                // and against exact activations: the 8-bit activation error only
                let exact = dense_matmul(&want_w, rows, cols, &x, n);
                let e = max_rel_dense(&want_w, rows, cols, &x, &got, &exact);
                assert!(e < 1e-2, "{case} {isa:?} n={n}: error vs exact {e}");
                per_isa.push(got);
            }
            if per_isa.len() == 2 {
                let e = max_rel_dense(&want_w, rows, cols, &x, &per_isa[0], &per_isa[1]);
                assert!(e < 2e-6, "{case} n={n}: scalar vs AVX2 {e}");
            }
        }
    }
}

/// Stacked act-order experts, row ranges and row permutations keep each row's order.
#[test]
fn int_weights_stack_and_permute_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (rows, cols, n) = (16, 256, 3);
    let parts: Vec<RandInt> = (0..3)
        .map(|e| RandInt::new(&mut rng, 4, rows, cols, Some(64), false, e != 1))
        .collect();
    let mats: Vec<WeightMatrix> = parts
        .iter()
        .map(|p| WeightMatrix::from_int_groups(&p.groups(), IntAct::Q8_0).unwrap())
        .collect();
    let stacked = WeightMatrix::stack_rows(&mats).unwrap();
    let x = activations(&mut rng, n, cols);
    let mut y = vec![0.0; n * 3 * rows];
    matmul(&stacked, &x, n, &mut y);
    for (e, m) in mats.iter().enumerate() {
        let mut ye = vec![0.0; n * rows];
        matmul(m, &x, n, &mut ye);
        let mut yr = vec![0.0; n * rows];
        matmul(&stacked.row_range(e * rows, rows), &x, n, &mut yr);
        assert_eq!(ye, yr, "expert {e} via row_range");
        for t in 0..n {
            assert_eq!(
                &y[t * 3 * rows + e * rows..t * 3 * rows + (e + 1) * rows],
                &ye[t * rows..(t + 1) * rows],
                "expert {e} in the stacked product"
            );
        }
        assert_eq!(
            stacked.row_range(e * rows, rows).to_f32(),
            parts[e].dequantize()
        );
    }
    let order: Vec<usize> = (0..rows).rev().collect();
    let p = mats[0].permute_rows(&order).unwrap();
    let (a, b) = (p.to_f32(), mats[0].to_f32());
    for r in 0..rows {
        assert_eq!(
            a[r * cols..(r + 1) * cols],
            b[order[r] * cols..(order[r] + 1) * cols]
        );
    }
}

/// A token's output row does not depend on how many tokens share the call (the 4-row
/// kernels sum in the same order as the 1-row ones): batched serving and prompt
/// processing give the same numbers as one token at a time, bit for bit.
#[test]
fn rows_are_independent_of_batch_size() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for isa in isas() {
        for &ty in FAST_TYPES {
            let cols = match ty.block_size() {
                256 => 512,
                64 => 192,
                32 => 160,
                _ => 165,
            };
            let rows = 7;
            let w = weights(&mut rng, ty, rows, cols);
            let n = 9;
            let x = activations(&mut rng, n, cols);
            let mut all = vec![0.0f32; n * rows];
            matmul_with_isa(&w, &x, n, &mut all, isa);
            for t in 0..n {
                let mut one = vec![0.0f32; rows];
                matmul_with_isa(&w, &x[t * cols..(t + 1) * cols], 1, &mut one, isa);
                assert!(
                    one.iter()
                        .zip(&all[t * rows..(t + 1) * rows])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{ty:?} {isa:?} token {t}: {one:?} vs {:?}",
                    &all[t * rows..(t + 1) * rows]
                );
            }
        }
    }
}

/// Long rows (one 8-token group per L2 panel) and several row chunks through the
/// tiled prompt path: every token still gets the one-token bits.
#[test]
fn tiled_prompts_across_panels_and_chunks_are_batch_invariant() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let isa = Isa::detect();
    let types = [
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ4XS,
    ];
    for ty in types {
        let (rows, cols, n) = (37, 32 * 1024, 17);
        let w = weights(&mut rng, ty, rows, cols);
        let x = activations(&mut rng, n, cols);
        let mut all = vec![0.0f32; n * rows];
        matmul_with_isa(&w, &x, n, &mut all, isa);
        for t in 0..n {
            let mut one = vec![0.0f32; rows];
            matmul_with_isa(&w, &x[t * cols..(t + 1) * cols], 1, &mut one, isa);
            let same = one
                .iter()
                .zip(&all[t * rows..(t + 1) * rows])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty:?} {isa:?} token {t}");
        }
    }
}

/// The 8-row kernels (AVX2 `maddubs` and AVX-VNNI `vpdpbusd`) give each row exactly
/// what the 1-row kernel gives it, on random block bytes with extreme quants (Q8_0
/// weights of −128 and 127, activations of ±127), where a saturating pair sum would
/// show.
#[cfg(target_arch = "x86_64")]
#[test]
fn eight_row_kernels_equal_the_one_row_kernel_at_extreme_values() {
    use super::dot_legacy::{avx2 as l2, interleave8};
    if !Isa::Avx2.available() {
        return;
    }
    let vnni = is_x86_feature_detected!("avxvnni");
    type One = fn(&[u8], &[u8]) -> f32;
    type Eight = fn(&[u8], &[u8]) -> [f32; 8];
    /// name, weight block bytes, activation block bytes, offsets of the weight's f16
    /// `d` (and `m`), then the 1-row, 8-row and 8-row VNNI kernels
    type Case = (
        &'static str,
        usize,
        usize,
        &'static [usize],
        One,
        Eight,
        Eight,
    );
    let cases: [Case; 6] = [
        (
            "q4_0",
            18,
            34,
            &[0],
            l2::dot_q4_0,
            l2::dot8_q4_0,
            l2::dot8_vnni_q4_0,
        ),
        (
            "q4_1",
            20,
            36,
            &[0, 2],
            l2::dot_q4_1,
            l2::dot8_q4_1,
            l2::dot8_vnni_q4_1,
        ),
        (
            "q5_0",
            22,
            34,
            &[0],
            l2::dot_q5_0,
            l2::dot8_q5_0,
            l2::dot8_vnni_q5_0,
        ),
        (
            "q5_1",
            24,
            36,
            &[0, 2],
            l2::dot_q5_1,
            l2::dot8_q5_1,
            l2::dot8_vnni_q5_1,
        ),
        (
            "q8_0",
            34,
            34,
            &[0],
            l2::dot_q8_0,
            l2::dot8_q8_0,
            l2::dot8_vnni_q8_0,
        ),
        (
            "iq4_nl",
            18,
            34,
            &[0],
            l2::dot_iq4_nl,
            l2::dot8_iq4_nl,
            l2::dot8_vnni_iq4_nl,
        ),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let f16b = |v: f32| f16::from_f32(v).to_bits().to_le_bytes();
    for (name, wb, ab, scales, one, eight, eight_vnni) in cases {
        let nb = 7;
        let mut w: Vec<u8> = (0..nb * wb).map(|_| rng.gen()).collect();
        for b in 0..nb {
            for &o in scales {
                let s = rng.gen_range(0.001f32..0.1) * if o == 0 { 1.0 } else { -1.0 };
                w[b * wb + o..b * wb + o + 2].copy_from_slice(&f16b(s));
            }
            if name == "q8_0" {
                w[b * wb + 2] = 0x80; // −128
                w[b * wb + 3] = 0x7f;
            }
        }
        let mut acts = vec![0u8; 8 * nb * ab];
        for blk in acts.chunks_exact_mut(ab) {
            blk[..2].copy_from_slice(&f16b(rng.gen_range(0.001f32..0.1)));
            for q in &mut blk[ab - 32..] {
                *q = match rng.gen_range(0..4) {
                    0 => 127u8,
                    1 => (-127i8) as u8,
                    _ => rng.gen_range(-127i8..=127) as u8,
                };
            }
            let sum: i32 = blk[ab - 32..].iter().map(|&q| q as i8 as i32).sum();
            if ab == 36 {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                blk[2..4].copy_from_slice(&f16b(d * sum as f32));
            }
        }
        let rb = nb * ab;
        let want: Vec<u32> = (0..8)
            .map(|t| one(&w, &acts[t * rb..(t + 1) * rb]).to_bits())
            .collect();
        let packed = interleave8(&acts, rb, 8, ab == 36);
        let got: Vec<u32> = eight(&w, &packed).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "{name}: 8-row AVX2 kernel");
        if vnni {
            let got: Vec<u32> = eight_vnni(&w, &packed)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(got, want, "{name}: 8-row AVX-VNNI kernel");
        }
    }
}
