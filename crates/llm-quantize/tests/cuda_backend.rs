//! The CUDA backend on a machine without a GPU (CI): every kernel source compiles with
//! NVRTC (the library of the `nvidia-cuda-nvrtc` wheel that
//! `scripts/install-py-test-deps.sh` installs), and `--device cuda` without a driver is
//! a clear error with exit code 8.

mod common;
use common::*;
use llmq_engine::backend::cuda;
use std::path::PathBuf;

/// `libnvrtc.so.*` from `LLMQ_NVRTC_LIB` or the Python test venv's NVIDIA wheels.
fn find_nvrtc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LLMQ_NVRTC_LIB") {
        return Some(PathBuf::from(p));
    }
    let root = std::env::var_os("LLM_QUANTIZE_PY_TEST_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/llm-quantize/py-test-deps"))
        })?;
    let lib = std::fs::read_dir(root.join("venv/lib")).ok()?;
    for py in lib.filter_map(|e| e.ok()) {
        let nv = py.path().join("site-packages/nvidia");
        for sub in ["cu13/lib", "cuda_nvrtc/lib"] {
            let Ok(rd) = std::fs::read_dir(nv.join(sub)) else {
                continue;
            };
            for f in rd.filter_map(|e| e.ok()) {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with("libnvrtc.so") {
                    return Some(f.path());
                }
            }
        }
    }
    None
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if let Some(p) = find_nvrtc() {
        std::env::set_var("LLMQ_NVRTC_LIB", p);
    }
    if !cuda::nvrtc_present() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must have NVRTC: run scripts/install-py-test-deps.sh (nvidia-cuda-nvrtc)"
        );
        eprintln!("skipped: no libnvrtc.so (install the nvidia-cuda-nvrtc wheel)");
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let ptx = cuda::compile_uncached(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let kernels = ptx.matches(".entry ").count();
        // 15 shared kernels + gemv and embed per GPU type
        assert_eq!(kernels, 15 + 2 * cuda::GPU_TYPES.len(), "{arch}");
        for (_, k) in cuda::GPU_TYPES {
            assert!(
                ptx.contains(&format!(".entry gemv_{k}(")),
                "{arch}: gemv_{k}"
            );
        }
    }
}

#[test]
fn device_cuda_without_a_driver_is_a_clear_error() {
    if cuda::driver_present() {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = shared_model("llama");
    for cmd in ["eval", "generate"] {
        let mut args = vec![
            "--format",
            "json",
            cmd,
            model.to_str().unwrap(),
            "--device",
            "cuda",
        ];
        if cmd == "generate" {
            args.extend(["-p", "hi", "--max-tokens", "1"]);
        }
        let r = lq(tmp.path(), &args);
        assert_eq!(r.code, 8, "{cmd}: {}\n{}", r.stdout, r.stderr);
        let v = r.json();
        assert_eq!(v["status"], "error");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("no CUDA driver"), "{cmd}: {msg}");
    }
    // a malformed device is a usage error
    let r = lq(
        tmp.path(),
        &["eval", model.to_str().unwrap(), "--device", "gpu0"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cuda:N"), "{}", r.stderr);
}
