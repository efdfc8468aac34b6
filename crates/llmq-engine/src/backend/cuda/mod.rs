//! The CUDA backend: every operation of [`crate::Backend`] on an NVIDIA GPU through the
//! driver API (`cudarc`, loaded at run time). Buffers and KV caches live in device
//! memory; weights are uploaded once, packed as in the GGUF file, and multiplied by
//! fused dequantize-and-dot kernels; kernels are CUDA C++ (`kernels/`), compiled by
//! NVRTC for the device at first use and cached on disk (`compile`).
//!
//! Data crosses to the host only where the trait's answer is on the host: logits
//! (`download`), calibration observers (`to_host`) and MoE routing decisions (`route`).
//!
//! Submodules: `device` (driver / NVRTC discovery), `compile`, `buffers`, `weights`,
//! `ops` (the trait's operations), `attention`, `tensor_core` (prompt products through
//! cuBLAS), `uploads` (repeated small host arrays
//! uploaded once), `trace` (`LLMQ_CUDA_TRACE=1`: time per kernel), `step` (where every
//! operation's launches, buffers and uploads go) and `record` (decode steps recorded and
//! replayed as CUDA graphs).

mod attention;
mod buffers;
mod calib;
mod compile;
mod device;
mod exl3;
mod ops;
mod record;
mod rotation;
mod step;
mod tensor_core;
mod trace;
mod uploads;
mod weights;

pub use buffers::CudaBuf;
pub use calib::{
    CalibGpu, DeviceAwqStats, DeviceHessian, DeviceSquares, GptqFail, GptqOut, GptqParams,
    CALIB_KERNELS,
};
pub use compile::{compile_uncached, module_source, SOURCES};
pub use device::{device_count, driver_present, nvrtc_present};
pub use exl3::{
    gemv_kernel as exl3_gemv_kernel, kernel_names as exl3_kernel_names, lut_bits as exl3_lut_bits,
    Exl3Decode,
};
pub use record::GraphStats;
pub use tensor_core::DEQUANT_TYPES as DEQUANT_F16_TYPES;
pub use weights::{
    device_layout, fp_kernel_names, CudaWeight, GEMV1_KERNELS, GPU_TYPES, INT_DOT_TYPES,
    Q6K_DEVICE_BLOCK,
};

use crate::error::{EngineError, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

/// The kernels every model needs (the per-type `gemv_*` / `embed_*` come from
/// [`GPU_TYPES`]).
pub const KERNELS: &[&str] = &[
    "rms_norm",
    "add_bias",
    "add_assign",
    "softcap",
    "glu",
    "glu_fused",
    "rope",
    "gather_rows",
    "slice_cols",
    "permute_cols",
    "rotate_blocks",
    "write_cols",
    "copy_at",
    "concat_cols",
    "scatter_add_rows",
    "attention",
    "attention_g2",
    "attention_g4",
    "attention_g8",
    "act_q8_0",
    "act_q8_k",
    "act_pack_q8_0",
    "act_pack_q8_1",
    "act_pack_q8_k",
];

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    name: String,
    ordinal: usize,
    cc: (i32, i32),
    uploads: uploads::UploadCache,
    trace: &'static trace::Trace,
    tensor_core: Option<tensor_core::TensorCore>,
    /// prompt products go to `tensor_core` (when it is there)
    tensor_core_on: std::sync::atomic::AtomicBool,
    /// decode steps recorded and replayed as CUDA graphs (`record`)
    rec: std::sync::Mutex<record::Recorder>,
    /// EXL3 codebooks' fp16 tables on the device (`exl3`)
    exl3_luts: std::sync::Mutex<Vec<(llmq_kernels::Codebook, Arc<cudarc::driver::CudaSlice<u16>>)>>,
    /// EXL3 products read codebook values from those tables (else compute them)
    exl3_lut_on: std::sync::atomic::AtomicBool,
}

/// One CUDA device with the engine's kernels loaded.
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // LLMQ_CUDA_GRAPHS=stats: how the recorded decode steps went
        if std::env::var("LLMQ_CUDA_GRAPHS").is_ok_and(|v| v == "stats") {
            let s = self.rec.lock().map(|r| r.stats).unwrap_or_default();
            let per = |x: f64| 1e6 * x / s.steps.max(1) as f64;
            eprintln!(
                "CUDA graphs: {} recorded steps, {} replayed, {} captured, {} eager; host per step: {:.1} us recording, {:.1} us flushing",
                s.steps,
                s.replays,
                s.captures,
                s.eager,
                per(s.record_s),
                per(s.flush_s)
            );
        }
    }
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Cuda {
    /// Open device `ordinal` and load the kernels (compiled, or from the disk cache).
    pub fn open(ordinal: usize) -> Result<Cuda> {
        let (ctx, cc) = device::open(ordinal)?;
        // One stream, so no per-buffer event tracking is needed.
        // SAFETY: every buffer of this backend is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        // a stream of its own: the legacy default stream cannot be captured into graphs
        let stream = ctx
            .new_stream()
            .map_err(|e| device::device_err("creating a CUDA stream", e))?;
        let arch = format!("compute_{}{}", cc.0, cc.1);
        let ptx = compile::compile(&arch)?;
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| device::device_err("loading the CUDA kernels", e))?;
        let mut funcs = HashMap::new();
        let names = KERNELS
            .iter()
            .map(|k| k.to_string())
            .chain(
                GPU_TYPES
                    .iter()
                    .flat_map(|(_, k)| [format!("gemv_{k}"), format!("embed_{k}")]),
            )
            .chain(
                weights::INT_DOT_TYPES
                    .iter()
                    .flat_map(|k| [format!("gemvq1_{k}"), format!("gemvq8_{k}")]),
            )
            .chain(weights::fp_kernel_names())
            .chain(GEMV1_KERNELS.iter().map(|k| format!("gemv1_{k}")))
            .chain(tensor_core::kernel_names())
            .chain(calib::kernel_names())
            .chain(exl3::kernel_names());
        for n in names {
            let f = module
                .load_function(&n)
                .map_err(|e| device::device_err(&format!("kernel {n}"), e))?;
            funcs.insert(n, f);
        }
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let tensor_core = tensor_core::TensorCore::open(&stream);
        let trace = trace::global();
        let graphs = !trace.on() && std::env::var("LLMQ_CUDA_GRAPHS").map_or(true, |v| v != "0");
        Ok(Cuda {
            inner: Arc::new(Inner {
                ctx,
                stream,
                _module: module,
                funcs,
                name,
                ordinal,
                cc,
                uploads: uploads::UploadCache::default(),
                trace,
                rec: std::sync::Mutex::new(record::Recorder::new(graphs)),
                tensor_core_on: std::sync::atomic::AtomicBool::new(tensor_core.is_some()),
                tensor_core,
                exl3_luts: std::sync::Mutex::new(Vec::new()),
                exl3_lut_on: std::sync::atomic::AtomicBool::new(
                    exl3::Exl3Decode::from_env() == exl3::Exl3Decode::Lut,
                ),
            }),
        })
    }

    /// `cuda:N (name, sm_XY)`.
    pub fn describe(&self) -> String {
        let i = &self.inner;
        format!("cuda:{} ({}, sm_{}{})", i.ordinal, i.name, i.cc.0, i.cc.1)
    }

    /// Whether prompt products use the tensor cores (`tensor_core`: cuBLAS was found
    /// and they were not turned off).
    pub fn tensor_core_prompts(&self) -> bool {
        self.inner.tensor_core.is_some()
            && self
                .inner
                .tensor_core_on
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turn the tensor-core prompt products on or off. Off, every product runs on the
    /// GEMV kernels, which compute what the CPU engine computes up to summation order;
    /// quality measurements (`eval`) use that, because the f16 rounding of the
    /// tensor-core path is of the size of an 8-bit format's own error.
    pub fn set_tensor_core_prompts(&self, on: bool) {
        self.inner
            .tensor_core_on
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes of device memory free and in total.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.inner
            .ctx
            .mem_get_info()
            .map_err(|e| device::device_err("cuMemGetInfo", e))
    }

    /// Wait for all queued work (timing).
    pub fn synchronize(&self) -> Result<()> {
        self.flush_recorded(false);
        self.inner
            .stream
            .synchronize()
            .map_err(|e| device::device_err("synchronize", e))?;
        self.stream_synced();
        Ok(())
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// With `LLMQ_CUDA_TRACE`: the stream drained (unless in host mode) and the start time
    /// of the next operation.
    fn trace_start(&self) -> Option<std::time::Instant> {
        self.inner.trace.on().then(|| {
            if self.inner.trace.synchronised() {
                let _ = self.inner.stream.synchronize();
            }
            std::time::Instant::now()
        })
    }

    /// With `LLMQ_CUDA_TRACE`: the operation started at `t` finished (on the GPU, unless in
    /// host mode), under `name`.
    fn trace_end(&self, name: &str, t: Option<std::time::Instant>) {
        if let Some(t) = t {
            if self.inner.trace.synchronised() {
                let _ = self.inner.stream.synchronize();
            }
            self.inner.trace.record(name, t);
        }
    }

    pub(crate) fn func(&self, name: &str) -> &CudaFunction {
        self.inner
            .funcs
            .get(name)
            .unwrap_or_else(|| panic!("CUDA kernel {name} was not loaded"))
    }
}

/// `EngineError::UnsupportedType` for a tensor whose type has no GPU kernel.
pub(crate) fn unsupported(name: &str, w: &llmq_kernels::WeightMatrix) -> Option<EngineError> {
    // integer weights have product kernels only, no embedding lookup
    let int_embedding = matches!(w.ty, llmq_kernels::WeightType::Int(_))
        && (name.contains("token_embd") || name.contains("embed_tokens"));
    if weights::kernel_of(w.ty).is_some() && weights::order_supported(w) && !int_embedding {
        return None;
    }
    Some(EngineError::UnsupportedOnDevice {
        name: name.into(),
        ty: w.ty.name(),
        device: "the CUDA backend".into(),
    })
}

impl Cuda {
    /// Device-to-device copy rate over a buffer of `bytes`, counting bytes read and
    /// written (the bandwidth ceiling GEMV shares are quoted against): bytes/s, the
    /// median of `iters` timed copies.
    pub fn copy_bandwidth(&self, bytes: usize, iters: usize) -> Result<f64> {
        let s = self.stream();
        let n = bytes / 4;
        let src = s
            .alloc_zeros::<f32>(n)
            .map_err(|e| device::device_err("alloc", e))?;
        let mut dst = s
            .alloc_zeros::<f32>(n)
            .map_err(|e| device::device_err("alloc", e))?;
        let mut times = Vec::with_capacity(iters);
        for i in 0..iters + 2 {
            self.synchronize()?;
            let t0 = std::time::Instant::now();
            s.memcpy_dtod(&src, &mut dst)
                .map_err(|e| device::device_err("copy", e))?;
            self.synchronize()?;
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(2.0 * (n * 4) as f64 / times[times.len() / 2])
    }
}
