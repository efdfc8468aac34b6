//! Times `matmul` on one activation row (decode) and on 64 (prompt) for a 4096×4096
//! weight kept as the dequantized f32 matrix (what the engine loaded for
//! compressed-tensors FP checkpoints before) and packed (NVFP4, MXFP4 on f32 and on Q8_0
//! activations, FP8 in 128-column blocks). Best of several runs, in ms per call and GB/s
//! of weight bytes:
//!
//!   cargo run --release -p llmq-kernels --example fp_gemv [THREADS]
use llmq_formats::minifloat::{e4m3_to_f32, f32_to_e2m1, f32_to_e4m3};
use llmq_kernels::{matmul, FpGrid, FpGroups, IntAct, WeightMatrix};
use std::time::Instant;

const ROWS: usize = 4096;
const COLS: usize = 4096;

fn packed(
    grid: FpGrid,
    codes: &[u8],
    scales: &[f32],
    rps: usize,
    cps: usize,
    act: IntAct,
) -> WeightMatrix {
    let g = FpGroups {
        grid,
        rows: ROWS,
        cols: COLS,
        codes,
        scales,
        rows_per_scale: rps,
        cols_per_scale: cps,
        scale_cols: COLS / cps,
        global_scale: 2.5,
    };
    WeightMatrix::from_fp_groups(&g, act).unwrap()
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let n_w = ROWS * COLS;
    let codes4: Vec<u8> = (0..n_w)
        .map(|k| f32_to_e2m1((k * 7919 % 1013) as f32 / 84.0 - 6.0))
        .collect();
    let codes8: Vec<u8> = (0..n_w)
        .map(|k| f32_to_e4m3(((k * 7919 % 1013) as f32 - 506.0) * 0.8))
        .collect();
    let nv_s: Vec<f32> = (0..n_w / 16)
        .map(|k| e4m3_to_f32(f32_to_e4m3(1.0 + (k % 200) as f32)))
        .collect();
    let mx_s: Vec<f32> = (0..n_w / 32)
        .map(|k| f32::powi(2.0, -((k % 6) as i32) - 4))
        .collect();
    let f8_s: Vec<f32> = (0..ROWS / 128 * COLS / 128)
        .map(|k| 1e-4 * (1 + k % 7) as f32)
        .collect();
    let nv = packed(FpGrid::Nvfp4, &codes4, &nv_s, 1, 16, IntAct::F32);
    let mx = packed(FpGrid::Mxfp4, &codes4, &mx_s, 1, 32, IntAct::F32);
    let mxq = packed(FpGrid::Mxfp4, &codes4, &mx_s, 1, 32, IntAct::Q8_0);
    let f8 = packed(FpGrid::Fp8, &codes8, &f8_s, 128, 128, IntAct::F32);
    let dense = WeightMatrix::from_f32(ROWS, COLS, nv.to_f32());
    println!("{ROWS}x{COLS}, {threads} thread(s)");
    let all = [
        ("dense f32", &dense),
        ("NVFP4_F32", &nv),
        ("MXFP4_F32", &mx),
        ("MXFP4 (Q8_0 act)", &mxq),
        ("FP8_B128", &f8),
    ];
    for (name, w) in all {
        for n in [1usize, 64] {
            let x: Vec<f32> = (0..n * COLS)
                .map(|k| ((k % 97) as f32 - 48.0) * 0.01)
                .collect();
            let mut y = vec![0.0f32; n * ROWS];
            let mut best = f64::MAX;
            for _ in 0..if n == 1 { 30 } else { 5 } {
                let t = Instant::now();
                matmul(w, &x, n, &mut y);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{name:18} n={n:3}: {:8.3} ms  {:6.1} GB/s of weights ({:6.1} MB)",
                best * 1e3,
                w.data.len() as f64 / best / 1e9,
                w.data.len() as f64 / 1e6
            );
        }
    }
}
