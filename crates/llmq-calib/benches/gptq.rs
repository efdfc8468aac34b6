//! GPTQ on a 896 x 4864 weight (Qwen2.5-0.5B `down_proj`), one thread (faer runs
//! sequentially: `Par::Seq`, no rayon feature).
//!
//! `cargo bench -p llmq-calib --bench gptq`
//!
//! Measured (criterion, 10 samples, shared 2-core x86-64 dev box with AVX-512):
//! Hessian accumulation of 2048 tokens 2.14 s (f64, full XᵀX: ~45 GFLOP/s);
//! GPTQ 4-bit g128 2.92 s; with act-order 2.87 s. Not profiled; by flop count the f64
//! Cholesky and triangular inverse of the 4864 x 4864 Hessian (~8e10 flops) should
//! dominate the lazy f32 updates (~2e10).

use criterion::{criterion_group, criterion_main, Criterion};
use llmq_calib::gptq::{gptq_quantize, GptqConfig, HessianAccumulator};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const OUT: usize = 896;
const IN: usize = 4864;
const TOKENS: usize = 2048;

fn inputs() -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let w: Vec<f32> = (0..OUT * IN)
        .map(|_| rng.gen_range(-0.05f32..0.05))
        .collect();
    // activations with per-channel scales and a shared component (correlated)
    let scale: Vec<f32> = (0..IN).map(|_| rng.gen_range(0.1f32..3.0)).collect();
    let mut x = vec![0.0f32; TOKENS * IN];
    for t in 0..TOKENS {
        let common: f32 = rng.gen_range(-1.0..1.0);
        for j in 0..IN {
            x[t * IN + j] = (rng.gen_range(-1.0f32..1.0) + 0.5 * common) * scale[j];
        }
    }
    (w, x)
}

fn bench(c: &mut Criterion) {
    let (w, x) = inputs();
    let mut acc = HessianAccumulator::new(IN);
    acc.add(&x, TOKENS);
    let h = acc.finish();
    let mut g = c.benchmark_group("gptq_896x4864");
    g.sample_size(10);
    g.bench_function("hessian_add_2048_tokens", |b| {
        b.iter(|| {
            let mut a = HessianAccumulator::new(IN);
            a.add(&x, TOKENS);
            a
        })
    });
    for (name, desc_act) in [("4bit_g128", false), ("4bit_g128_act_order", true)] {
        let cfg = GptqConfig {
            desc_act,
            ..Default::default()
        };
        g.bench_function(name, |b| {
            b.iter(|| gptq_quantize("down_proj", &w, OUT, IN, &h, &cfg).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
