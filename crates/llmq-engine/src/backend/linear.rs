//! A `Linear` layer (`y = x · Wᵀ`) whose weight format the model never sees: dense
//! F32/F16/BF16, GGML quant blocks or group-wise integer weights (GPTQ / AWQ /
//! compressed-tensors), whatever `llmq_kernels::WeightMatrix` holds. The weight lives
//! in the backend's memory from load time on.

use super::api::Backend;
use llmq_kernels::WeightMatrix;

/// A weight matrix `[out_features, in_features]` on a backend.
pub struct Linear<B: Backend> {
    out_features: usize,
    in_features: usize,
    w: B::Weight,
}

impl<B: Backend> Clone for Linear<B> {
    fn clone(&self) -> Self {
        Linear {
            out_features: self.out_features,
            in_features: self.in_features,
            w: self.w.clone(),
        }
    }
}

impl<B: Backend> Linear<B> {
    /// Upload `w` to the backend.
    pub fn new(be: &B, w: WeightMatrix) -> Linear<B> {
        Linear {
            out_features: w.rows,
            in_features: w.cols,
            w: be.upload_weight(w),
        }
    }

    /// Rows of the weight (output width).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Columns of the weight (input width).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The weight in the backend's memory (for operations other than the product,
    /// such as embedding lookup).
    pub fn weight(&self) -> &B::Weight {
        &self.w
    }

    /// `x · Wᵀ` for `n` rows of `x` (`[n, in_features]`): `[n, out_features]`.
    pub fn forward(&self, be: &B, x: &B::Buf, n: usize) -> B::Buf {
        be.matmul(&self.w, x, n)
    }

    /// [`Linear::forward`] of one input through several layers (q/k/v, gate/up), in
    /// order ([`Backend::matmul_each`]).
    pub fn forward_each<const K: usize>(
        layers: [&Linear<B>; K],
        be: &B,
        x: &B::Buf,
        n: usize,
    ) -> [B::Buf; K] {
        let ws: Vec<&B::Weight> = layers.iter().map(|l| &l.w).collect();
        let mut ys = be.matmul_each(&ws, x, n).into_iter();
        std::array::from_fn(|_| ys.next().expect("one product per weight"))
    }
}
