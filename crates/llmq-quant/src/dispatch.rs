//! Type-dispatched entry points over whole tensors (rows × `n_per_row`).

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

/// The types this crate can quantize to (and dequantize from).
pub const QUANTIZABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
    GgmlType::IQ4XS,
];

type RowQuant = fn(&[f32], Option<&[f32]>, &mut [u8]);
type RowDequant = fn(&[u8], &mut [f32]);

fn row_fns(ty: GgmlType, reference: bool) -> Result<(RowQuant, RowDequant), QuantError> {
    use GgmlType::*;
    macro_rules! pick {
        ($m:ident) => {
            if reference {
                (
                    crate::$m::quantize_row_ref as RowQuant,
                    crate::$m::dequantize_row_ref as RowDequant,
                )
            } else {
                (
                    crate::$m::quantize_row as RowQuant,
                    crate::$m::dequantize_row as RowDequant,
                )
            }
        };
    }
    Ok(match ty {
        F32 => (
            crate::float::quantize_row_f32 as RowQuant,
            crate::float::dequantize_row_f32 as RowDequant,
        ),
        F16 => (
            crate::float::quantize_row_f16,
            crate::float::dequantize_row_f16,
        ),
        BF16 => (
            crate::float::quantize_row_bf16,
            crate::float::dequantize_row_bf16,
        ),
        Q8_0 => pick!(q8_0),
        Q4_0 => pick!(q4_0),
        Q4_1 => pick!(q4_1),
        Q5_0 => pick!(q5_0),
        Q5_1 => pick!(q5_1),
        Q2K => pick!(q2_k),
        Q3K => pick!(q3_k),
        Q4K => pick!(q4_k),
        Q5K => pick!(q5_k),
        Q6K => pick!(q6_k),
        IQ4NL => pick!(iq4_nl),
        IQ4XS => pick!(iq4_xs),
        other => return Err(QuantError::Unsupported(other)),
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
