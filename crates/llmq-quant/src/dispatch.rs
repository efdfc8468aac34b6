//! This crate's row of the type table ([`TYPES`]: quantize / dequantize functions per
//! [`GgmlType`]) and the type-dispatched entry points over whole tensors (rows ×
//! `n_per_row`). The table sits here because the layers split a type's traits the
//! way their knowledge splits: `llmq-formats` has the bytes (block structs, sizes,
//! names, ids), this crate the algorithms, `llmq-kernels` the dot products.

use llmq_formats::GgmlType;

/// What can go wrong when quantizing or dequantizing a buffer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("{0} has no quantizer here")]
    Unsupported(GgmlType),
    #[error("row of {n} elements is not a multiple of {ty}'s block of {block}")]
    RowNotMultiple {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error("buffer size mismatch: {what}")]
    Size { what: String },
}

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

/// The row of `ty`, if this crate computes it.
pub fn traits(ty: GgmlType) -> Option<&'static QuantTraits> {
    TYPES.iter().find(|t| t.ty == ty)
}

/// Whether `ty` can be quantized to and dequantized from.
pub fn is_quantizable(ty: GgmlType) -> bool {
    traits(ty).is_some()
}

fn row_fns(ty: GgmlType, reference: bool) -> Result<(RowQuant, RowDequant), QuantError> {
    let t = traits(ty).ok_or(QuantError::Unsupported(ty))?;
    Ok(if reference {
        (t.quantize_ref, t.dequantize_ref)
    } else {
        (t.quantize, t.dequantize)
    })
}

fn check(
    ty: GgmlType,
    n_elems: usize,
    n_per_row: usize,
    n_bytes: usize,
) -> Result<usize, QuantError> {
    if n_per_row == 0 || !n_elems.is_multiple_of(n_per_row) {
        return Err(QuantError::Size {
            what: format!("{n_elems} elements is not a whole number of rows of {n_per_row}"),
        });
    }
    let row_bytes = ty.row_bytes(n_per_row).ok_or(QuantError::RowNotMultiple {
        ty,
        n: n_per_row,
        block: ty.block_size(),
    })?;
    let rows = n_elems / n_per_row;
    if n_bytes != rows * row_bytes {
        return Err(QuantError::Size {
            what: format!(
                "{ty}: {rows} rows need {} bytes, buffer has {n_bytes}",
                rows * row_bytes
            ),
        });
    }
    Ok(row_bytes)
}

/// Quantize `src` (rows of `n_per_row`) into `dst`, with optional importance weights
/// (`n_per_row` of them, shared by every row). `reference` selects the scalar path.
pub fn quantize_with(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
    reference: bool,
) -> Result<(), QuantError> {
    let row_bytes = check(ty, src.len(), n_per_row, dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(QuantError::Size {
                what: format!("imatrix has {} weights for rows of {n_per_row}", w.len()),
            });
        }
    }
    let (q, _) = row_fns(ty, reference)?;
    for (row, out) in src
        .chunks_exact(n_per_row)
        .zip(dst.chunks_exact_mut(row_bytes))
    {
        q(row, imatrix, out);
    }
    Ok(())
}

/// Quantize with the fast path. See [`quantize_with`].
pub fn quantize(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    quantize_with(ty, src, n_per_row, imatrix, dst, false)
}

/// Dequantize `src` (whole blocks of `ty`) into `dst`. `reference` selects the scalar path.
pub fn dequantize_with(
    ty: GgmlType,
    src: &[u8],
    dst: &mut [f32],
    reference: bool,
) -> Result<(), QuantError> {
    let bs = ty.block_size();
    let ts = ty.type_size();
    if !dst.len().is_multiple_of(bs) || src.len() != dst.len() / bs * ts {
        return Err(QuantError::Size {
            what: format!("{ty}: {} bytes for {} values", src.len(), dst.len()),
        });
    }
    let (_, d) = row_fns(ty, reference)?;
    d(src, dst);
    Ok(())
}

/// Dequantize with the fast path. See [`dequantize_with`].
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    dequantize_with(ty, src, dst, false)
}

/// Bytes needed for `n_elems` values of `ty` in rows of `n_per_row`.
pub fn quantized_size(ty: GgmlType, n_elems: usize, n_per_row: usize) -> Option<usize> {
    Some(n_elems / n_per_row * ty.row_bytes(n_per_row)?)
}
