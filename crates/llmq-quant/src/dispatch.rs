//! Type-dispatched entry points over whole tensors (rows × `n_per_row`), through the
//! type table ([`TYPES`], in `lib.rs`).

use crate::{QuantTraits, RowDequant, RowQuant, TYPES};
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
