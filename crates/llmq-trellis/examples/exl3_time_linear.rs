//! Times `quantize_linear` on a Gaussian weight of a given shape (`out in K`), no Hessian, and
//! prints tiles, seconds per tile and the relative weight error of the stored tensors.
//! `cargo run --release -p llmq-trellis --example exl3_time_linear 896 896 4`
use llmq_trellis::decode::reconstruct;
use llmq_trellis::quantize::{quantize_linear, Exl3Config};
use llmq_trellis::Codebook;
use rand::{Rng, SeedableRng};

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (out_f, in_f, k) = (a[0], a[1], a[2] as u32);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let w: Vec<f32> = (0..out_f * in_f)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.gen::<f64>().max(1e-12), rng.gen());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32 * 0.02
        })
        .collect();
    let t = std::time::Instant::now();
    let q = quantize_linear(
        &w,
        out_f,
        in_f,
        None,
        &Exl3Config::new(k, Codebook::Mul1, 0),
    )
    .unwrap();
    let dt = t.elapsed().as_secs_f64();
    let r = reconstruct(&q.trellis, &q.suh, &q.svh, k, Codebook::Mul1);
    let (mut num, mut den) = (0f64, 0f64);
    for o in 0..out_f {
        for i in 0..in_f {
            num += ((w[o * in_f + i] - r[i * q.out_features + o]) as f64).powi(2);
            den += (w[o * in_f + i] as f64).powi(2);
        }
    }
    let tiles = q.in_features * q.out_features / 256;
    println!(
        "{out_f}x{in_f} K={k}: {tiles} tiles, {dt:.1} s ({:.2} ms per stored tile, scale search included), rel err {:.5}, {} threads",
        dt * 1e3 / tiles as f64,
        num / den,
        rayon::current_num_threads()
    );
}
