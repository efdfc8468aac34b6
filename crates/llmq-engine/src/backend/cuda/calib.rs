//! Calibration math on the GPU: GPTQ's Hessian `2/n·XᵀX` accumulated on the device
//! as an f64 `cublasDsyrk` per observed batch (no copy to the host), and the GPTQ
//! solve (Frantar et al., arXiv 2210.17323) on the device — a blocked Cholesky of
//! the reordered, dampened Hessian (`kernels/calib.cuh` factors each 64-column
//! diagonal block, cuBLAS `Dtrsm` / `Dsyrk` the panels), the inverse factor through
//! one `Dtrsm` against the identity, GPTQ's in-block column loop (one thread per
//! weight row) and the lazy batch updates as `Sgemm`s.
//!
//! The steps and their order are those of `llmq_calib::gptq` (which documents the
//! reference details): dead inputs, per-channel and static group grids, act-order's
//! permutation and the dampening with its retries are computed on the host from the
//! Hessian's diagonal exactly as there; `U` comes from the index-reversed Hessian
//! (`JHJ = L̃L̃ᵀ`, `U = J·L̃⁻¹·J`) in f64; the column loop runs in f32 with products
//! rounded as the CPU rounds them. What differs is the summation order of the
//! GEMMs, so codes agree with the CPU's up to floating-point order.

use super::buffers::CudaBuf;
use super::device::device_err;
use super::Cuda;
use crate::error::{EngineError, Result};
use cudarc::cublas::{sys, CudaBlas};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use llmq_hfquant::IntQuantized;

/// The kernels of `kernels/calib.cu` and `kernels/calib_awq.cu`.
pub const CALIB_KERNELS: &[&str] = &[
    "calib_f32_to_f64",
    "calib_round_bf16",
    "calib_diag",
    "calib_axpy",
    "calib_build_r",
    "calib_potf2_block",
    "calib_eye",
    "calib_u",
    "calib_gptq_block",
    "awq_abs_sum",
    "awq_gather",
    "awq_div_cols",
    "awq_fq_diff_k",
    "awq_sq_partial",
    "awq_sum_into",
    "awq_gram",
    "awq_clip",
    "calib_sq_sum",
];

/// Columns of one diagonal block of the blocked Cholesky.
const CHOL_BLOCK: usize = 64;
/// GPTQ's lazy-update block (the column loop keeps one block of a row in registers).
const GPTQ_BLOCK: usize = 128;

/// GPTQ settings (as `llmq_calib::GptqConfig`, with its 128-column block).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqParams {
    pub bits: u8,
    pub group_size: Option<usize>,
    pub sym: bool,
    pub desc_act: bool,
    pub static_groups: bool,
    pub damp_percent: f64,
    pub max_damp_percent: f64,
}

/// What [`CalibGpu::gptq`] returns (as `llmq_calib::GptqResult`).
#[derive(Debug, Clone)]
pub struct GptqOut {
    pub quantized: IntQuantized,
    pub loss: f64,
    pub damp_percent: f64,
}

/// Why a GPTQ solve failed (the CPU's `GptqError` cases that can arise here).
#[derive(Debug)]
pub enum GptqFail {
    /// not positive definite even with `damp_percent`; `column` failed (original order)
    NotPositiveDefinite { damp_percent: f64, column: usize },
    /// the weight or the Hessian's diagonal holds NaN or infinite values
    NonFinite(&'static str),
    /// bad settings or shapes
    Invalid(String),
    /// a device or cuBLAS failure
    Device(EngineError),
}

impl From<EngineError> for GptqFail {
    fn from(e: EngineError) -> Self {
        GptqFail::Device(e)
    }
}

/// `XᵀX` (lower triangle, column-major, f64) of one Linear input on the device, and
/// the rows added.
pub struct DeviceHessian {
    cols: usize,
    xtx: CudaSlice<f64>,
    n_tokens: u64,
}

impl DeviceHessian {
    /// Rows added so far.
    pub fn n_tokens(&self) -> u64 {
        self.n_tokens
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// The GPU calibration context: the backend and a cuBLAS handle on its stream.
pub struct CalibGpu {
    be: Cuda,
    blas: CudaBlas,
    /// the f64 copy of the rows being added (grown as needed)
    scratch: std::sync::Mutex<Option<CudaSlice<f64>>>,
}

fn blas_ok(what: &str, s: sys::cublasStatus_t) -> Result<()> {
    s.result()
        .map_err(|e| EngineError::Device(format!("cuBLAS {what} failed: {e:?}")))
}

fn dev<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| device_err(what, e))
}

/// Threads per block of the element-wise kernels; blocks are capped (the kernels
/// stride over the grid).
fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CalibGpu {
    /// The context on `be`; an error when cuBLAS cannot be loaded.
    pub fn new(be: &Cuda) -> Result<CalibGpu> {
        // SAFETY: only tries to open the library (the backend preloaded it when found).
        if !unsafe { sys::is_culib_present() } {
            return Err(EngineError::Device(
                "calibration on the GPU needs cuBLAS (libcublas.so), which was not found: set LLMQ_CUBLAS_LIB or CUDA_HOME".into(),
            ));
        }
        let blas = CudaBlas::new(be.stream().clone())
            .map_err(|e| EngineError::Device(format!("cuBLAS handle: {e:?}")))?;
        Ok(CalibGpu {
            be: be.clone(),
            blas,
            scratch: std::sync::Mutex::new(None),
        })
    }

    /// The backend.
    pub fn cuda(&self) -> &Cuda {
        &self.be
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(self.be.stream()).0
    }

    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[&dyn Arg]) -> Result<()> {
        let f = self.be.func(name);
        let mut b = self.be.stream().launch_builder(f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: every kernel of `calib.cu` gets its arguments in its signature's
        // order and types (device addresses as u64), and the callers size the buffers
        // for the indices the kernel forms.
        dev(name, unsafe { b.launch(cfg) }).map(|_| ())
    }

    fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        dev("alloc", self.be.stream().alloc_zeros::<T>(n.max(1)))
    }

    fn upload<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        if v.is_empty() {
            // SAFETY: a one-value buffer no kernel reads
            return dev("alloc", unsafe { self.be.stream().alloc::<T>(1) });
        }
        dev("upload", self.be.stream().clone_htod(v))
    }

    fn download<T: DeviceRepr + Default + Clone>(
        &self,
        s: &CudaSlice<T>,
        n: usize,
    ) -> Result<Vec<T>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        dev("download", self.be.stream().clone_dtoh(&s.slice(..n)))
    }

    /// Every value of `x` rounded to bf16 precision in place, as the host's activation
    /// store rounds (so activations kept on the device hold the host store's values).
    pub fn round_bf16(&self, x: &mut CudaBuf) -> Result<()> {
        if x.len == 0 {
            return Ok(());
        }
        let n = x.len as i64;
        self.launch(
            "calib_round_bf16",
            grid(x.len),
            &[&x.ptr_at(self.be.stream(), 0), &n],
        )
    }

    /// An empty Hessian for `cols` input features.
    pub fn hessian(&self, cols: usize) -> Result<DeviceHessian> {
        Ok(DeviceHessian {
            cols,
            xtx: self.zeros::<f64>(cols * cols)?,
            n_tokens: 0,
        })
    }

    /// Add `rows` rows of `x` (`[rows, cols]` on the device) to `h`.
    pub fn hessian_add(&self, h: &mut DeviceHessian, x: &CudaBuf, rows: usize) -> Result<()> {
        let c = h.cols;
        if rows == 0 {
            return Ok(());
        }
        if x.len != rows * c {
            return Err(EngineError::Device(format!(
                "Hessian input holds {} values, {rows} rows of {c} need {}",
                x.len,
                rows * c
            )));
        }
        let mut slot = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|s| s.len() < rows * c) {
            *slot = Some(self.zeros::<f64>(rows * c)?);
        }
        let x64 = slot.as_ref().expect("allocated above");
        let n = (rows * c) as i64;
        self.launch(
            "calib_f32_to_f64",
            grid(rows * c),
            &[&x.ptr_at(self.be.stream(), 0), &self.ptr(x64), &n],
        )?;
        let (alpha, beta) = (1.0f64, 1.0f64);
        // x64 is column-major [c, rows] = Xᵀ: C += Xᵀ·(Xᵀ)ᵀ = XᵀX, lower triangle
        // SAFETY: x64 holds c·rows values, xtx c·c, on the handle's stream.
        let s = unsafe {
            sys::cublasDsyrk_v2(
                *self.blas.handle(),
                sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                sys::cublasOperation_t::CUBLAS_OP_N,
                c as i32,
                rows as i32,
                &alpha,
                self.ptr(x64) as *const f64,
                c as i32,
                &beta,
                self.ptr(&h.xtx) as *mut f64,
                c as i32,
            )
        };
        blas_ok("Dsyrk", s)?;
        h.n_tokens += rows as u64;
        Ok(())
    }

    /// The sum of Hessians of the same width (`XᵀX` and rows added up): the all-token
    /// Hessian of a MoE input from its experts'.
    pub fn hessian_sum(&self, parts: &[&DeviceHessian]) -> Result<Option<DeviceHessian>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let mut sum = self.hessian(first.cols)?;
        let n = (first.cols * first.cols) as i64;
        for p in parts {
            self.launch(
                "calib_axpy",
                grid(n as usize),
                &[&self.ptr(&sum.xtx), &self.ptr(&p.xtx), &1.0f64, &n],
            )?;
            sum.n_tokens += p.n_tokens;
        }
        Ok(Some(sum))
    }

    /// `H = 2/n·XᵀX` back on the host (`[cols, cols]` row-major), as
    /// `llmq_calib::HessianAccumulator::finish` gives it (checks and tests).
    pub fn hessian_host(&self, h: &DeviceHessian) -> Result<Vec<f64>> {
        let c = h.cols;
        let lower = self.download(&h.xtx, c * c)?;
        let f = finish_factor(h.n_tokens);
        let mut out = vec![0.0f64; c * c];
        for i in 0..c {
            for j in 0..c {
                let (hi, lo) = (i.max(j), i.min(j));
                out[i * c + j] = lower[hi + lo * c] * f;
            }
        }
        Ok(out)
    }
}

/// `2/n`, or 0 without tokens (every input dead).
fn finish_factor(n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        2.0 / n as f64
    }
}

/// A kernel argument.
trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}
impl<T: DeviceRepr> Arg for T {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

/// The kernel names to load.
pub(super) fn kernel_names() -> impl Iterator<Item = String> {
    CALIB_KERNELS.iter().map(|k| k.to_string())
}

#[path = "calib_awq.rs"]
mod awq;
#[path = "calib_gptq.rs"]
mod gptq;
pub use awq::{DeviceAwqStats, DeviceSquares};
