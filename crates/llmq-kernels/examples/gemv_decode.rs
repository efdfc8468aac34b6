//! Decode GEMV throughput (one token) per weight type, cache-resident (`L2`) and streaming
//! (`DRAM`: 1.5 GiB of weights, more than any last-level cache), the streaming read bandwidth (`read`) and the cost of one rayon parallel call
//! (`sync`). `LLMQ_KERNELS_NO_AVX512=1` runs the AVX2 one-row kernels instead of the
//! AVX-512 ones; `RAYON_NUM_THREADS` sets the threads (with 1, times are CPU time).

use llmq_formats::GgmlType;
use llmq_kernels::{matmul, Bytes, WeightMatrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::time::Instant;

fn weight(ty: GgmlType, rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> WeightMatrix {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| rng.gen_range(-0.05f32..0.05))
        .collect();
    let mut bytes = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
    llmq_quant::quantize(ty, &v, cols, None, &mut bytes).unwrap();
    let n = bytes.len();
    WeightMatrix::new(ty, rows, cols, Bytes::new(Arc::new(bytes), 0, n)).unwrap()
}

/// This thread's CPU time in seconds (`/proc/thread-self/schedstat`), so a busy
/// machine's other processes do not count.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse::<u64>().unwrap() as f64 / 1e9
}

/// Best-of-`reps` seconds of `f`: this thread's CPU time with `RAYON_NUM_THREADS=1`
/// (the work runs on the calling thread), else wall time.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    let one = rayon::current_num_threads() == 1;
    (0..reps)
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
    // `gemv_decode TYPE SIZE [COLS]` times one type (`L2` or `DRAM` sized; rows of COLS
    // columns, 2048 by default), `gemv_decode read`
    // the streaming read; without arguments, everything
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(|a| a == "read").unwrap_or(false) {
        return read();
    }
    if args.first().map(|a| a == "sync").unwrap_or(false) {
        return sync();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let cols: usize = args.get(2).map_or(2048, |c| c.parse().expect("COLS"));
    let types = [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::IQ4XS,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
    ];
    for ty in types {
        if args.first().is_some_and(|a| a != ty.name()) {
            continue;
        }
        for (label, rows, copies) in [("L2", 256usize, 1usize), ("DRAM", 8192, 8)] {
            if args.get(1).is_some_and(|a| a != label) {
                continue;
            }
            // the same bytes whatever the row length
            let (rows, copies) = (rows * 2048 / cols, copies);
            let mut ws: Vec<WeightMatrix> = (0..copies)
                .map(|_| weight(ty, rows, cols, &mut rng))
                .collect();
            // `DRAM`: copies of those bytes up to 1.5 GiB, past any last-level cache
            let target = if label == "DRAM" { 3usize << 29 } else { 0 };
            let mut k = 0;
            while ws.iter().map(|w| w.data.len()).sum::<usize>() < target {
                let bytes = ws[k % copies].data.as_slice().to_vec();
                let n = bytes.len();
                ws.push(
                    WeightMatrix::new(ty, rows, cols, Bytes::new(Arc::new(bytes), 0, n)).unwrap(),
                );
                k += 1;
            }
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let mut y = vec![0.0f32; rows];
            let bytes: usize = ws.iter().map(|w| w.data.len()).sum();
            let iters = if label == "L2" { 400 } else { 1 };
            let s = best(5, || {
                for _ in 0..iters {
                    for w in &ws {
                        matmul(w, &x, 1, &mut y);
                    }
                }
            });
            println!(
                "{:7} {label:5} {:8.2} GB/s  ({} MB per pass)",
                ty.name(),
                (bytes * iters) as f64 / s / 1e9,
                (bytes * iters * 5) >> 20
            );
        }
    }
    if args.is_empty() {
        read();
    }
}

/// Streaming read of 1 GiB of u64 split over `RAYON_NUM_THREADS` scoped threads, each
/// timing its own CPU time; the bandwidth is bytes ÷ the slowest thread's CPU time
/// (a lower bound of what the threads reach together when each has a core).
fn read() {
    let threads = rayon::current_num_threads();
    let buf: Vec<u64> = (0..(1usize << 27)).map(|i| i as u64).collect();
    let part = buf.len() / threads;
    for _ in 0..5 {
        let (t0, secs) = (Instant::now(), std::sync::Mutex::new(0.0f64));
        std::thread::scope(|s| {
            for c in buf.chunks(part) {
                let secs = &secs;
                s.spawn(move || {
                    let c0 = cpu_seconds();
                    let sum = c.iter().fold(0u64, |a, &v| a.wrapping_add(v));
                    std::hint::black_box(sum);
                    let d = cpu_seconds() - c0;
                    let mut m = secs.lock().unwrap();
                    *m = m.max(d);
                });
            }
        });
        let cpu = *secs.lock().unwrap();
        let bytes = (buf.len() * 8) as f64;
        println!(
            "read {threads} threads: {:6.2} GB/s by CPU time, {:6.2} GB/s by wall time",
            bytes / cpu / 1e9,
            bytes / t0.elapsed().as_secs_f64() / 1e9
        );
    }
}

/// Wall time of one rayon parallel call over 8 empty chunks (the synchronisation a
/// decode GEMV pays per call).
fn sync() {
    use rayon::prelude::*;
    let n = 20000;
    for _ in 0..3 {
        let t = Instant::now();
        for i in 0..n {
            (0..8usize).into_par_iter().for_each(|c| {
                std::hint::black_box(c + i);
            });
        }
        println!(
            "rayon par_iter of 8 chunks from outside the pool: {:.2} us per call",
            t.elapsed().as_secs_f64() / n as f64 * 1e6
        );
        let t = Instant::now();
        rayon::scope(|_| {
            for i in 0..n {
                (0..8usize).into_par_iter().for_each(|c| {
                    std::hint::black_box(c + i);
                });
            }
        });
        println!(
            "rayon par_iter of 8 chunks from a pool thread: {:.2} us per call",
            t.elapsed().as_secs_f64() / n as f64 * 1e6
        );
    }
}
