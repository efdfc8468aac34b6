//! How a weight matrix stores its rows: a GGML type (bytes in `llmq_formats`'
//! layouts), group-wise integer blocks ([`crate::int_blocks`]) or floating-point coded
//! blocks ([`crate::fp_blocks`]), EXL3 trellis codes ([`crate::trellis`]), and the
//! activations integer weights are multiplied with. Below both the kernels and
//! [`crate::tensor`].

pub use crate::fp_blocks::FpType;
use crate::int_blocks::int_block_bytes;
use llmq_formats::GgmlType;
pub use llmq_trellis::Codebook;

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

/// EXL3 trellis codes ([`crate::trellis`]): `k` bits per weight, 16×16 tiles grouped in
/// bands of 16 rows, decoded through `codebook`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrellisType {
    /// 1..=8
    pub k: u8,
    pub codebook: Codebook,
}

/// How a matrix's rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    Ggml(GgmlType),
    Int(IntType),
    /// NVFP4 / MXFP4 / FP8 codes against f32 activations ([`crate::fp_blocks`]).
    Fp(FpType),
    /// EXL3 trellis-coded Linears ([`crate::trellis`]; the matrix carries its sign/scale
    /// vectors).
    Trellis(TrellisType),
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
            WeightType::Trellis(t) => format!("EXL3_K{}_{}", t.k, t.codebook.name().to_uppercase()),
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            WeightType::Ggml(t) => t.block_size(),
            WeightType::Int(t) => t.block as usize,
            WeightType::Fp(t) => t.block(),
            WeightType::Trellis(_) => 16,
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
            // a band of 16 rows holds cols/16 tiles of 32·k bytes
            WeightType::Trellis(t) => cols.is_multiple_of(128).then(|| cols * t.k as usize / 8),
        }
    }

    /// The GGML type, if this is one.
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            WeightType::Ggml(t) => Some(t),
            WeightType::Int(_) | WeightType::Fp(_) | WeightType::Trellis(_) => None,
        }
    }
}
