//! `matmul` on a 896×4864 weight (a Qwen2-0.5B-sized FFN projection) in the types our
//! test models use, for decode (n = 1, throughput in bytes of weights read) and prompt
//! processing (n = 64, throughput in multiply-adds), against the dequantize-then-dot
//! reference. `LLMQ_KERNELS_SCALAR=1` benches the scalar kernels.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llmq_formats::GgmlType;
use llmq_kernels::kernels::{matmul_reference, matmul_with_isa, Isa};
use llmq_kernels::{matmul, Bytes, WeightMatrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::time::Duration;

const ROWS: usize = 896;
const COLS: usize = 4864;

fn values(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

fn weight(ty: GgmlType, v: &[f32]) -> WeightMatrix {
    let mut bytes = vec![0u8; ty.row_bytes(COLS).unwrap() * ROWS];
    llmq_quant::quantize(ty, v, COLS, None, &mut bytes).unwrap();
    let n = bytes.len();
    WeightMatrix::new(ty, ROWS, COLS, Bytes::new(Arc::new(bytes), 0, n)).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let wv = values(&mut rng, ROWS * COLS, 0.05);
    let types = [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::F16,
    ];
    let reference = std::env::var("LLMQ_BENCH_REFERENCE").is_ok_and(|v| v != "0");
    let scalar = std::env::var("LLMQ_BENCH_SCALAR").is_ok_and(|v| v != "0");
    for ty in types {
        let w = weight(ty, &wv);
        for n in [1usize, 64] {
            let x = values(&mut rng, n * COLS, 1.0);
            let mut y = vec![0.0f32; n * ROWS];
            let mut g = c.benchmark_group(format!("matmul_{}_n{n}", ty.name()));
            g.sample_size(if n == 1 { 100 } else { 20 });
            g.warm_up_time(Duration::from_millis(500));
            g.measurement_time(Duration::from_secs(2));
            if n == 1 {
                g.throughput(Throughput::Bytes(w.data.len() as u64));
            } else {
                g.throughput(Throughput::Elements((ROWS * COLS * n) as u64));
            }
            g.bench_function(BenchmarkId::new("fast", ROWS), |b| {
                b.iter(|| matmul(&w, &x, n, &mut y))
            });
            if scalar {
                g.bench_function(BenchmarkId::new("scalar", ROWS), |b| {
                    b.iter(|| matmul_with_isa(&w, &x, n, &mut y, Isa::Scalar))
                });
            }
            if reference {
                g.bench_function(BenchmarkId::new("reference", ROWS), |b| {
                    b.iter(|| matmul_reference(&w, &x, n, &mut y))
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
