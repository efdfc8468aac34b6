//! Prompt products on tensor cores. With [`MIN_TOKENS`] or more activation rows, a
//! weight product `Y = X · Wᵀ` is: the packed weight dequantized to a dense f16 matrix
//! (`kernels/tensorcore.cu`, the formulas of `dequant.cuh`; F16 weights are used as they
//! are) in a workspace the backend keeps, the activations rounded to f16, and one cuBLAS
//! `cublasGemmEx` with f16 inputs and f32 accumulation and output. llama.cpp's CUDA
//! backend feeds cuBLAS the same way for large batches. The integer GEMV kernels read
//! each weight once per eight rows and are bound by their integer work there; this
//! reads it once per call.
//!
//! cuBLAS is loaded at run time like the driver (`libcublas.so`, from the loader path,
//! `LLMQ_CUBLAS_LIB`, or `$CUDA_HOME`/`/usr/local/cuda`); without it, or with
//! `LLMQ_CUDA_CUBLAS=0`, every product stays on the GEMV kernels.
//!
//! The activations are first rounded as the CPU engine rounds them for the weight's
//! type (Q8_0 / Q8_K blocks for quantized weights, as the GEMV kernels do), then to
//! f16; the f16 steps (activations and dequantized weights, about 2⁻¹² relative each)
//! are what separates a prompt's logits from the CPU's, so they match to a tolerance,
//! not bit for bit, and a token's logits computed in a prompt batch differ in the last
//! bits from the same token decoded alone.

use super::buffers::{ok, CudaBuf};
use super::ops::{flat, launch};
use super::weights::CudaWeight;
use super::Cuda;
use cudarc::cublas::{result as blas, sys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Activation rows from which a product goes to the tensor cores (the memory plan
/// counts the workspaces from there on).
pub(super) const MIN_TOKENS: usize = crate::model::TENSOR_CORE_MIN_TOKENS;

/// Weight kernels with a `dequant_f16_*` kernel (F16 needs none).
pub const DEQUANT_TYPES: &[&str] = &[
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "iq4_xs", "mxfp4", "nvfp4", "nvfp4_ct", "fp8_b8", "fp8_b16", "fp8_b32", "fp8_b64", "fp8_b128",
];

/// The kernels this module launches.
pub(super) fn kernel_names() -> impl Iterator<Item = String> {
    DEQUANT_TYPES
        .iter()
        .map(|k| format!("dequant_f16_{k}"))
        .chain(std::iter::once("f32_to_f16".to_string()))
}

/// A cuBLAS handle on the backend's stream and the f16 workspaces.
pub(super) struct TensorCore {
    blas: CudaBlas,
    weight: Mutex<Option<CudaSlice<u16>>>,
    act: Mutex<Option<CudaSlice<u16>>>,
}

/// Load cuBLAS (and cuBLASLt, which it needs) from `LLMQ_CUBLAS_LIB`'s folder or the
/// toolkit's when the loader path has none.
fn preload_cublas() {
    // SAFETY: only tries to open the library.
    if unsafe { sys::is_culib_present() } {
        return;
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("LLMQ_CUBLAS_LIB") {
        if let Some(d) = PathBuf::from(p).parent() {
            dirs.push(d.to_path_buf());
        }
    }
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(h).join("lib64"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut libs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("libcublasLt.so.") || n.starts_with("libcublas.so.")
                })
            })
            .collect();
        // cuBLASLt first: cuBLAS links against it
        libs.sort_by_key(|p| !p.to_string_lossy().contains("cublasLt"));
        for lib in libs {
            // SAFETY: loading NVIDIA's library runs only its initializers.
            if let Ok(l) = unsafe { libloading::Library::new(&lib) } {
                // kept for the life of the process: later loads find it by soname
                std::mem::forget(l);
            }
        }
        // SAFETY: as above.
        if unsafe { sys::is_culib_present() } {
            return;
        }
    }
}

impl TensorCore {
    /// cuBLAS on `stream`, or `None` when it cannot be loaded or is turned off.
    pub(super) fn open(stream: &Arc<CudaStream>) -> Option<TensorCore> {
        if std::env::var("LLMQ_CUDA_CUBLAS").is_ok_and(|v| v == "0") {
            return None;
        }
        preload_cublas();
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return None;
        }
        let blas = CudaBlas::new(stream.clone()).ok()?;
        Some(TensorCore {
            blas,
            weight: Mutex::new(None),
            act: Mutex::new(None),
        })
    }

    /// Whether `w`'s products with `n` rows go to the tensor cores.
    pub(super) fn takes(w: &CudaWeight, n: usize) -> bool {
        n >= MIN_TOKENS
            && w.cols.is_multiple_of(8)
            && (DEQUANT_TYPES.contains(&w.kernel)
                || (w.kernel == "f16" && w.row_bytes == 2 * w.cols))
    }

    /// `y = x · Wᵀ` for `n` rows of `x` (`takes(w, n)` holds).
    pub(super) fn matmul(&self, be: &Cuda, w: &CudaWeight, x: &CudaBuf, n: usize, y: &mut CudaBuf) {
        let s = be.stream();
        let mut wbuf = self.weight.lock().unwrap_or_else(|p| p.into_inner());
        let mut abuf = self.act.lock().unwrap_or_else(|p| p.into_inner());
        let a = grown(s, &mut abuf, n * w.cols);
        let len = (n * w.cols) as u64;
        let rounded = be.round_activations(w.act, x, n * w.cols);
        let x = rounded.as_ref().unwrap_or(x);
        launch!(be, "f32_to_f16", flat(n * w.cols), &x.data, a, &len);
        let (rows, cols) = (w.rows as i32, w.cols as i32);
        let dense: &CudaSlice<u8>;
        let deq;
        let wptr = if w.kernel == "f16" {
            dense = &w.data;
            dense.device_ptr(s).0
        } else {
            deq = grown(s, &mut wbuf, w.rows * w.cols);
            let rb = w.row_bytes as u64;
            let name = format!("dequant_f16_{}", w.kernel);
            launch!(
                be,
                &name,
                flat(w.rows * w.cols / 8),
                &*w.data,
                &rb,
                &rows,
                &cols,
                deq
            );
            deq.device_ptr(s).0
        };
        let aptr = a.device_ptr(s).0;
        let yptr = y.data.device_ptr_mut(s).0;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let t = be.trace_start();
        // Row-major W [rows, cols], X [n, cols], Y [n, rows] are column-major Wᵀ, Xᵀ, Yᵀ:
        // Yᵀ (rows × n) = op(Wᵀ)ᵀ · Xᵀ, i.e. A = W read transposed, B = X.
        // SAFETY: the three buffers hold rows·cols, n·cols and n·rows values on the
        // handle's stream, and alpha/beta are host scalars (the default pointer mode).
        let r = unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                rows,
                n as i32,
                cols,
                (&alpha) as *const f32 as *const _,
                wptr as *const _,
                sys::cudaDataType::CUDA_R_16F,
                cols,
                aptr as *const _,
                sys::cudaDataType::CUDA_R_16F,
                cols,
                (&beta) as *const f32 as *const _,
                yptr as *mut _,
                sys::cudaDataType::CUDA_R_32F,
                rows,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        r.unwrap_or_else(|e| panic!("cuBLAS GemmEx failed: {e:?}"));
        be.trace_end("cublas_gemm", t);
    }
}

/// The workspace in `slot`, grown to at least `n` values (its contents are not kept).
fn grown<'a>(
    s: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<u16>>,
    n: usize,
) -> &'a CudaSlice<u16> {
    if slot.as_ref().is_none_or(|b| b.len() < n) {
        // SAFETY: every value is written by a kernel before cuBLAS reads it.
        *slot = Some(ok("alloc", unsafe { s.alloc::<u16>(n.max(1)) }));
    }
    slot.as_ref().expect("allocated above")
}
