//! Block-diagonal orthonormal Hadamard rotations of a weight's input dimension, as
//! MR-GPTQ (arXiv 2509.23202) uses them and compressed-tensors' `hadamard` transform
//! (`TransformScheme` with `head_dim` = the block) stores them: the Sylvester matrix
//! `H_b` (`H_1 = [1]`, `H_2n = [[H_n, H_n], [H_n, −H_n]]`) divided by `√b`, repeated
//! along the diagonal. It is symmetric and its own inverse, so the stored weight is
//! `W' = W·R` and the layer computes `W'·(R·x)`; folded back, `W = W'·R`
//! ([`unrotate`]).

use std::ops::{Add, Mul, Sub};

fn fwht<T: Copy + Add<Output = T> + Sub<Output = T> + Mul<Output = T>>(
    v: &mut [T],
    b: usize,
    norm: T,
) {
    for blk in v.chunks_exact_mut(b) {
        let mut len = 1;
        while len < b {
            for start in (0..b).step_by(2 * len) {
                for k in start..start + len {
                    let (a, c) = (blk[k], blk[k + len]);
                    blk[k] = a + c;
                    blk[k + len] = a - c;
                }
            }
            len *= 2;
        }
        blk.iter_mut().for_each(|x| *x = *x * norm);
    }
}

/// Whether `b` is a block size a rotation can have (a power of two).
pub fn valid_block(b: usize) -> bool {
    b.is_power_of_two()
}

/// In place: every block of `b` values times the orthonormal Hadamard matrix.
pub fn hadamard_blocks(v: &mut [f32], b: usize) {
    assert!(
        valid_block(b) && v.len().is_multiple_of(b),
        "Hadamard block {b}"
    );
    fwht(v, b, 1.0 / (b as f32).sqrt());
}

/// [`hadamard_blocks`] in f64.
pub fn hadamard_blocks_f64(v: &mut [f64], b: usize) {
    assert!(
        valid_block(b) && v.len().is_multiple_of(b),
        "Hadamard block {b}"
    );
    fwht(v, b, 1.0 / (b as f64).sqrt());
}

/// The dense weight (`[out, in]`, original input space) of rotated values `w'`:
/// `W'·R`, every row rotated.
pub fn unrotate(rotated: &[f32], in_features: usize, b: usize) -> Vec<f32> {
    let mut v = rotated.to_vec();
    for row in v.chunks_exact_mut(in_features) {
        hadamard_blocks(row, b);
    }
    v
}

/// The unnormalized Sylvester matrix `H_b` (±1), row-major: the tensor a
/// compressed-tensors `hadamard` transform stores per module.
pub fn sylvester(b: usize) -> Vec<f32> {
    assert!(valid_block(b), "Hadamard block {b}");
    (0..b * b)
        .map(|k| {
            let (r, c) = (k / b, k % b);
            if (r & c).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_transform_is_the_sylvester_matrix_and_its_own_inverse() {
        for b in [1usize, 2, 16, 128] {
            let h = sylvester(b);
            let x: Vec<f32> = (0..2 * b).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y = x.clone();
            hadamard_blocks(&mut y, b);
            for blk in 0..2 {
                for r in 0..b {
                    let want: f32 = (0..b).map(|c| h[r * b + c] * x[blk * b + c]).sum::<f32>()
                        / (b as f32).sqrt();
                    assert!((y[blk * b + r] - want).abs() < 1e-5, "b={b}");
                }
            }
            hadamard_blocks(&mut y, b);
            for (a, c) in y.iter().zip(&x) {
                assert!((a - c).abs() < 1e-5);
            }
        }
    }
}
