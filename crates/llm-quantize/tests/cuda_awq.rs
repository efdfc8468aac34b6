//! AWQ's GPU kernels without a GPU (CI): `kernels/calib_awq.cuh` and the kernels of
//! `kernels/calib_awq.cu` whose loops stride over the grid, compiled for the host
//! (a C++ compiler, shims for the CUDA intrinsics, one thread covering the grid),
//! checked against `llmq_calib::awq`, the CPU reference they mirror: the
//! per-channel `Σ|x|` and the row gather of the statistics (and the importance
//! matrix's `Σx²` against `llmq_calib::add_squares`), the scale search's
//! quantize-dequantize error bit for bit against `awq_quantize`, whole scale searches
//! (the cuBLAS product as a plain loop) against `search_scale`, and the clip search —
//! Gram matrices and the per-(row, group) search — bit for bit against
//! `search_clip`.

use llmq_calib::awq::{self as awq_algo, AwqLayer};
mod cuda_host;
use cuda_host::{compile_cpp, kernel_source, lcg, run};
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
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define CALIB_SYNC()
static void __syncthreads() {}
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1}, threadIdx = {0, 0, 0};
static u32 __float_as_uint(float f) { u32 x; memcpy(&x, &f, 4); return x; }
static float __uint_as_float(u32 x) { float f; memcpy(&f, &x, 4); return f; }
static float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
static double __longlong_as_double(long long x) { double f; memcpy(&f, &x, 8); return f; }
static float __fmul_rn(float a, float b) { volatile float p = a * b; return p; }
static float __fadd_rn(float a, float b) { volatile float p = a + b; return p; }
static float __fsub_rn(float a, float b) { volatile float p = a - b; return p; }
static float __fdiv_rn(float a, float b) { volatile float p = a / b; return p; }
static double __dadd_rn(double a, double b) { volatile double p = a + b; return p; }
static double __dmul_rn(double a, double b) { volatile double p = a * b; return p; }
static void atomicMin(int* p, int v) { if (v < *p) *p = v; }
float awq_d[65536];
#define CALIB_FOR(idx, total) for (long long idx = 0; idx < (total); idx++)
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
    if (!strcmp(argv[1], "stats")) {
        // rows cols n_idx; in: x (rows*cols), idx (n_idx u32) -> abs sums (f64, twice
        // added), the gathered rows
        int rows = atoi(argv[4]), cols = atoi(argv[5]), ni = atoi(argv[6]);
        std::vector<float> x = rd<float>(in, (size_t)rows * cols);
        std::vector<u32> idx = rd<u32>(in, ni);
        std::vector<double> sum(cols, 0.0);
        int half = rows / 2;
        awq_abs_sum(x.data(), half, cols, sum.data());
        awq_abs_sum(x.data() + (size_t)half * cols, rows - half, cols, sum.data());
        std::vector<float> g((size_t)ni * cols);
        awq_gather(x.data(), idx.data(), ni, cols, g.data());
        std::vector<float> sq(cols, 0.0f);
        calib_sq_sum(x.data(), half, cols, sq.data());
        calib_sq_sum(x.data() + (size_t)half * cols, rows - half, cols, sq.data());
        wr(out, sum); wr(out, g); wr(out, sq);
        return 0;
    }
    if (!strcmp(argv[1], "fq")) {
        int o = atoi(argv[4]), inp = atoi(argv[5]), gs = atoi(argv[6]), bits = atoi(argv[7]);
        std::vector<float> w = rd<float>(in, (size_t)o * inp), s = rd<float>(in, inp);
        std::vector<float> d((size_t)o * inp);
        awq_fq_diff_k(w.data(), s.data(), o, inp, gs, (float)((1 << bits) - 1), d.data());
        wr(out, d);
        return 0;
    }
    if (!strcmp(argv[1], "scale")) {
        // n inp gs bits n_grid n_layers out...; in: x, grid scales, weights -> sums
        int n = atoi(argv[4]), inp = atoi(argv[5]), gs = atoi(argv[6]), bits = atoi(argv[7]);
        int ng = atoi(argv[8]), nl = atoi(argv[9]);
        std::vector<float> x = rd<float>(in, (size_t)n * inp);
        std::vector<float> sc = rd<float>(in, (size_t)ng * inp);
        std::vector<std::vector<float>> ws;
        std::vector<int> outs;
        for (int l = 0; l < nl; l++) {
            outs.push_back(atoi(argv[10 + l]));
            ws.push_back(rd<float>(in, (size_t)outs[l] * inp));
        }
        std::vector<double> loss(ng, 0.0);
        for (int l = 0; l < nl; l++) {
            int o = outs[l];
            std::vector<float> d((size_t)o * inp), y((size_t)o * n);
            for (int i = 0; i < ng; i++) {
                awq_fq_diff_k(ws[l].data(), &sc[(size_t)i * inp], o, inp, gs, (float)((1 << bits) - 1), d.data());
                // the Sgemm: y = D·Xᵀ
                for (int r = 0; r < n; r++)
                    for (int c = 0; c < o; c++) {
                        float a = 0.0f;
                        for (int k = 0; k < inp; k++) a += d[(size_t)c * inp + k] * x[(size_t)r * inp + k];
                        y[(size_t)c + (size_t)r * o] = a;
                    }
                double part = 0.0;
                for (size_t k = 0; k < y.size(); k++) part += (double)y[k] * (double)y[k];
                loss[i] += part;
            }
        }
        wr(out, loss);
        return 0;
    }
    // clip: n inp gs bits out step nf; in: x (n*inp), s (inp), w (out*inp), factors
    int n = atoi(argv[4]), inp = atoi(argv[5]), gs = atoi(argv[6]), bits = atoi(argv[7]);
    int o = atoi(argv[8]), step = atoi(argv[9]), nf = atoi(argv[10]);
    std::vector<float> x = rd<float>(in, (size_t)n * inp), s = rd<float>(in, inp);
    std::vector<float> w = rd<float>(in, (size_t)o * inp), f = rd<float>(in, nf);
    awq_div_cols(x.data(), s.data(), (long long)n * inp, inp);
    int ngr = inp / gs;
    std::vector<float> gram((size_t)ngr * gs * gs), best((size_t)o * ngr);
    awq_gram(x.data(), n, step, inp, gs, gram.data());
    for (unsigned g = 0; g < (unsigned)ngr; g++)
        for (unsigned r = 0; r < (unsigned)o; r++) {
            blockIdx.x = r; blockIdx.y = g;
            awq_clip(w.data(), gram.data(), o, inp, gs, (float)((1 << bits) - 1), f.data(), nf, best.data());
        }
    wr(out, best);
    return 0;
}
"#;

/// The AWQ kernels and the test driver compiled for the host in `dir`; `None` where
/// there is no C++ compiler outside CI.
fn host_awq(dir: &Path) -> Option<PathBuf> {
    let kernels = kernel_source("calib_awq.cu").replace("extern __shared__", "extern");
    let source = format!(
        "{PRELUDE}{}\n{}\n{kernels}\n{MAIN}",
        kernel_source("calib.cuh"),
        kernel_source("calib_awq.cuh")
    );
    compile_cpp(
        dir,
        "awq",
        &source,
        &["-O2", "-std=c++17", "-ffp-contract=off"],
    )
}

/// Roughly normal (sum of four uniforms).
fn gauss(s: &mut u64) -> f32 {
    (lcg(s) + lcg(s) + lcg(s) + lcg(s)) * 1.7
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Calibration-like inputs: `n` rows of `inp`, a few channels much larger.
fn inputs(s: &mut u64, n: usize, inp: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * inp).map(|_| gauss(s)).collect();
    for row in x.chunks_mut(inp) {
        for c in (3..inp).step_by(61) {
            row[c] *= 25.0;
        }
    }
    x
}

fn mean_abs(x: &[f32], n: usize, inp: usize) -> Vec<f32> {
    (0..inp)
        .map(|c| {
            let s: f64 = (0..n).map(|r| x[r * inp + c].abs() as f64).sum();
            (s / n as f64) as f32
        })
        .collect()
}

/// `Σ|x|` per channel over rows added in two batches equals the observer's f64 sum
/// in row order; the gather picks the rows asked for; the importance matrix's `Σx²`
/// equals the CPU's (`add_squares` per batch, `ImatrixEntry::add_sums`) bit for bit.
#[test]
fn statistics_match_the_observer() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = host_awq(tmp.path()) else {
        return;
    };
    let (rows, cols) = (77usize, 96usize);
    let mut s = 5u64;
    let x: Vec<f32> = (0..rows * cols)
        .map(|k| lcg(&mut s) * 2f32.powi((k % 30) as i32 - 15))
        .collect();
    let idx: Vec<u32> = vec![0, 4, 8, 76, 33];
    let mut input = bytes(&x);
    input.extend(idx.iter().flat_map(|i| i.to_le_bytes()));
    let args = [rows, cols, idx.len()].map(|v| v.to_string());
    let out = run(&exe, tmp.path(), "stats", &input, &args);
    let sums = f64s(&out[..8 * cols]);
    let mut want = vec![0.0f64; cols];
    for r in 0..rows {
        for c in 0..cols {
            want[c] += x[r * cols + c].abs() as f64;
        }
    }
    for c in 0..cols {
        assert_eq!(sums[c].to_bits(), want[c].to_bits(), "column {c}");
    }
    let g = f32s(&out[8 * cols..8 * cols + 4 * idx.len() * cols]);
    for (i, &r) in idx.iter().enumerate() {
        assert_eq!(
            &g[i * cols..(i + 1) * cols],
            &x[r as usize * cols..(r as usize + 1) * cols]
        );
    }
    // the importance matrix's sums: each batch's squares from zero, then the total, as
    // the CPU's observer adds them
    let sq = f32s(&out[8 * cols + 4 * idx.len() * cols..]);
    let half = rows / 2;
    let mut e = llmq_calib::ImatrixEntry::zeros(1, cols);
    for (a, b) in [(0, half), (half, rows)] {
        let mut part = vec![0.0f32; cols];
        llmq_calib::add_squares(&mut part, &x[a * cols..b * cols]);
        e.add_sums(0, &part, (b - a) as u64);
    }
    for (c, (a, b)) in sq.iter().zip(&e.sum2).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "imatrix column {c}");
    }
}

/// The scale search's weight error is `awq_quantize(W·diag(s))`'s dequantized values
/// over `s`, minus `W`, bit for bit (the CPU's `fake_quant`), for several grids.
#[test]
fn fake_quant_error_matches_the_cpu_quantizer() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = host_awq(tmp.path()) else {
        return;
    };
    let (out, inp) = (24usize, 256usize);
    let mut s = 17u64;
    let mut w: Vec<f32> = (0..out * inp).map(|_| gauss(&mut s) * 0.05).collect();
    // a constant group and an all-positive one
    w[..32].iter_mut().for_each(|v| *v = 0.25);
    w[inp..inp + 64].iter_mut().for_each(|v| *v = v.abs());
    let x = inputs(&mut s, 64, inp);
    let mean = mean_abs(&x, 64, inp);
    for (gs, bits, gi) in [(128usize, 4u8, 7usize), (32, 3, 13), (64, 8, 0)] {
        let (_, sc) = awq_algo::grid_scales(&mean, gi);
        let mut input = bytes(&w);
        input.extend(bytes(&sc));
        let args = [out, inp, gs, bits as usize].map(|v| v.to_string());
        let d = f32s(&run(&exe, tmp.path(), "fq", &input, &args));
        let mut ws = w.clone();
        for row in ws.chunks_mut(inp) {
            row.iter_mut().zip(&sc).for_each(|(v, s)| *v *= s);
        }
        let deq = awq_algo::awq_quantize(&ws, out, inp, bits, gs, None).dequantize();
        for k in 0..out * inp {
            let want = deq[k] / sc[k % inp] - w[k];
            assert_eq!(d[k].to_bits(), want.to_bits(), "gs {gs} bits {bits} at {k}");
        }
    }
}

/// A whole scale search on the device's math (weight errors, their product with the
/// sample rows, the squared sums) picks the CPU's exponent, with the CPU's losses
/// up to the GEMM's summation order, for one layer and for three sharing an input.
#[test]
fn scale_search_matches_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = host_awq(tmp.path()) else {
        return;
    };
    let (n, inp, gs, bits) = (96usize, 256usize, 64usize, 4u8);
    let mut s = 23u64;
    let x = inputs(&mut s, n, inp);
    let mean = mean_abs(&x, n, inp);
    let outs = [48usize, 16, 16];
    let ws: Vec<Vec<f32>> = outs
        .iter()
        .map(|&o| (0..o * inp).map(|_| gauss(&mut s) * 0.04).collect())
        .collect();
    for nl in [1usize, 3] {
        let mut input = bytes(&x);
        let grid: Vec<(f32, Vec<f32>)> = (0..awq_algo::N_GRID)
            .map(|i| awq_algo::grid_scales(&mean, i))
            .collect();
        for (_, sc) in &grid {
            input.extend(bytes(sc));
        }
        for w in &ws[..nl] {
            input.extend(bytes(w));
        }
        let mut args: Vec<String> = [n, inp, gs, bits as usize, awq_algo::N_GRID, nl]
            .iter()
            .map(|v| v.to_string())
            .collect();
        args.extend(outs[..nl].iter().map(|o| o.to_string()));
        let sums = f64s(&run(&exe, tmp.path(), "scale", &input, &args));
        let total: usize = outs[..nl].iter().sum();
        let denom = (n * total) as f64;
        let results: Vec<(f64, f32, Vec<f32>)> = sums
            .iter()
            .zip(grid)
            .map(|(l, (r, sc))| (l / denom, r, sc))
            .collect();
        let dev = awq_algo::pick_scale(results, inp);
        let layers: Vec<AwqLayer<'_>> = ws[..nl]
            .iter()
            .zip(&outs)
            .map(|(w, &o)| AwqLayer { w, out: o })
            .collect();
        let cpu = awq_algo::search_scale(&layers, inp, &mean, &x, n, bits, gs);
        eprintln!(
            "{nl} layers: ratio {} (CPU {}), loss {:.6e} (CPU {:.6e}), RTN {:.6e} (CPU {:.6e})",
            dev.ratio, cpu.ratio, dev.best_loss, cpu.best_loss, dev.rtn_loss, cpu.rtn_loss
        );
        assert!(
            cpu.ratio > 0.0,
            "the outlier channels should call for scales"
        );
        assert_eq!(dev.ratio, cpu.ratio);
        assert_eq!(dev.scales, cpu.scales);
        for (a, b) in [(dev.best_loss, cpu.best_loss), (dev.rtn_loss, cpu.rtn_loss)] {
            assert!((a - b).abs() <= 1e-4 * b, "loss {a} vs CPU {b}");
        }
    }
}

/// The clip search (inputs divided by the scales, the groups' Gram matrices, the
/// per-(row, group) search) gives `search_clip`'s ranges bit for bit, over all rows
/// and over a strided subset.
#[test]
fn clip_search_matches_the_cpu_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = host_awq(tmp.path()) else {
        return;
    };
    let mut s = 31u64;
    for (n, inp, out, gs, bits) in [
        (80usize, 256usize, 20usize, 128usize, 4u8),
        (1100, 96, 9, 32, 3),
    ] {
        let x = inputs(&mut s, n, inp);
        let mean = mean_abs(&x, n, inp);
        let (_, sc) = awq_algo::grid_scales(&mean, 9);
        // heavy-tailed weights, already multiplied by the scales (as the caller has them)
        let mut w: Vec<f32> = (0..out * inp)
            .map(|_| gauss(&mut s).powi(3) * 0.02)
            .collect();
        for row in w.chunks_mut(inp) {
            row.iter_mut().zip(&sc).for_each(|(v, s)| *v *= s);
        }
        let factors = awq_algo::clip_factors();
        let step = n.div_ceil(awq_algo::CLIP_TOKENS).max(1);
        let mut input = bytes(&x);
        input.extend(bytes(&sc));
        input.extend(bytes(&w));
        input.extend(bytes(&factors));
        let args = [n, inp, gs, bits as usize, out, step, factors.len()].map(|v| v.to_string());
        let got = f32s(&run(&exe, tmp.path(), "clip", &input, &args));
        let mut xs = x.clone();
        for row in xs.chunks_mut(inp) {
            row.iter_mut().zip(&sc).for_each(|(v, s)| *v /= s);
        }
        let want = awq_algo::search_clip(&w, out, inp, &xs, n, bits, gs);
        let shrunk = want
            .iter()
            .enumerate()
            .filter(|(k, m)| {
                let (o, g) = (k / (inp / gs), k % (inp / gs));
                let mx = w[o * inp + g * gs..o * inp + (g + 1) * gs]
                    .iter()
                    .fold(0.0f32, |a, v| a.max(v.abs()));
                **m < mx
            })
            .count();
        eprintln!("n {n}: {shrunk} of {} groups clipped", want.len());
        assert!(shrunk > 0, "the test should exercise clipping");
        assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "n {n} (row, group) {k}: {a} vs {b}"
            );
        }
    }
}
