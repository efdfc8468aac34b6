//! Finding the CUDA driver and NVRTC at run time (both are loaded dynamically, so the
//! binary starts without them) and naming a device. `LLMQ_NVRTC_LIB` may point at a
//! `libnvrtc.so.*` outside the loader's search path (the `nvidia-cuda-nvrtc` wheel): it
//! is loaded first, with the builtins library beside it, so the later load by soname
//! finds it.

use crate::error::{EngineError, Result};
use cudarc::driver::CudaContext;
use std::path::Path;
use std::sync::{Arc, Once};

/// An `EngineError::Device` with `what` and the driver's or compiler's message.
pub(super) fn device_err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Device(format!("{what}: {e}"))
}

/// Load the NVRTC library named by `LLMQ_NVRTC_LIB` (once per process).
fn preload_nvrtc() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Some(path) = std::env::var_os("LLMQ_NVRTC_LIB") else {
            return;
        };
        let path = Path::new(&path);
        let mut libs: Vec<std::path::PathBuf> = Vec::new();
        if let Some(dir) = path.parent() {
            if let Ok(rd) = std::fs::read_dir(dir) {
                libs.extend(rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
                }));
            }
        }
        libs.push(path.to_path_buf());
        for lib in libs {
            // SAFETY: loading NVIDIA's library runs only its initializers.
            if let Ok(l) = unsafe { libloading::Library::new(&lib) } {
                // kept for the life of the process: later loads find it by soname
                std::mem::forget(l);
            }
        }
    });
}

/// Whether the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub fn nvrtc_present() -> bool {
    preload_nvrtc();
    // SAFETY: only tries to open the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version as `(major, minor)`.
pub(super) fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(EngineError::Device(
            "the CUDA runtime compiler (libnvrtc.so) was not found: install the CUDA toolkit or \
             the `nvidia-cuda-nvrtc` wheel and put its lib folder on LD_LIBRARY_PATH (or set \
             LLMQ_NVRTC_LIB to the library)"
                .into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result().map_err(|e| device_err("nvrtcVersion", e))?;
    Ok((major, minor))
}

/// CUDA devices visible (0 without a driver).
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .unwrap_or(0)
}

/// Open device `ordinal`: its context and compute capability.
pub(super) fn open(ordinal: usize) -> Result<(Arc<CudaContext>, (i32, i32))> {
    if !driver_present() {
        return Err(EngineError::Device(
            "no CUDA driver found (libcuda.so could not be loaded): this machine has no \
             NVIDIA GPU driver; run on the CPU with --device cpu"
                .into(),
        ));
    }
    let n = device_count();
    if ordinal >= n {
        return Err(EngineError::Device(format!(
            "CUDA device {ordinal} does not exist ({n} device(s) visible)"
        )));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| device_err("opening the CUDA device", e))?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| device_err("reading the compute capability", e))?;
    Ok((ctx, cc))
}
