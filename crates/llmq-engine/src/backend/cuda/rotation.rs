//! MR-GPTQ's online input rotation on the GPU (arXiv 2509.23202): before the product of
//! a weight stored as `W' = W·R`, every block of `b` activation values is multiplied by
//! the orthonormal Hadamard matrix `H_b / √b` (`kernels/rotation.cu`), with the same
//! butterflies and normalisation as the CPU's `llmq_kernels::rotation`.

use super::buffers::CudaBuf;
use super::ops::launch;
use super::Cuda;
use cudarc::driver::LaunchConfig;

impl Cuda {
    /// `x`'s `n` rows of `cols` values with every block of `b` values rotated (`b` a
    /// power of two dividing `cols`, at most `weights::MAX_ROTATION`).
    pub(super) fn rotate_blocks(&self, x: &CudaBuf, n: usize, cols: usize, b: usize) -> CudaBuf {
        let len = n * cols;
        let y = self.buf(len);
        if len == 0 {
            return y;
        }
        let cfg = LaunchConfig {
            grid_dim: ((len / b) as u32, 1, 1),
            block_dim: ((b / 2).clamp(32, 256) as u32, 1, 1),
            shared_mem_bytes: (4 * b) as u32,
        };
        // the CPU's factor, computed the same way (`llmq_hfquant::hadamard`)
        let norm = 1.0f32 / (b as f32).sqrt();
        let bb = b as i32;
        launch!(self, "rotate_blocks", cfg, &x.data, &y.data, &bb, &norm);
        y
    }
}
