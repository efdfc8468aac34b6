//! The host half of the CUDA kernel tests (no GPU): kernel sources made plain C++ and
//! compiled with the machine's C++ compiler, so their decoding and arithmetic can be
//! compared with the CPU engine's.
#![allow(dead_code)]

use llmq_engine::backend::cuda;
use std::path::PathBuf;

/// The host shims that let `kernels/dequant.cuh` compile as plain C++.
pub const HOST_PRELUDE: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
typedef unsigned char u8; typedef signed char i8; typedef unsigned short u16;
typedef unsigned int u32; typedef unsigned long long u64;
struct uint4 { u32 x, y, z, w; };
static float h2f(u16 h) {
    int s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
    return s ? -v : v;
}
static float bf2f(u16 h) { u32 x = ((u32)h) << 16; float f; memcpy(&f, &x, 4); return f; }
static u16 ld16(const u8* p) { return (u16)p[0] | ((u16)p[1] << 8); }
static u32 ld32(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24); }
static float __uint_as_float(u32 x) { float f; memcpy(&f, &x, 4); return f; }
"#;

/// Kernel source `text` made plain C++ (device qualifiers dropped) and compiled for the
/// host in `dir` with `prelude` before it and `main` after it; `None` where there is no
/// C++ compiler outside CI.
pub fn compile_for_host(
    dir: &std::path::Path,
    text: &str,
    prelude: &str,
    main: &str,
) -> Option<PathBuf> {
    if std::process::Command::new("c++")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").is_err(),
            "CI needs a C++ compiler (c++)"
        );
        eprintln!("skipped: no C++ compiler");
        return None;
    }
    let src = text
        .replace("static __device__ __forceinline__", "static inline")
        .replace("__device__ __forceinline__", "inline")
        .replace("__constant__", "")
        .replace("#pragma unroll", "");
    let cpp = dir.join("kernels.cpp");
    let exe = dir.join("kernels");
    std::fs::write(&cpp, format!("{prelude}{src}{main}")).unwrap();
    let cc = std::process::Command::new("c++")
        .args(["-O1", "-std=c++17", "-o"])
        .arg(&exe)
        .arg(&cpp)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    Some(exe)
}

/// The source of kernel file `name`.
pub fn kernel_source(name: &str) -> &'static str {
    cuda::SOURCES.iter().find(|(n, _)| *n == name).unwrap().1
}
