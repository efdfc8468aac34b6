//! Times prompt-processing `matmul` (512 tokens) on the Llama-3.2-1B FFN shapes
//! (8192×2048 and 2048×8192) in the types with AVX-512 prompt tiles, in process CPU
//! seconds (not wall time, so that other load on a shared machine counts less) and
//! GMAC per CPU second:
//!
//!   RAYON_NUM_THREADS=1 cargo run --release -p llmq-kernels --example prompt_tiles [REPS]
use llmq_formats::GgmlType;
use llmq_kernels::{matmul, Bytes, WeightMatrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

const TOKENS: usize = 512;

/// User + system CPU seconds of this process (`/proc/self/stat`, 100 ticks a second).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = &s[s.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    let types = [
        GgmlType::IQ4XS,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    for (rows, cols) in [(8192usize, 2048usize), (2048, 8192)] {
        let wv: Vec<f32> = (0..rows * cols)
            .map(|_| rng.gen_range(-0.05f32..0.05))
            .collect();
        let x: Vec<f32> = (0..TOKENS * cols)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let mut y = vec![0.0f32; TOKENS * rows];
        for ty in types {
            let mut bytes = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
            llmq_quant::quantize(ty, &wv, cols, None, &mut bytes).unwrap();
            let n = bytes.len();
            let w = WeightMatrix::new(ty, rows, cols, Bytes::new(Arc::new(bytes), 0, n)).unwrap();
            matmul(&w, &x, TOKENS, &mut y);
            let t0 = cpu_seconds();
            for _ in 0..reps {
                matmul(&w, &x, TOKENS, &mut y);
            }
            let secs = cpu_seconds() - t0;
            let gmac = (rows * cols * TOKENS * reps) as f64 / secs / 1e9;
            println!(
                "{:>6} {rows}x{cols}: {:.3} CPU s/call, {gmac:.1} GMAC per CPU s",
                ty.name(),
                secs / reps as f64
            );
        }
    }
}
