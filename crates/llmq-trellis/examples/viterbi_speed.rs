//! Times the Viterbi encoder per 256-weight tile and prints its MSE on Gaussian data, per K.
//! `cargo run --release -p llmq-trellis --example viterbi_speed [tiles]`
use llmq_trellis::viterbi::Encoder;
use llmq_trellis::Codebook;
use rand::{Rng, SeedableRng};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let tiles: Vec<f32> = (0..256 * n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.gen::<f64>().max(1e-12), rng.gen());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect();
    for k in 1..=8 {
        let e = Encoder::new(k, Codebook::Mul1).unwrap();
        let t = std::time::Instant::now();
        let (_, values) = e.encode_tiles(&tiles);
        let dt = t.elapsed().as_secs_f64();
        let mse: f64 = values
            .iter()
            .zip(&tiles)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / tiles.len() as f64;
        println!(
            "K={k} mse {mse:.5} {:.2} ms/tile ({} threads)",
            dt * 1e3 / n as f64,
            rayon::current_num_threads()
        );
    }
}
