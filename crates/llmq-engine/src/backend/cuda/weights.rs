//! Weight matrices on the device, uploaded once in their packed GGUF form, and which
//! weight types the GPU kernels compute (`kernels/dequant.cuh`, `kernels/fp4.cu` for
//! MXFP4 / NVFP4, `kernels/fp_ct.cu` for compressed-tensors NVFP4 / FP8). Any other type
//! is refused when the model loads, naming the tensor, never computed on the host.

use super::buffers::ok;
use cudarc::driver::{CudaSlice, CudaStream};
use llmq_formats::GgmlType;
use llmq_kernels::fp_blocks::FpType;
use llmq_kernels::{IntAct, WeightMatrix, WeightType};
use std::borrow::Cow;
use std::sync::Arc;

/// The widest Hadamard block the rotation kernel takes (its floats in shared memory).
pub(super) const MAX_ROTATION: usize = 8192;

/// A packed weight matrix in device memory.
#[derive(Clone)]
pub struct CudaWeight {
    pub(super) data: Arc<CudaSlice<u8>>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_bytes: usize,
    /// the suffix of its `gemv_*` / `embed_*` kernels
    pub(super) kernel: &'static str,
    /// how the CPU engine rounds the activations this weight multiplies
    pub(super) act: ActRound,
    /// products through the integer kernels (`gemvq*_<kernel>`)
    pub(super) int_dot: bool,
    /// act-order weights: the stored column order (activations are gathered by it first)
    pub(super) perm: Option<Arc<CudaSlice<i32>>>,
    /// MR-GPTQ's online Hadamard block: activations are rotated by it first
    /// (`kernels/rotation.cu`)
    pub(super) rotation: Option<usize>,
    /// EXL3 trellis weights: their scales, order and codebook table (`exl3.rs`)
    pub(super) exl3: Option<super::exl3::Exl3Dev>,
}

/// The activation rounding of a weight type's CPU dot product (ggml's `vec_dot_type`;
/// Q8_1 rounds the values like Q8_0 and also keeps an f16 block sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ActRound {
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

fn act_of(t: GgmlType) -> ActRound {
    match t {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ActRound::F32,
        GgmlType::Q2K
        | GgmlType::Q3K
        | GgmlType::Q4K
        | GgmlType::Q5K
        | GgmlType::Q6K
        | GgmlType::IQ4XS => ActRound::Q8K,
        GgmlType::Q4_1 | GgmlType::Q5_1 => ActRound::Q8_1,
        _ => ActRound::Q8_0,
    }
}

/// The GGML types with GPU kernels, and their kernel suffixes.
pub const GPU_TYPES: &[(GgmlType, &str)] = &[
    (GgmlType::F32, "f32"),
    (GgmlType::F16, "f16"),
    (GgmlType::BF16, "bf16"),
    (GgmlType::Q4_0, "q4_0"),
    (GgmlType::Q4_1, "q4_1"),
    (GgmlType::Q5_0, "q5_0"),
    (GgmlType::Q5_1, "q5_1"),
    (GgmlType::Q8_0, "q8_0"),
    (GgmlType::IQ4NL, "iq4_nl"),
    (GgmlType::Q2K, "q2_k"),
    (GgmlType::Q3K, "q3_k"),
    (GgmlType::Q4K, "q4_k"),
    (GgmlType::Q5K, "q5_k"),
    (GgmlType::Q6K, "q6_k"),
    (GgmlType::IQ4XS, "iq4_xs"),
    (GgmlType::MXFP4, "mxfp4"),
    (GgmlType::NVFP4, "nvfp4"),
];

/// The types whose products also have an integer kernel (`kernels/gemvq.cu`: int8
/// activations, `dp4a`), used for every call of those types.
pub const INT_DOT_TYPES: &[&str] = &[
    "q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "iq4_nl", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "iq4_xs", "int4", "int8", "mxfp4", "nvfp4",
];

/// The float products with a one-row kernel `gemv1_*` besides the batch kernel `gemv_*`
/// (`kernels/gemv.cu`: fewer registers, the loop unrolled for more loads in flight): the
/// dense types and the compressed-tensors FP kernels, whose one-row products are float.
pub const GEMV1_KERNELS: &[&str] = &[
    "f32", "f16", "bf16", "mxfp4", "nvfp4_ct", "fp8_b8", "fp8_b16", "fp8_b32", "fp8_b64",
    "fp8_b128",
];

/// The kernel suffix of a weight type the GPU computes. Group-wise integer weights
/// (GPTQ / AWQ / compressed-tensors) run where the CPU engine multiplies them in integers:
/// 4 or 8 bits in blocks of 32 against Q8_0 activations (`int4` / `int8` in
/// `kernels/gemvq.cu`); other bit widths and block lengths are refused.
pub(super) fn kernel_of(ty: WeightType) -> Option<&'static str> {
    match ty {
        WeightType::Ggml(t) => GPU_TYPES.iter().find(|(g, _)| *g == t).map(|(_, k)| *k),
        WeightType::Int(t) if t.block == 32 && t.act == IntAct::Q8_0 => match t.bits {
            4 => Some("int4"),
            8 => Some("int8"),
            _ => None,
        },
        WeightType::Int(_) => None,
        WeightType::Fp(t) => fp_kernel(t),
        // products through `kernels/exl3.cu` (`exl3.rs`), no embedding lookup
        WeightType::Trellis(_) => Some("exl3"),
    }
}

/// The float kernels of compressed-tensors FP weights (`kernels/fp_ct.cu`; MXFP4 rows
/// are ggml's and run on `fp4.cu`'s, with f32 activations like the CPU's `dot_fp`).
/// FP8 blocks narrower than 8 columns are refused.
pub(super) fn fp_kernel(t: FpType) -> Option<&'static str> {
    match t {
        FpType::Nvfp4 => Some("nvfp4_ct"),
        FpType::Mxfp4 => Some("mxfp4"),
        FpType::Fp8 { block } => FP8_KERNELS
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, k)| *k),
    }
}

/// FP8 block widths with a kernel, and its suffix.
const FP8_KERNELS: &[(u16, &str)] = &[
    (8, "fp8_b8"),
    (16, "fp8_b16"),
    (32, "fp8_b32"),
    (64, "fp8_b64"),
    (128, "fp8_b128"),
];

/// The `gemv_*` / `embed_*` kernels of `kernels/fp_ct.cu` (the module loads them).
pub fn fp_kernel_names() -> impl Iterator<Item = String> {
    std::iter::once("nvfp4_ct")
        .chain(FP8_KERNELS.iter().map(|(_, k)| *k))
        .flat_map(|k| [format!("gemv_{k}"), format!("embed_{k}")])
}

/// Whether the GPU runs `w`'s column order: none, or one permutation for all its rows;
/// and its input rotation, if any: a Hadamard block that divides the row
/// (`kernels/rotation.cu`, one thread block per Hadamard block in shared memory).
pub(super) fn order_supported(w: &WeightMatrix) -> bool {
    w.input_rotation
        .is_none_or(|b| llmq_kernels::rotation::valid_block(b, w.cols) && b <= MAX_ROTATION)
        && w.col_order
            .as_ref()
            .is_none_or(|o| o.segments(w.rows).len() <= 1)
}

/// Q6_K's block size on the device (`Q6K_STRIDE` in `kernels/dequant.cuh`): the 210-byte
/// blocks padded with 6 zero bytes, so that every piece the kernels read (ql, qh, the
/// scales, d: all at multiples of 8 inside the block) is 8-byte aligned and read with
/// one 8-byte load where the 2-byte aligned blocks needed four 2-byte ones.
pub const Q6K_DEVICE_BLOCK: usize = 216;

/// `bytes` (whole rows of `row_bytes`, in the weight's packed form) in the layout the
/// device kernel `kernel` reads, and its row size: the bytes as they are for every
/// kernel but `q6_k`, whose blocks are padded to [`Q6K_DEVICE_BLOCK`] bytes.
pub fn device_layout<'a>(
    kernel: &str,
    bytes: &'a [u8],
    row_bytes: usize,
) -> (Cow<'a, [u8]>, usize) {
    const Q6K: usize = 210;
    if kernel != "q6_k" {
        return (Cow::Borrowed(bytes), row_bytes);
    }
    let mut out = vec![0u8; bytes.len() / Q6K * Q6K_DEVICE_BLOCK];
    for (o, b) in out
        .chunks_exact_mut(Q6K_DEVICE_BLOCK)
        .zip(bytes.chunks_exact(Q6K))
    {
        o[..Q6K].copy_from_slice(b);
    }
    (Cow::Owned(out), row_bytes / Q6K * Q6K_DEVICE_BLOCK)
}

/// The kernels that read whole words around byte-aligned blocks (`kernels/gemvq.cu`'s
/// GQINT: up to 5 bytes past a block), and the zero bytes their copies get after the end.
const TAIL_PADDED: &[&str] = &["int4", "int8"];
const TAIL_PAD: usize = 16;

/// Copy `w`'s packed bytes to the device (the type was checked at load), in the kernels'
/// layout ([`device_layout`]).
pub(super) fn upload(stream: &Arc<CudaStream>, w: &WeightMatrix) -> CudaWeight {
    let kernel = kernel_of(w.ty).unwrap_or_else(|| {
        panic!(
            "weight type {} reached the CUDA backend unchecked",
            w.ty.name()
        )
    });
    let (bytes, row_bytes) = device_layout(kernel, w.data.as_slice(), w.row_bytes());
    let data = if bytes.is_empty() {
        ok("alloc", stream.alloc_zeros::<u8>(1))
    } else if TAIL_PADDED.contains(&kernel) {
        let mut d = ok("alloc", stream.alloc_zeros::<u8>(bytes.len() + TAIL_PAD));
        ok(
            "upload",
            stream.memcpy_htod(&bytes[..], &mut d.slice_mut(..bytes.len())),
        );
        d
    } else {
        ok("upload", stream.clone_htod(&bytes[..]))
    };
    let perm = w.col_order.as_ref().map(|o| {
        let p: Vec<i32> = o.perm_of_row(0).iter().map(|&c| c as i32).collect();
        Arc::new(ok("upload", stream.clone_htod(&p[..])))
    });
    CudaWeight {
        perm,
        rotation: w.input_rotation,
        exl3: None,
        data: Arc::new(data),
        rows: w.rows,
        cols: w.cols,
        row_bytes,
        kernel,
        // Fp weights multiply f32 activations (`dot_fp`), even MXFP4's ggml blocks
        int_dot: !matches!(w.ty, WeightType::Fp(_) | WeightType::Trellis(_))
            && INT_DOT_TYPES.contains(&kernel),
        act: match w.ty {
            WeightType::Ggml(t) => act_of(t),
            WeightType::Int(_) => ActRound::Q8_0,
            WeightType::Fp(_) | WeightType::Trellis(_) => ActRound::F32,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmq_kernels::{FpGrid, FpGroups};

    /// An FP8 matrix of one row whose scale groups are `cps` columns wide.
    fn fp8(cols: usize, cps: usize) -> WeightMatrix {
        let codes = vec![0x38u8; cols];
        let scales = vec![0.5f32; cols.div_ceil(cps)];
        let g = FpGroups {
            grid: FpGrid::Fp8,
            rows: 1,
            cols,
            codes: &codes,
            scales: &scales,
            rows_per_scale: 1,
            cols_per_scale: cps,
            scale_cols: cols.div_ceil(cps),
            global_scale: 1.0,
        };
        WeightMatrix::from_fp_groups(&g, IntAct::F32).unwrap()
    }

    #[test]
    fn fp_weights_and_rotations_run_and_the_rest_is_refused_by_name() {
        assert_eq!(kernel_of(WeightType::Fp(FpType::Nvfp4)), Some("nvfp4_ct"));
        assert_eq!(kernel_of(WeightType::Fp(FpType::Mxfp4)), Some("mxfp4"));
        for (cps, kernel) in [(8, "fp8_b8"), (32, "fp8_b32"), (256, "fp8_b128")] {
            let w = fp8(256, cps);
            assert_eq!(kernel_of(w.ty), Some(kernel));
            assert!(super::super::unsupported("w", &w).is_none());
            // a rotated module runs too
            let r = w.with_input_rotation(64).unwrap();
            assert!(super::super::unsupported("w", &r).is_none());
            // every Fp kernel has its f16 dequantization for tensor-core prompts
            assert!(super::super::tensor_core::DEQUANT_TYPES.contains(&kernel));
        }
        // FP8 scale groups of 4 columns have no kernel: the tensor and type are named
        let narrow = fp8(36, 4);
        let e = super::super::unsupported("blk.0.attn_q.weight", &narrow).expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("blk.0.attn_q.weight") && msg.contains("FP8_B4"),
            "{msg}"
        );
        // as is a rotation wider than the kernel's shared memory
        let wide = fp8(2 * MAX_ROTATION, 128)
            .with_input_rotation(2 * MAX_ROTATION)
            .unwrap();
        assert!(super::super::unsupported("w", &wide).is_some());
    }
}
