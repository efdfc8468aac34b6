//! Block LDL decomposition of a Hessian for LDLQ (QuIP#/QTIP, Tseng et al. arXiv 2402.04396 §4;
//! exllamav3 `quantize.py block_ldl`): `H = L·D·Lᵀ` with `L` unit block-lower-triangular in 16×16
//! blocks. Computed as the Cholesky factor `C` (`H = C·Cᵀ`) with each column block multiplied by the
//! inverse of its diagonal block. What LDLQ needs is `L − I`: the strictly block-lower part, with
//! zero diagonal blocks, which is what [`block_ldl`] returns.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::{Accum, Mat, Par};

/// Block size of the decomposition (the tile height).
pub const BLOCK: usize = 16;

/// `L − I` of the 16-block LDL of `h` (`n × n`, `n` a multiple of 16), or the index of the first
/// non-positive pivot.
pub fn block_ldl(h: &Mat<f64>) -> Result<Mat<f64>, usize> {
    let n = h.nrows();
    assert!(n.is_multiple_of(BLOCK) && h.ncols() == n);
    let mut c = h.clone();
    let par = Par::Seq;
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(
        c.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(|faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index }| index)?;
    for i in 0..n {
        for j in i + 1..n {
            c[(i, j)] = 0.0;
        }
    }
    let mut out = Mat::<f64>::zeros(n, n);
    for b in 0..n / BLOCK {
        let s = b * BLOCK;
        let mut inv = Mat::<f64>::zeros(BLOCK, BLOCK);
        faer::linalg::triangular_inverse::invert_lower_triangular(
            inv.as_mut(),
            c.as_ref().submatrix(s, s, BLOCK, BLOCK),
            par,
        );
        let below = n - s - BLOCK;
        if below > 0 {
            faer::linalg::matmul::matmul(
                out.as_mut().submatrix_mut(s + BLOCK, s, below, BLOCK),
                Accum::Replace,
                c.as_ref().submatrix(s + BLOCK, s, below, BLOCK),
                inv.as_ref(),
                1.0,
                par,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (I + L')·D·(I + L')ᵀ = H, with D block diagonal.
    #[test]
    fn reconstructs_h() {
        let n = 48;
        let x = Mat::<f64>::from_fn(n, 3 * n, |i, j| {
            (((i * 31 + j * 17) % 23) as f64 - 11.0) / 7.0
        });
        let mut h = &x * x.transpose();
        for i in 0..n {
            h[(i, i)] += 0.1;
        }
        let l = block_ldl(&h).unwrap();
        let unit = &l + Mat::<f64>::identity(n, n);
        let mut inv = Mat::<f64>::zeros(n, n);
        faer::linalg::triangular_inverse::invert_lower_triangular(
            inv.as_mut(),
            unit.as_ref(),
            Par::Seq,
        );
        let d = &inv * &h * inv.transpose();
        for i in 0..n {
            for j in 0..n {
                if i / BLOCK != j / BLOCK {
                    assert!(
                        d[(i, j)].abs() < 1e-8,
                        "D off the block diagonal at ({i}, {j})"
                    );
                }
                if i / BLOCK <= j / BLOCK {
                    assert_eq!(l[(i, j)], 0.0);
                }
            }
        }
    }
}
