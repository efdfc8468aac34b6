//! How a weight matrix stores its rows: a GGML type (bytes in `llmq_formats`'
//! layouts), group-wise integer blocks ([`crate::int_blocks`]) or floating-point coded
//! blocks ([`crate::fp_blocks`]), and the activations integer weights are multiplied
//! with. Below both the kernels and [`crate::tensor`].

pub use crate::fp_blocks::FpType;
use crate::int_blocks::int_block_bytes;
use llmq_formats::GgmlType;

/// Activations an integer-weight matrix is multiplied with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntAct {
    /// Quantized per 32 columns to Q8_0 (fast, integer dot products; what llama.cpp
    /// does for Q4_0/Q8_0). Needs 32-column blocks; other blocks use `F32`.
    Q8_0,
    /// Plain f32 (exact to f32 rounding: `x · dequant(W)ᵀ`).
    F32,
}

/// Group-wise integer weights ([`crate::int_blocks`] layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IntType {
    /// 2..=8
    pub bits: u8,
    /// input columns per block (a power of two dividing 32)
    pub block: u16,
    pub act: IntAct,
}

/// How a matrix's rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    Ggml(GgmlType),
    Int(IntType),
    /// NVFP4 / MXFP4 / FP8 codes against f32 activations ([`crate::fp_blocks`]).
    Fp(FpType),
}

impl From<GgmlType> for WeightType {
    fn from(t: GgmlType) -> Self {
        WeightType::Ggml(t)
    }
}

impl PartialEq<GgmlType> for WeightType {
    fn eq(&self, other: &GgmlType) -> bool {
        *self == WeightType::Ggml(*other)
    }
}

impl WeightType {
    /// `"Q4_K"`, or `"INT4_G32"`-style names for integer weights.
    pub fn name(self) -> String {
        match self {
            WeightType::Ggml(t) => t.name().to_string(),
            WeightType::Int(t) => format!("INT{}_B{}", t.bits, t.block),
            WeightType::Fp(t) => t.name(),
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            WeightType::Ggml(t) => t.block_size(),
            WeightType::Int(t) => t.block as usize,
            WeightType::Fp(t) => t.block(),
        }
    }

    /// Bytes of a row of `cols` values (`None` if not whole blocks).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        match self {
            WeightType::Ggml(t) => t.row_bytes(cols),
            WeightType::Int(t) => {
                let b = t.block as usize;
                (b > 0 && cols.is_multiple_of(b)).then(|| cols / b * int_block_bytes(t.bits, b))
            }
            WeightType::Fp(t) => t.row_bytes(cols),
        }
    }

    /// The GGML type, if this is one.
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            WeightType::Ggml(t) => Some(t),
            WeightType::Int(_) | WeightType::Fp(_) => None,
        }
    }
}
