//! Block-diagonal orthonormal Hadamard rotation of activation rows, the online half of
//! MR-GPTQ's input rotation (arXiv 2509.23202; compressed-tensors' `hadamard` transform
//! with `head_dim` = the block): every block of `b` values times the Sylvester matrix
//! `H_b` over `√b` (fast Walsh–Hadamard butterflies). The transform is symmetric and its
//! own inverse. The butterflies are `llmq_hfquant::hadamard`'s, the quantizer's own.

/// Whether `b` can rotate rows of `cols` values (a power of two dividing `cols`).
pub fn valid_block(b: usize, cols: usize) -> bool {
    b.is_power_of_two() && cols.is_multiple_of(b)
}

/// In place: every block of `b` values of `v` times `H_b / √b` (the quantizer's own
/// transform, `llmq_hfquant::hadamard`).
pub fn hadamard_blocks(v: &mut [f32], b: usize) {
    assert!(valid_block(b, v.len()), "Hadamard block {b}");
    llmq_hfquant::hadamard::hadamard_blocks(v, b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_the_normalized_sylvester_matrix_and_its_own_inverse() {
        let b = 16;
        let x: Vec<f32> = (0..2 * b).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = x.clone();
        hadamard_blocks(&mut y, b);
        for blk in 0..2 {
            for r in 0..b {
                let want: f32 = (0..b)
                    .map(|c| {
                        let h = if (r & c).count_ones() % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        };
                        h * x[blk * b + c]
                    })
                    .sum::<f32>()
                    / 4.0;
                assert!((y[blk * b + r] - want).abs() < 1e-6);
            }
        }
        hadamard_blocks(&mut y, b);
        for (a, c) in y.iter().zip(&x) {
            assert!((a - c).abs() < 1e-6);
        }
    }
}
