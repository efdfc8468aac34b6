//! The kernels' CUDA C++ sources (`kernels/*.cu`, compiled together as one module) and
//! their run-time compilation with NVRTC for the device's architecture. The PTX is
//! cached on disk under `~/.cache/llm-quantize/cuda/` (or `$LLMQ_CUDA_CACHE`), keyed by
//! the SHA-256 of the source, the architecture and NVRTC's version.

use super::device::{device_err, nvrtc_version};
use crate::error::{EngineError, Result};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The kernel sources in the order they are concatenated (headers first).
pub const SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("dequant.cuh", include_str!("kernels/dequant.cuh")),
    ("elementwise.cu", include_str!("kernels/elementwise.cu")),
    ("actquant.cu", include_str!("kernels/actquant.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
    ("gemv.cu", include_str!("kernels/gemv.cu")),
    ("gemvq.cu", include_str!("kernels/gemvq.cu")),
    ("tensorcore.cu", include_str!("kernels/tensorcore.cu")),
    ("fp4.cu", include_str!("kernels/fp4.cu")),
    ("fp_ct.cu", include_str!("kernels/fp_ct.cu")),
    ("rotation.cu", include_str!("kernels/rotation.cu")),
    ("exl3.cu", include_str!("kernels/exl3.cu")),
    ("calib.cuh", include_str!("kernels/calib.cuh")),
    ("calib.cu", include_str!("kernels/calib.cu")),
    ("calib_awq.cuh", include_str!("kernels/calib_awq.cuh")),
    ("calib_awq.cu", include_str!("kernels/calib_awq.cu")),
];

/// The whole module's source.
pub fn module_source() -> String {
    let mut s = String::new();
    for (name, src) in SOURCES {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(src);
        s.push('\n');
    }
    s
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LLMQ_CUDA_CACHE") {
        return Some(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/llm-quantize/cuda"))
}

/// Compile the module for `arch` (`compute_90`, `sm_90`, ...) with NVRTC, bypassing
/// the cache: the PTX text.
pub fn compile_uncached(arch: &str) -> Result<String> {
    nvrtc_version()?;
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-default-device".into(),
        ],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(module_source(), opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => EngineError::Device(format!(
            "NVRTC could not compile the CUDA kernels for {arch}:\n{}",
            log.to_string_lossy()
        )),
        e => device_err("NVRTC", e),
    })?;
    Ok(ptx.to_src())
}

/// The module's PTX for `arch`, from the disk cache or compiled (and then cached).
pub fn compile(arch: &str) -> Result<String> {
    let (major, minor) = nvrtc_version()?;
    let mut h = Sha256::new();
    h.update(module_source().as_bytes());
    h.update(format!("\0{arch}\0nvrtc {major}.{minor}").as_bytes());
    let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let path = cache_dir().map(|d| d.join(format!("{key}.ptx")));
    if let Some(p) = &path {
        if let Ok(ptx) = std::fs::read_to_string(p) {
            return Ok(ptx);
        }
    }
    let ptx = compile_uncached(arch)?;
    if let Some(p) = &path {
        // a cache that cannot be written only costs the next start a compile
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &ptx).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok(ptx)
}
