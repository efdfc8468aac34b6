//! Weight rows back to f32: GGML types through `llmq_quant`'s type table, integer
//! blocks through [`crate::int_blocks`], floating-point coded blocks through
//! [`crate::fp_blocks`]. Sits below both [`crate::tensor`] and
//! [`crate::kernels`] (the reference product and `WeightMatrix::row_f32` use it).

use crate::error::KernelError;
use crate::int_blocks::dequantize_int_row;
use crate::weight_type::WeightType;
use llmq_formats::GgmlType;

/// Whether weights of `ty` can be computed (dequantized, and multiplied by `matmul`):
/// the types of `llmq_quant`'s table. [`crate::WeightMatrix::new`] refuses the others.
pub fn computes(ty: GgmlType) -> bool {
    llmq_quant::is_quantizable(ty)
}

/// Dequantize one packed row of `ty` into `out` (`out.len()` values, in stored column
/// order: see [`crate::WeightMatrix::row_f32`] for act-order matrices), or say why not.
pub fn try_dequantize_row(
    ty: impl Into<WeightType>,
    src: &[u8],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let ty = match ty.into() {
        WeightType::Ggml(t) => t,
        WeightType::Int(t) => {
            dequantize_int_row(t.bits, t.block as usize, src, out);
            return Ok(());
        }
        WeightType::Fp(t) => {
            crate::fp_blocks::dequantize_fp_row(t, src, out);
            return Ok(());
        }
        WeightType::Trellis(_) => {
            return Err(KernelError::Layout(
                "a trellis row is decoded with its 128-row block (WeightMatrix::to_f32)".into(),
            ))
        }
    };
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            Ok(())
        }
        _ => llmq_quant::dequantize(ty, src, out).map_err(|e| match e {
            llmq_quant::QuantError::Unsupported(t) => KernelError::UnsupportedType(t),
            other => KernelError::Layout(other.to_string()),
        }),
    }
}

/// [`try_dequantize_row`] for a row of a [`crate::WeightMatrix`], whose type and size
/// were checked when it was built.
///
/// # Panics
/// On a type [`computes`] refuses or a length that is not whole rows: both are caller
/// bugs, as no `WeightMatrix` holds such a row.
pub fn dequantize_row(ty: impl Into<WeightType>, src: &[u8], out: &mut [f32]) {
    if let Err(e) = try_dequantize_row(ty, src, out) {
        panic!("dequantize_row outside a checked WeightMatrix: {e}");
    }
}
