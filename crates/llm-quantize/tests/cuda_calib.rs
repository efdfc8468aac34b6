//! The GPU calibration math without a GPU (CI): `kernels/calib.cuh` compiled for the
//! host (a C++ compiler, shims for the few CUDA intrinsics it uses) and checked
//! against the CPU code it mirrors — the f16 rounding of scales against `half` and
//! `rtn::f16_scale`, the min-max grid against `rtn::group_params`, and a whole GPTQ
//! solve (the Hessian's reordered, dampened copy, the blocked Cholesky's diagonal
//! blocks, the reversed inverse factor and the column loop, with the cuBLAS steps
//! done by plain loops) against `llmq_calib::gptq_quantize`. `quantize --device
//! cuda` without a driver is a clear error with the device exit code.

mod common;
mod cuda_host;
use common::*;
use cuda_host::{compile_cpp, kernel_source, lcg, run};
use half::f16;
use llmq_engine::backend::cuda;
use std::path::{Path, PathBuf};

const PRELUDE: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
typedef unsigned char u8; typedef unsigned short u16; typedef unsigned int u32;
typedef unsigned long long u64;
#define __device__
#define __forceinline__ inline
#define CALIB_SYNC()
static u32 __float_as_uint(float f) { u32 x; memcpy(&x, &f, 4); return x; }
static float __uint_as_float(u32 x) { float f; memcpy(&f, &x, 4); return f; }
static float __fmul_rn(float a, float b) { volatile float p = a * b; return p; }
static void atomicMin(int* p, int v) { if (v < *p) *p = v; }
"#;

const MAIN: &str = r#"
template <class T> std::vector<T> rd(FILE* f, size_t n) {
    std::vector<T> v(n);
    if (fread(v.data(), sizeof(T), n, f) != n) exit(3);
    return v;
}
template <class T> void wr(FILE* f, const std::vector<T>& v) { fwrite(v.data(), sizeof(T), v.size(), f); }
int main(int argc, char** argv) {
    FILE* in = fopen(argv[2], "rb");
    FILE* out = fopen(argv[3], "wb");
    if (!in || !out) return 2;
    if (!strcmp(argv[1], "f16")) {
        int n = atoi(argv[4]);
        std::vector<float> v = rd<float>(in, n);
        std::vector<u16> a(n), b(n);
        for (int i = 0; i < n; i++) { a[i] = calib_f2h(v[i]); b[i] = calib_f16_scale(v[i]); }
        wr(out, a); wr(out, b);
        std::vector<float> back(n);
        for (int i = 0; i < n; i++) back[i] = calib_h2f(a[i]);
        wr(out, back);
        return 0;
    }
    if (!strcmp(argv[1], "bf16")) {
        int n = atoi(argv[4]);
        std::vector<float> v = rd<float>(in, n);
        for (int i = 0; i < n; i++) v[i] = calib_bf16_round(v[i]);
        wr(out, v);
        return 0;
    }
    if (!strcmp(argv[1], "params")) {
        int rows = atoi(argv[4]), len = atoi(argv[5]), bits = atoi(argv[6]), sym = atoi(argv[7]);
        std::vector<float> v = rd<float>(in, (size_t)rows * len);
        std::vector<u16> s(rows); std::vector<int> z(rows);
        for (int r = 0; r < rows; r++) calib_group_params(&v[(size_t)r * len], len, bits, sym, &s[r], &z[r]);
        wr(out, s); wr(out, z);
        return 0;
    }
    // gptq: n rows bits gs sym damp; in: perm (u32 n), H (f64 n*n), W (f32 rows*n)
    int n = atoi(argv[4]), rows = atoi(argv[5]), bits = atoi(argv[6]), gs = atoi(argv[7]), sym = atoi(argv[8]);
    double damp = atof(argv[9]);
    std::vector<u32> perm = rd<u32>(in, n);
    std::vector<double> h = rd<double>(in, (size_t)n * n);
    std::vector<float> w = rd<float>(in, (size_t)rows * n);
    std::vector<double> r((size_t)n * n);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < n; i++) r[i + (size_t)j * n] = calib_r_value(h.data(), perm.data(), n, 1.0, damp, i, j);
    int fail = 0x7fffffff;
    auto A = [&](int i, int j) -> double& { return r[i + (size_t)j * n]; };
    for (int k0 = 0; k0 < n; k0 += 64) {
        int kb = n - k0 < 64 ? n - k0 : 64;
        calib_potf2(&A(k0, k0), n, kb, k0, &fail, 0, 1);
        for (int i = k0 + kb; i < n; i++)  // A21 := A21 L11^-T
            for (int c = 0; c < kb; c++) {
                double x = A(i, k0 + c);
                for (int t = 0; t < c; t++) x -= A(i, k0 + t) * A(k0 + c, k0 + t);
                A(i, k0 + c) = x / A(k0 + c, k0 + c);
            }
        for (int i = k0 + kb; i < n; i++)  // A22 -= A21 A21^T
            for (int j = k0 + kb; j <= i; j++)
                for (int t = 0; t < kb; t++) A(i, j) -= A(i, k0 + t) * A(j, k0 + t);
    }
    if (fail != 0x7fffffff) return 10;
    std::vector<double> linv((size_t)n * n, 0.0);
    for (int c = 0; c < n; c++)
        for (int i = c; i < n; i++) {
            double x = i == c ? 1.0 : 0.0;
            for (int t = c; t < i; t++) x -= A(i, t) * linv[t + (size_t)c * n];
            linv[i + (size_t)c * n] = x / A(i, i);
        }
    std::vector<float> u((size_t)n * n);
    int ufail = 0x7fffffff;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) u[(size_t)i * n + j] = calib_u_value(linv.data(), n, i, j, &ufail);
    if (ufail != 0x7fffffff) return 11;
    std::vector<float> wp((size_t)rows * n);
    for (int o = 0; o < rows; o++)
        for (int i = 0; i < n; i++) wp[(size_t)o * n + i] = w[(size_t)o * n + perm[i]];
    int ng = (n + gs - 1) / gs;
    std::vector<u16> cur_s(rows, 0x3c00), scales((size_t)rows * ng);
    std::vector<int> cur_z(rows, 0);
    std::vector<u8> qp((size_t)rows * n), zeros((size_t)rows * ng);
    std::vector<float> err1((size_t)rows * 128);
    std::vector<double> loss(rows, 0.0);
    for (int i1 = 0; i1 < n; i1 += 128) {
        int count = n - i1 < 128 ? n - i1 : 128, i2 = i1 + count;
        for (int o = 0; o < rows; o++)
            calib_gptq_row(wp.data(), u.data(), n, o, i1, count, bits, 1, gs, sym, perm.data(), nullptr,
                           nullptr, ng, cur_s.data(), cur_z.data(), qp.data(), err1.data(), scales.data(),
                           zeros.data(), loss.data());
        for (int o = 0; o < rows; o++)
            for (int j = i2; j < n; j++) {
                float s = 0.0f;
                for (int c = 0; c < count; c++) s += err1[(size_t)o * count + c] * u[(size_t)(i1 + c) * n + j];
                wp[(size_t)o * n + j] -= s;
            }
    }
    std::vector<u8> q((size_t)rows * n);
    for (int o = 0; o < rows; o++)
        for (int i = 0; i < n; i++) q[(size_t)o * n + perm[i]] = qp[(size_t)o * n + i];
    wr(out, q); wr(out, scales); wr(out, zeros);
    double l = 0.0;
    for (double x : loss) l += x;
    fwrite(&l, 8, 1, out);
    return 0;
}
"#;

/// `kernels/calib.cuh` and the test driver compiled for the host in `dir`; `None`
/// where there is no C++ compiler outside CI.
fn host_calib(dir: &Path) -> Option<PathBuf> {
    let src = kernel_source("calib.cuh");
    compile_cpp(
        dir,
        "calib",
        &format!("{PRELUDE}{src}{MAIN}"),
        &["-O1", "-std=c++17", "-ffp-contract=off"],
    )
}

fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The device activation store rounds to bf16 exactly as the host store
/// (`half::bf16::from_f32`): ties to even, carries into the exponent, overflow to
/// infinity, NaN payloads.
#[test]
fn bf16_rounding_matches_the_host_store() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = host_calib(tmp.path()) else {
        return;
    };
    let mut s = 11u64;
    let mut v: Vec<f32> = (0..20000)
        .map(|k| lcg(&mut s) * 2f32.powi((k % 80) - 40))
        .collect();
    for k in 0..4096u32 {
        // exact ties, just above and below them, and values that carry into the exponent
        let base = (k.wrapping_mul(2654435761) & 0x7f7f_0000) | ((k & 1) << 16);
        for low in [0x8000u32, 0x7fff, 0x8001, 0xffff] {
            v.push(f32::from_bits(base | low));
            v.push(-f32::from_bits(base | low));
        }
    }
    v.extend([
        0.0,
        -0.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        f32::INFINITY,
        -f32::INFINITY,
    ]);
    v.extend([
        f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc1_2345),
    ]);
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let out = run(&exe, tmp.path(), "bf16", &bytes, &[v.len().to_string()]);
    for (i, (x, c)) in v.iter().zip(out.chunks_exact(4)).enumerate() {
        let got = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let want = (half::bf16::from_f32(*x).to_bits() as u32) << 16;
        assert_eq!(got, want, "value {i}: {x:e} ({:#010x})", x.to_bits());
    }
}

#[test]
fn f16_rounding_and_group_grids_match_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = host_calib(tmp.path()) else {
        return;
    };
    // every exponent range: subnormal halves, ties, overflow, infinities, NaN
    let mut s = 7u64;
    let mut v: Vec<f32> = (0..20000)
        .map(|k| lcg(&mut s) * 2f32.powi((k % 60) - 30))
        .collect();
    v.extend([
        0.0,
        -0.0,
        65504.0,
        65519.0,
        65520.0,
        1e9,
        f32::INFINITY,
        f32::NAN,
        2f32.powi(-25),
        3.0 * 2f32.powi(-26),
        2f32.powi(-24),
        1e-30,
        -1e-7,
    ]);
    for k in 0..4096u32 {
        // halfway points between neighbouring halves
        let a = f16::from_bits(k as u16 * 7 + 1).to_f32();
        let b = f16::from_bits(k as u16 * 7 + 2).to_f32();
        v.push((a + b) / 2.0);
    }
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let out = run(&exe, tmp.path(), "f16", &bytes, &[v.len().to_string()]);
    let n = v.len();
    let bits = u16s(&out[..4 * n]);
    let (rn, sc) = bits.split_at(n);
    let back: Vec<f32> = out[4 * n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for (i, x) in v.iter().enumerate() {
        let want = f16::from_f32(*x);
        if x.is_nan() {
            assert!(f16::from_bits(rn[i]).is_nan(), "{x}");
        } else {
            assert_eq!(rn[i], want.to_bits(), "f16 of {x:e}");
            assert_eq!(back[i].to_bits(), want.to_f32().to_bits(), "back of {x:e}");
        }
        if *x > 0.0 || x.is_nan() {
            let s = llmq_hfquant::rtn::f16_scale(*x);
            assert_eq!(sc[i], s.to_bits(), "scale of {x:e}");
        }
    }
    // group grids of rows of several spreads, for every bit width, both symmetries
    let (rows, len) = (64usize, 32usize);
    let mut w = Vec::new();
    for r in 0..rows {
        for _ in 0..len {
            let x = lcg(&mut s) * 2f32.powi(r as i32 % 12 - 8);
            // some rows all positive, some all zero
            w.push(match r % 7 {
                3 => x.abs(),
                5 => 0.0,
                _ => x,
            });
        }
    }
    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    for b in [2u8, 3, 4, 8] {
        for sym in [false, true] {
            let args = [rows, len, b as usize, sym as usize].map(|x| x.to_string());
            let out = run(&exe, tmp.path(), "params", &bytes, &args);
            let scales = u16s(&out[..2 * rows]);
            let zeros: Vec<i32> = out[2 * rows..]
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            for r in 0..rows {
                let (s, z) = llmq_hfquant::rtn::group_params(&w[r * len..(r + 1) * len], b, sym);
                assert_eq!(scales[r], s.to_bits(), "bits {b} sym {sym} row {r}");
                assert_eq!(zeros[r], z as i32, "bits {b} sym {sym} row {r}");
            }
        }
    }
}

/// The device GPTQ's math (cuBLAS steps as loops) gives the CPU's codes and grids on
/// a random weight and Hessian, in column order and in act-order.
#[test]
fn gptq_device_math_matches_the_cpu_solve() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = host_calib(tmp.path()) else {
        return;
    };
    let (n, rows, m) = (200usize, 24usize, 320usize);
    let mut s = 99u64;
    // H = 2/m XᵀX with correlated, unevenly scaled inputs
    let x: Vec<f64> = (0..m * n)
        .map(|k| {
            let c = k % n;
            (lcg(&mut s) as f64) * (1.0 + (c % 9) as f64) + 0.3 * (lcg(&mut s) as f64)
        })
        .collect();
    let mut h = vec![0.0f64; n * n];
    for t in 0..m {
        let row = &x[t * n..(t + 1) * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] += row[i] * row[j];
            }
        }
    }
    h.iter_mut().for_each(|v| *v *= 2.0 / m as f64);
    let w: Vec<f32> = (0..rows * n).map(|_| lcg(&mut s) * 0.2).collect();
    for (act_order, bits, gs, sym) in [(false, 4u8, 32usize, true), (true, 3, 64, false)] {
        let perm: Vec<usize> = if act_order {
            let mut p: Vec<usize> = (0..n).collect();
            p.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
            p
        } else {
            (0..n).collect()
        };
        let damp_percent = 0.01;
        let mean = perm.iter().map(|&c| h[c * n + c]).sum::<f64>() / n as f64;
        let mut input: Vec<u8> = perm
            .iter()
            .flat_map(|&p| (p as u32).to_le_bytes())
            .collect();
        input.extend(h.iter().flat_map(|v| v.to_le_bytes()));
        input.extend(w.iter().flat_map(|v| v.to_le_bytes()));
        let args = [
            n.to_string(),
            rows.to_string(),
            bits.to_string(),
            gs.to_string(),
            (sym as u8).to_string(),
            format!("{:e}", damp_percent * mean),
        ];
        let out = run(&exe, tmp.path(), "gptq", &input, &args);
        let ng = n.div_ceil(gs);
        let q = &out[..rows * n];
        let scales = u16s(&out[rows * n..rows * n + 2 * rows * ng]);
        let zeros = &out[rows * n + 2 * rows * ng..rows * n + 3 * rows * ng];
        let loss = f64::from_le_bytes(out[out.len() - 8..].try_into().unwrap());
        let cfg = llmq_calib::GptqConfig {
            bits,
            group_size: Some(gs),
            sym,
            desc_act: act_order,
            static_groups: false,
            damp_percent,
            max_damp_percent: 10.0,
            block_size: 128,
        };
        let cpu = llmq_calib::gptq_quantize("t", &w, rows, n, &h, &cfg).unwrap();
        assert_eq!(cpu.damp_percent, damp_percent);
        let same = q
            .iter()
            .zip(&cpu.quantized.q)
            .filter(|(a, b)| a == b)
            .count();
        let share = same as f64 / q.len() as f64;
        eprintln!(
            "act_order {act_order}: codes equal {share:.4}, loss {loss} (CPU {})",
            cpu.loss
        );
        assert!(
            share >= 0.995,
            "act_order {act_order}: {same} of {} codes equal",
            q.len()
        );
        let s_same = scales
            .iter()
            .zip(&cpu.quantized.scales)
            .filter(|(a, b)| **a == b.to_bits())
            .count();
        assert!(
            s_same as f64 >= 0.99 * scales.len() as f64,
            "act_order {act_order}: {s_same} of {} scales equal",
            scales.len()
        );
        let z_same = zeros
            .iter()
            .zip(&cpu.quantized.zeros)
            .filter(|(a, b)| a == b)
            .count();
        assert!(z_same as f64 >= 0.99 * zeros.len() as f64);
        assert!(
            (loss - cpu.loss).abs() <= 1e-3 * cpu.loss,
            "loss {loss} vs {}",
            cpu.loss
        );
    }
}

#[test]
fn quantize_device_cuda_without_a_driver_is_a_clear_error() {
    if cuda::driver_present() {
        eprintln!("skipped: a CUDA driver is present");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = shared_model("llama");
    let out = tmp.path().join("out");
    let r = lq(
        tmp.path(),
        &[
            "--format",
            "json",
            "quantize",
            model.to_str().unwrap(),
            "gptq",
            "-q",
            "4bit",
            "--device",
            "cuda",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("no CUDA driver"), "{msg}");
    // AWQ, and a GGUF importance matrix from calibration text, take the GPU path too
    let text = tmp.path().join("calib.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    for args in [
        &["awq", "-q", "4bit", "--method", "awq"][..],
        &[
            "gguf",
            "-q",
            "Q4_K_M",
            "--calibration-data",
            text.to_str().unwrap(),
        ][..],
    ] {
        let mut a = vec!["--format", "json", "quantize", model.to_str().unwrap()];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--device", "cuda", "--output-dir", out.to_str().unwrap()]);
        let r = lq(tmp.path(), &a);
        assert_eq!(r.code, 8, "{args:?}: {}\n{}", r.stdout, r.stderr);
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains("no CUDA driver"), "{args:?}: {msg}");
    }
    // a method the GPU path does not cover is refused before any device is opened
    let r = lq(
        tmp.path(),
        &[
            "--format",
            "json",
            "quantize",
            model.to_str().unwrap(),
            "gptq",
            "-q",
            "4bit",
            "--method",
            "rtn",
            "--device",
            "cuda",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("--method gptq and awq only"), "{msg}");
}
