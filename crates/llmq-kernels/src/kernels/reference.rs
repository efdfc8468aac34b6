//! Reference implementation: each weight row is dequantized once into a per-thread
//! buffer ([`crate::dequant`]: `llmq_quant`'s dequantizers, [`crate::int_blocks`] for
//! integer weights)
//! and dotted in f32 with every activation row (parallel over rows). Exact apart from f32
//! summation order; the fast kernels are tested against it, and types without a fast
//! kernel run through it.

use crate::tensor::WeightMatrix;
use rayon::prelude::*;

/// `y = x · Wᵀ` for `n` rows of `x`, through dequantized f32 rows.
pub fn matmul_reference(w: &WeightMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n * cols, "matmul: x is not n x cols");
    assert_eq!(y.len(), n * rows, "matmul: y is not n x rows");
    if n == 0 || rows == 0 {
        return;
    }
    // Columns of y (one weight row each) are computed in parallel chunks.
    const ROWS_PER_TASK: usize = 16;
    let mut yt = vec![0.0f32; rows * n];
    yt.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; cols],
            |buf, (ci, out)| {
                for (k, o) in out.chunks_mut(n).enumerate() {
                    let r = ci * ROWS_PER_TASK + k;
                    w.row_f32_into(r, buf);
                    for (t, ot) in o.iter_mut().enumerate() {
                        *ot = dot(&x[t * cols..(t + 1) * cols], buf);
                    }
                }
            },
        );
    for r in 0..rows {
        for t in 0..n {
            y[t * rows + r] = yt[r * n + t];
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}
