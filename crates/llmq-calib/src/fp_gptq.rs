//! GPTQ on the floating-point grids (NVFP4, MXFP4, FP8; [`llmq_hfquant::fp_quantized`])
//! and MR-GPTQ (Egiazarian, Castro et al., "Bridging the Gap Between Promise and
//! Performance for Microscaling FP4 Quantization", arXiv 2509.23202).
//!
//! [`fp_gptq_quantize`] is GPTQ's column loop ([`crate::gptq`], Algorithm 1 of arXiv
//! 2210.17323: `U` from the Cholesky factor of `(H + damp·I)⁻¹`, errors spread over the
//! columns not yet quantized, lazy updates per block of 128 columns) with the FP grid in
//! place of the integer one: a group's scale (E4M3 per 16 for NVFP4 under the
//! tensor-wide global scale, E8M0 per 32 for MXFP4, FP32 per 128×128 block for
//! FP8_BLOCK) is chosen when its first column is reached, from the weights as they stand
//! after the updates so far, optionally by FP-Quant's MSE search; per-channel and
//! per-tensor FP8 scales come from the weight before any update. No act-order.
//!
//! MR-GPTQ ([`mr_gptq_quantize`]) rotates the input dimension by a block-diagonal
//! orthonormal Hadamard matrix `R` (Sylvester, block 16–128, `1/√b` normalised):
//! `W' = W·R`, `H' = RᵀHR`, runs GPTQ on `(W', H')`, and returns the rotated codes. At
//! run time the layer computes `W'·(Rᵀx)` (the activation is rotated by `Rᵀ = R`), or
//! equivalently the dense `Ŵ'·Rᵀ` ([`unrotate`]). Without a rotation it is plain FP
//! GPTQ, bit for bit (a test checks it).

use crate::gptq::{upper_cholesky_of_inverse, GptqError};
use faer::{Accum, MatMut, MatRef, Par};
use llmq_hfquant::fp_quantized::{FpQuantized, FpScheme, FP8_BLOCK};
use llmq_hfquant::hadamard::hadamard_blocks_f64;
pub use llmq_hfquant::hadamard::{hadamard_blocks, unrotate};

/// FP GPTQ settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FpGptqConfig {
    pub scheme: FpScheme,
    /// Dampening as a fraction of the mean Hessian diagonal (FP-Quant: 0.01).
    pub damp_percent: f64,
    /// Largest dampening tried (×10 per retry).
    pub max_damp_percent: f64,
    /// Columns per lazy-update block.
    pub block_size: usize,
    /// FP-Quant's MSE scale search for every group.
    pub mse: bool,
}

impl FpGptqConfig {
    pub fn new(scheme: FpScheme) -> Self {
        FpGptqConfig {
            scheme,
            damp_percent: 0.01,
            max_damp_percent: 10.0,
            block_size: 128,
            mse: true,
        }
    }
}

/// What the FP solvers return.
#[derive(Debug, Clone)]
pub struct FpGptqResult {
    /// the codes (of the rotated weight for MR-GPTQ)
    pub quantized: FpQuantized,
    /// GPTQ's `Σ (w − q)² / (2·U_ii²)`
    pub loss: f64,
    pub damp_percent: f64,
    /// the Hadamard block size the codes are rotated by (MR-GPTQ), if any
    pub hadamard: Option<usize>,
}

/// GPTQ of `w` (`[out, in]`) against `h` (`[in, in]`) on `cfg.scheme`'s grid.
pub fn fp_gptq_quantize(
    name: &str,
    w: &[f32],
    out_features: usize,
    in_features: usize,
    h: &[f64],
    cfg: &FpGptqConfig,
) -> Result<FpGptqResult, GptqError> {
    let (rows, n) = (out_features, in_features);
    let shape_err = |why: String| GptqError::Shape {
        tensor: name.to_string(),
        why,
    };
    if n == 0 || rows == 0 || w.len() != rows * n || h.len() != n * n {
        return Err(shape_err(format!(
            "weight of {} values and Hessian of {} for [{rows}, {n}]",
            w.len(),
            h.len()
        )));
    }
    if let Some(g) = cfg.scheme.group_size() {
        if !n.is_multiple_of(g) && cfg.scheme != FpScheme::Fp8Block {
            return Err(shape_err(format!("{n} inputs are not whole groups of {g}")));
        }
    }
    if !w.iter().all(|v| v.is_finite()) || !h.iter().all(|v| v.is_finite()) {
        return Err(GptqError::NonFinite {
            tensor: name.to_string(),
            what: "weight or Hessian",
        });
    }
    let scheme = cfg.scheme;
    let mut hd = h.to_vec();
    let mut wp = w.to_vec();
    let global = scheme.global_scale(w);
    let shape = scheme.scale_shape(rows, n);
    let mut scales = vec![0.0f32; shape[0] * shape[1]];
    match scheme {
        FpScheme::Fp8Channel => {
            for o in 0..rows {
                scales[o] = scheme.group_scale(&w[o * n..(o + 1) * n], global, cfg.mse);
            }
        }
        FpScheme::Fp8Tensor => scales[0] = scheme.group_scale(w, global, cfg.mse),
        _ => {}
    }
    for i in 0..n {
        if hd[i * n + i] == 0.0 {
            hd[i * n + i] = 1.0;
            for o in 0..rows {
                wp[o * n + i] = 0.0;
            }
        }
    }
    let mean_diag = (0..n).map(|i| hd[i * n + i]).sum::<f64>() / n as f64;
    let mut damp_percent = cfg.damp_percent;
    let u = loop {
        match upper_cholesky_of_inverse(&hd, n, damp_percent * mean_diag) {
            Ok(u) => break u,
            Err(column) => {
                let next = damp_percent * 10.0;
                if next > cfg.max_damp_percent * (1.0 + 1e-9) {
                    return Err(GptqError::NotPositiveDefinite {
                        tensor: name.to_string(),
                        damp_percent,
                        column,
                    });
                }
                damp_percent = next;
            }
        }
    };
    drop(hd);

    let mut q = FpQuantized {
        scheme,
        out_features: rows,
        in_features: n,
        codes: vec![0u8; rows * n],
        scales,
        global_scale: global,
    };
    let gs = scheme.group_size();
    let bs = cfg.block_size;
    let mut loss = 0.0f64;
    let mut w1 = vec![0.0f32; rows * bs];
    let mut err1 = vec![0.0f32; rows * bs];
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + bs).min(n);
        let count = i2 - i1;
        for o in 0..rows {
            w1[o * count..(o + 1) * count].copy_from_slice(&wp[o * n + i1..o * n + i2]);
        }
        for i in 0..count {
            let col = i1 + i;
            if let Some(g) = gs {
                if col % g == 0 {
                    // the group's scales from the weights as updated so far
                    let end = (col + g).min(n);
                    let value = |o: usize, c: usize| {
                        if c < i2 {
                            w1[o * count + (c - i1)]
                        } else {
                            wp[o * n + c]
                        }
                    };
                    if scheme == FpScheme::Fp8Block {
                        for bo in 0..shape[0] {
                            let vals: Vec<f32> = (bo * FP8_BLOCK..((bo + 1) * FP8_BLOCK).min(rows))
                                .flat_map(|o| (col..end).map(move |c| (o, c)))
                                .map(|(o, c)| value(o, c))
                                .collect();
                            q.scales[bo * shape[1] + col / g] =
                                scheme.group_scale(&vals, global, cfg.mse);
                        }
                    } else {
                        for o in 0..rows {
                            let vals: Vec<f32> = (col..end).map(|c| value(o, c)).collect();
                            q.scales[o * shape[1] + col / g] =
                                scheme.group_scale(&vals, global, cfg.mse);
                        }
                    }
                }
            }
            let urow = &u[col * n + i1..col * n + i2];
            let d = urow[i];
            let mut block_loss = 0.0f64;
            for o in 0..rows {
                let s = scheme.effective(q.scales[q.scale_index(o, col)], global);
                let row = &mut w1[o * count..(o + 1) * count];
                let x = row[i];
                let (code, dq) = scheme.encode(x, s);
                q.codes[o * n + col] = code;
                let e = (x - dq) / d;
                block_loss += (e as f64) * (e as f64);
                err1[o * count + i] = e;
                for (wj, &uj) in row[i + 1..].iter_mut().zip(&urow[i + 1..]) {
                    *wj -= e * uj;
                }
            }
            loss += block_loss / 2.0;
        }
        if i2 < n {
            let rest = n - i2;
            let dst = MatMut::from_column_major_slice_with_stride_mut(&mut wp[i2..], rest, rows, n)
                .transpose_mut();
            let lhs = MatRef::from_row_major_slice(&err1[..rows * count], rows, count);
            let rhs = MatRef::from_row_major_slice_with_stride(&u[i1 * n + i2..], count, rest, n);
            faer::linalg::matmul::matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::Seq);
        }
        i1 = i2;
    }
    Ok(FpGptqResult {
        quantized: q,
        loss,
        damp_percent,
        hadamard: None,
    })
}

/// MR-GPTQ: GPTQ on the FP grid after a block Hadamard rotation of size `hadamard`
/// (16–128, a power of two dividing `in`) of the input dimension; `None` is plain FP
/// GPTQ.
pub fn mr_gptq_quantize(
    name: &str,
    w: &[f32],
    out_features: usize,
    in_features: usize,
    h: &[f64],
    cfg: &FpGptqConfig,
    hadamard: Option<usize>,
) -> Result<FpGptqResult, GptqError> {
    let Some(b) = hadamard else {
        return fp_gptq_quantize(name, w, out_features, in_features, h, cfg);
    };
    let n = in_features;
    if !b.is_power_of_two() || b > 128 || !n.is_multiple_of(b) {
        return Err(GptqError::Config(format!(
            "Hadamard block {b} (a power of two up to 128 dividing {n})"
        )));
    }
    // W' = W·R: rotate every row
    let mut wr = w.to_vec();
    for row in wr.chunks_exact_mut(n) {
        hadamard_blocks(row, b);
    }
    // H' = RᵀHR = R·H·R (R symmetric): rows, then columns (H' symmetric: rows again)
    let mut hr = h.to_vec();
    for row in hr.chunks_exact_mut(n) {
        hadamard_blocks_f64(row, b);
    }
    let mut ht = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            ht[j * n + i] = hr[i * n + j];
        }
    }
    for row in ht.chunks_exact_mut(n) {
        hadamard_blocks_f64(row, b);
    }
    let mut r = fp_gptq_quantize(name, &wr, out_features, n, &ht, cfg)?;
    r.hadamard = Some(b);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmq_hfquant::fp_quantized::rtn_fp;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn problem(seed: u64, rows: usize, n: usize, t: usize) -> (Vec<f32>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..rows * n)
            .map(|k| rng.gen_range(-0.1f32..0.1) * if k % n < 2 { 8.0 } else { 1.0 })
            .collect();
        // activations with a few outlier channels
        let x: Vec<f32> = (0..t * n)
            .map(|k| rng.gen_range(-1.0f32..1.0) * if k % n % 17 == 3 { 10.0 } else { 1.0 })
            .collect();
        let mut h = vec![0.0f64; n * n];
        for r in 0..t {
            let xr = &x[r * n..(r + 1) * n];
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += 2.0 * (xr[i] as f64) * (xr[j] as f64) / t as f64;
                }
            }
        }
        (w, h)
    }

    fn proxy(w: &[f32], deq: &[f32], h: &[f64], n: usize) -> f64 {
        w.chunks_exact(n)
            .zip(deq.chunks_exact(n))
            .map(|(a, b)| {
                let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| (*x - *y) as f64).collect();
                (0..n)
                    .map(|i| (0..n).map(|j| d[i] * h[i * n + j] * d[j]).sum::<f64>())
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn without_rotation_mr_gptq_is_plain_fp_gptq() {
        let (w, h) = problem(1, 24, 128, 300);
        for scheme in [FpScheme::Nvfp4, FpScheme::Mxfp4, FpScheme::Fp8Channel] {
            let cfg = FpGptqConfig::new(scheme);
            let a = fp_gptq_quantize("t", &w, 24, 128, &h, &cfg).unwrap();
            let b = mr_gptq_quantize("t", &w, 24, 128, &h, &cfg, None).unwrap();
            assert_eq!(a.quantized, b.quantized, "{scheme:?}");
            // a block of one is the identity rotation, through the rotation path
            let c = mr_gptq_quantize("t", &w, 24, 128, &h, &cfg, Some(1)).unwrap();
            assert_eq!(a.quantized, c.quantized, "{scheme:?}");
        }
    }

    #[test]
    fn identity_hessian_gives_round_to_nearest() {
        // H = I: no error feedback, so GPTQ is RTN on the same grid
        let (w, _) = problem(2, 16, 256, 1);
        let n = 256;
        let mut h = vec![0.0f64; n * n];
        (0..n).for_each(|i| h[i * n + i] = 1.0);
        for scheme in [
            FpScheme::Nvfp4,
            FpScheme::Mxfp4,
            FpScheme::Fp8Channel,
            FpScheme::Fp8Block,
        ] {
            for mse in [false, true] {
                let mut cfg = FpGptqConfig::new(scheme);
                cfg.mse = mse;
                let g = fp_gptq_quantize("t", &w, 16, n, &h, &cfg).unwrap();
                assert_eq!(
                    g.quantized,
                    rtn_fp(&w, 16, n, scheme, mse),
                    "{scheme:?} {mse}"
                );
            }
        }
    }

    #[test]
    fn gptq_and_rotation_lower_the_layer_error() {
        let (rows, n) = (32, 256);
        let (w, h) = problem(3, rows, n, 400);
        for scheme in [FpScheme::Nvfp4, FpScheme::Mxfp4] {
            let cfg = FpGptqConfig::new(scheme);
            let rtn = proxy(&w, &rtn_fp(&w, rows, n, scheme, true).dequantize(), &h, n);
            let g = fp_gptq_quantize("t", &w, rows, n, &h, &cfg).unwrap();
            let gptq = proxy(&w, &g.quantized.dequantize(), &h, n);
            let m = mr_gptq_quantize("t", &w, rows, n, &h, &cfg, Some(32)).unwrap();
            let mr = proxy(&w, &unrotate(&m.quantized.dequantize(), n, 32), &h, n);
            eprintln!("{scheme:?}: RTN {rtn:.4}, GPTQ {gptq:.4}, MR-GPTQ {mr:.4}");
            assert!(gptq < rtn, "{scheme:?}: GPTQ {gptq} vs RTN {rtn}");
            assert!(mr < rtn, "{scheme:?}: MR-GPTQ {mr} vs RTN {rtn}");
        }
    }

    #[test]
    fn hadamard_is_orthonormal() {
        let mut v: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 3.0).collect();
        let orig = v.clone();
        hadamard_blocks(&mut v, 16);
        let n0: f32 = orig.iter().map(|x| x * x).sum();
        let n1: f32 = v.iter().map(|x| x * x).sum();
        assert!((n0 - n1).abs() < 1e-3 * n0);
        hadamard_blocks(&mut v, 16);
        for (a, b) in v.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}
