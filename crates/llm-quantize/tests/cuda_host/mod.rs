//! The host half of the CUDA kernel tests (no GPU): kernel sources made plain C++ and
//! compiled with the machine's C++ compiler, so their decoding and arithmetic can be
//! compared with the CPU engine's.
#![allow(dead_code)]

use llmq_engine::backend::cuda;
use std::path::{Path, PathBuf};

/// The host shims that let `kernels/dequant.cuh` compile as plain C++.
pub const HOST_PRELUDE: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
typedef unsigned char u8; typedef signed char i8; typedef unsigned short u16;
typedef unsigned int u32; typedef unsigned long long u64;
struct uint4 { u32 x, y, z, w; }; struct float4 { float x, y, z, w; };
static float h2f(u16 h) {
    int s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
    return s ? -v : v;
}
static float bf2f(u16 h) { u32 x = ((u32)h) << 16; float f; memcpy(&f, &x, 4); return f; }
static u16 ld16(const u8* p) { return (u16)p[0] | ((u16)p[1] << 8); }
static u32 ld32(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24); }
static float __uint_as_float(u32 x) { float f; memcpy(&f, &x, 4); return f; }
static u32 __funnelshift_r(u32 lo, u32 hi, u32 s) { s &= 31; return s ? (lo >> s) | (hi << (32 - s)) : lo; }
"#;

/// Kernel source `text` made plain C++ (device qualifiers dropped) and compiled for the
/// host in `dir` with `prelude` before it and `main` after it; `None` where there is no
/// C++ compiler outside CI.
pub fn compile_for_host(dir: &Path, text: &str, prelude: &str, main: &str) -> Option<PathBuf> {
    let src = text
        .replace("static __device__ __forceinline__", "static inline")
        .replace("__device__ __forceinline__", "inline")
        .replace("__constant__", "")
        .replace("#pragma unroll", "");
    compile_cpp(
        dir,
        "kernels",
        &format!("{prelude}{src}{main}"),
        &["-O1", "-std=c++17"],
    )
}

/// C++ `source` (already plain host code) compiled in `dir` as `name` with `flags`;
/// `None` where there is no C++ compiler outside CI.
pub fn compile_cpp(dir: &Path, name: &str, source: &str, flags: &[&str]) -> Option<PathBuf> {
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
    let cpp = dir.join(format!("{name}.cpp"));
    let exe = dir.join(name);
    std::fs::write(&cpp, source).unwrap();
    let cc = std::process::Command::new("c++")
        .args(flags)
        .arg("-o")
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

/// Run a host driver: `mode`, the input bytes (written to a file in `dir`) and the
/// extra arguments; the bytes it wrote.
pub fn run(exe: &Path, dir: &Path, mode: &str, input: &[u8], args: &[String]) -> Vec<u8> {
    let (i, o) = (dir.join("in.bin"), dir.join("out.bin"));
    std::fs::write(&i, input).unwrap();
    let st = std::process::Command::new(exe)
        .arg(mode)
        .arg(&i)
        .arg(&o)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "{mode}: exit {st}");
    std::fs::read(&o).unwrap()
}

/// The tests' deterministic generator: uniform in [-0.5, 0.5).
pub fn lcg(s: &mut u64) -> f32 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// The source of kernel file `name`.
pub fn kernel_source(name: &str) -> &'static str {
    cuda::SOURCES.iter().find(|(n, _)| *n == name).unwrap().1
}
