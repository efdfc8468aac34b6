//! GGML block quantizers and dequantizers, one module per block format, each with a
//! scalar reference (`*_ref`, a plain reading of the format) and a fast path that
//! produces the same bytes. Algorithms follow today's llama.cpp `ggml-quants.c`
//! (importance-weighted scale searches), not the 2023 ones.
//!
//! Every quantizer takes optional importance weights (an imatrix row: one weight per
//! column of the row, i.e. per input feature), as llama.cpp's `quantize_*` do.
//!
//! [`TYPES`] below is this layer's row of the type table: the algorithms per
//! [`GgmlType`]. The layers split a type's traits the way their knowledge splits:
//! `llmq-formats` has the bytes (block structs, sizes, names, ids: `TYPE_LAYOUTS`),
//! this crate the algorithms, `llmq-kernels` the dot products (`KERNELS`). A new block
//! format is a module here plus its `pub mod` line and row in this file.

pub mod float;
pub mod isa;
pub mod search;

pub mod iq4_nl;
pub mod iq4_xs;
pub mod mxfp4;
pub mod nvfp4;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;

pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;

mod dispatch;
pub use dispatch::*;

use llmq_formats::GgmlType;

/// Quantize one row: values, optional importance weights (one per value), output bytes.
pub type RowQuant = fn(&[f32], Option<&[f32]>, &mut [u8]);
/// Dequantize whole blocks: packed bytes to values.
pub type RowDequant = fn(&[u8], &mut [f32]);

/// One row of this layer's type table: the algorithms for one [`GgmlType`] (its bytes
/// are `ty.layout()`, in `llmq-formats`). Every type here can be quantized to and
/// dequantized from, on the fast path (`quantize`, `dequantize`) or the scalar
/// reference (`*_ref`, the same bytes and values).
#[derive(Clone, Copy)]
pub struct QuantTraits {
    pub ty: GgmlType,
    pub quantize: RowQuant,
    pub quantize_ref: RowQuant,
    pub dequantize: RowDequant,
    pub dequantize_ref: RowDequant,
}

macro_rules! traits {
    ($ty:ident: float $q:ident, $d:ident) => {
        QuantTraits {
            ty: GgmlType::$ty,
            quantize: crate::float::$q,
            quantize_ref: crate::float::$q,
            dequantize: crate::float::$d,
            dequantize_ref: crate::float::$d,
        }
    };
    ($ty:ident: $m:ident) => {
        QuantTraits {
            ty: GgmlType::$ty,
            quantize: crate::$m::quantize_row,
            quantize_ref: crate::$m::quantize_row_ref,
            dequantize: crate::$m::dequantize_row,
            dequantize_ref: crate::$m::dequantize_row_ref,
        }
    };
}

/// The types this crate computes, one row each (a new block type adds its row here).
pub const TYPES: &[QuantTraits] = &[
    traits!(F32: float quantize_row_f32, dequantize_row_f32),
    traits!(F16: float quantize_row_f16, dequantize_row_f16),
    traits!(BF16: float quantize_row_bf16, dequantize_row_bf16),
    traits!(Q8_0: q8_0),
    traits!(Q4_0: q4_0),
    traits!(Q4_1: q4_1),
    traits!(Q5_0: q5_0),
    traits!(Q5_1: q5_1),
    traits!(Q2K: q2_k),
    traits!(Q3K: q3_k),
    traits!(Q4K: q4_k),
    traits!(Q5K: q5_k),
    traits!(Q6K: q6_k),
    traits!(IQ4NL: iq4_nl),
    traits!(IQ4XS: iq4_xs),
    traits!(MXFP4: mxfp4),
    traits!(NVFP4: nvfp4),
];

/// The types this crate can quantize to (and dequantize from): those of [`TYPES`].
pub const QUANTIZABLE: &[GgmlType] = &{
    let mut out = [GgmlType::F32; TYPES.len()];
    let mut i = 0;
    while i < TYPES.len() {
        out[i] = TYPES[i].ty;
        i += 1;
    }
    out
};
