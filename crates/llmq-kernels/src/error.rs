//! The one error type of this crate: what can be wrong with a weight matrix handed to
//! the kernels (a type nothing here computes, or bytes that do not fit the shape).

use llmq_formats::GgmlType;

/// Everything that can go wrong building a [`crate::WeightMatrix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A GGML type the kernels cannot compute (no dequantizer, no dot product), e.g. the
    /// IQ2/IQ3/IQ1 codebook types, MXFP4 or the ternary TQ types.
    #[error("{0} weights are not supported (computable types: {list})", list = computable_list())]
    UnsupportedType(GgmlType),
    /// Bytes, shape or block structure that do not fit together.
    #[error("{0}")]
    Layout(String),
}

impl From<String> for KernelError {
    fn from(why: String) -> Self {
        KernelError::Layout(why)
    }
}

impl From<&str> for KernelError {
    fn from(why: &str) -> Self {
        KernelError::Layout(why.to_string())
    }
}

fn computable_list() -> String {
    llmq_quant::QUANTIZABLE
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}
