//! Block-diagonal 128×128 Hadamard transforms used by EXL3 on both sides of a weight
//! (exllamav3 `util/hadamard.py`: 128 is built from the 1×1 matrix by Sylvester doubling, so it is
//! the Walsh matrix `H[i][j] = (−1)^popcount(i & j)`, scaled by 1/√128; symmetric and its own
//! inverse). Computed with the fast Walsh–Hadamard butterfly.

/// Block size of the transforms.
pub const HAD: usize = 128;

/// In-place `v ← H·v` on one 128-vector (scaled by 1/√128).
pub fn fwht128(v: &mut [f32]) {
    debug_assert_eq!(v.len(), HAD);
    let mut h = 1;
    while h < HAD {
        for i in (0..HAD).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (v[j], v[j + h]);
                v[j] = a + b;
                v[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = 1.0 / (HAD as f32).sqrt();
    v.iter_mut().for_each(|x| *x *= s);
}

/// `X ← X·blockdiag(H)`: every row of a row-major `rows × cols` matrix, in 128-blocks of columns.
pub fn had_right(x: &mut [f32], cols: usize) {
    assert_eq!(cols % HAD, 0);
    x.chunks_exact_mut(HAD).for_each(fwht128);
}

/// `X ← blockdiag(H)·X`: 128-blocks of rows of a row-major `rows × cols` matrix.
pub fn had_left(x: &mut [f32], cols: usize) {
    let rows = x.len() / cols;
    assert_eq!(rows % HAD, 0);
    let mut buf = vec![0f32; HAD];
    for blk in x.chunks_exact_mut(HAD * cols) {
        for c in 0..cols {
            for (r, b) in buf.iter_mut().enumerate() {
                *b = blk[r * cols + c];
            }
            fwht128(&mut buf);
            for (r, b) in buf.iter().enumerate() {
                blk[r * cols + c] = *b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_sylvester_matrix() {
        for col in [0usize, 1, 77, 127] {
            let mut e = vec![0f32; HAD];
            e[col] = 1.0;
            fwht128(&mut e);
            for (i, v) in e.iter().enumerate() {
                let sign = if (i & col).count_ones() % 2 == 0 {
                    1.0
                } else {
                    -1.0
                };
                assert!((v - sign / (HAD as f32).sqrt()).abs() < 1e-7);
            }
        }
    }

    #[test]
    fn is_its_own_inverse_on_both_sides() {
        let cols = 256;
        let x: Vec<f32> = (0..HAD * cols)
            .map(|i| ((i * 37 % 101) as f32) - 50.0)
            .collect();
        let mut y = x.clone();
        had_left(&mut y, cols);
        had_right(&mut y, cols);
        had_right(&mut y, cols);
        had_left(&mut y, cols);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-3);
        }
    }
}
