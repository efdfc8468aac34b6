//! The CPU's fused EXL3 trellis product (`llmq_kernels::trellis` over
//! `llmq_trellis::bands`) against the dense f32 weight the engine expanded EXL3 Linears to
//! before: one product `y = x · Wᵀ` of ROWS×COLS (default 14336×4096) for 1 and 8
//! activation rows, at K = 2, 3, 4, 5 (MUL1). Best of 3; with `RAYON_NUM_THREADS=1` the
//! times are this thread's CPU time (`/proc/thread-self/schedstat`), so a loaded machine's
//! other work does not count; ns per weight and the bytes of each form.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p llmq-kernels --example trellis_gemv [ROWS COLS]`

use half::f16;
use llmq_kernels::{matmul, Codebook, WeightMatrix};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse::<u64>().unwrap() as f64 / 1e9
}

fn best(mut f: impl FnMut()) -> f64 {
    let one = rayon::current_num_threads() == 1;
    (0..3)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_seconds());
            f();
            if one {
                cpu_seconds() - c
            } else {
                t.elapsed().as_secs_f64()
            }
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    // run on a pool thread, so this thread's CPU time is the work's (one thread)
    rayon::ThreadPoolBuilder::new()
        .build()
        .unwrap()
        .install(run);
}

fn run() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (rows, cols) = match a[..] {
        [r, c] => (r, c),
        _ => (14336, 4096),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let threads = rayon::current_num_threads();
    println!(
        "{rows} x {cols}, {threads} threads ({}):",
        if threads == 1 {
            "CPU time"
        } else {
            "wall time"
        }
    );
    let x: Vec<f32> = (0..8 * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let suh: Vec<f16> = (0..cols)
        .map(|_| f16::from_f32(if rng.gen() { 1.0 } else { -1.0 }))
        .collect();
    let svh: Vec<f16> = (0..rows).map(|_| f16::from_f32(0.01)).collect();
    let mut dense = None;
    for k in [2u32, 3, 4, 5] {
        let t: Vec<i16> = (0..rows / 16 * cols / 16 * 16 * k as usize)
            .map(|_| rng.gen())
            .collect();
        let w = WeightMatrix::from_trellis(&t, &suh, &svh, k, Codebook::Mul1).unwrap();
        for n in [1usize, 8] {
            let mut y = vec![0f32; n * rows];
            let s = best(|| matmul(&w, &x[..n * cols], n, &mut y));
            println!(
                "  EXL3_K{k} n={n}: {:8.2} ms  {:5.2} ns/weight  {:6.1} MB",
                s * 1e3,
                s * 1e9 / (rows * cols) as f64,
                w.data.len() as f64 / 1e6
            );
        }
        if dense.is_none() {
            dense = Some(WeightMatrix::from_f32(rows, cols, w.to_f32()));
        }
    }
    let d = dense.unwrap();
    for n in [1usize, 8] {
        let mut y = vec![0f32; n * rows];
        let s = best(|| matmul(&d, &x[..n * cols], n, &mut y));
        println!(
            "  F32 (the old expansion) n={n}: {:8.2} ms  {:5.2} ns/weight  {:6.1} MB",
            s * 1e3,
            s * 1e9 / (rows * cols) as f64,
            d.data.len() as f64 / 1e6
        );
    }
}
