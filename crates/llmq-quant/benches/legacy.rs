//! Quantization throughput of the legacy (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and IQ4 (IQ4_NL,
//! IQ4_XS) block formats, reference vs fast path, on a 4096×4096 Gaussian matrix, in MB
//! of f32 values per second; also dequantization. `cargo bench -p llmq-quant --bench
//! legacy` (add a filter such as `Q4_0` to run a subset).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llmq_formats::GgmlType;
use llmq_quant::{dequantize_with, quantize_with};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

const ROWS: usize = 4096;
const COLS: usize = 4096;

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn bench_legacy(c: &mut Criterion) {
    let x = gaussian(ROWS * COLS, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let imatrix: Vec<f32> = (0..COLS)
        .map(|_| 10f32.powf(rng.gen_range(-1.5..1.5)))
        .collect();
    let mut group = c.benchmark_group("quantize_4096x4096");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes((x.len() * 4) as u64));
    let cases = [
        (GgmlType::Q8_0, false),
        (GgmlType::Q4_0, false),
        (GgmlType::Q4_1, false),
        (GgmlType::Q5_0, false),
        (GgmlType::Q5_1, false),
        (GgmlType::IQ4NL, false),
        (GgmlType::IQ4XS, false),
        (GgmlType::Q4_0, true),
        (GgmlType::Q4_1, true),
        (GgmlType::IQ4NL, true),
        (GgmlType::IQ4XS, true),
    ];
    for (ty, weighted) in cases {
        let mut out = vec![0u8; ROWS * ty.row_bytes(COLS).unwrap()];
        let w = weighted.then_some(&imatrix[..]);
        for reference in [true, false] {
            let id = format!(
                "{}{}/{}",
                ty.name(),
                if weighted { "+imatrix" } else { "" },
                if reference { "ref" } else { "fast" }
            );
            group.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| quantize_with(ty, black_box(&x), COLS, w, &mut out, reference).unwrap())
            });
        }
    }
    group.finish();
}

fn bench_dequant(c: &mut Criterion) {
    let x = gaussian(ROWS * COLS, 1);
    let mut group = c.benchmark_group("dequantize_4096x4096");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes((x.len() * 4) as u64));
    let mut y = vec![0.0f32; x.len()];
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
    ] {
        let mut q = vec![0u8; ROWS * ty.row_bytes(COLS).unwrap()];
        quantize_with(ty, &x, COLS, None, &mut q, false).unwrap();
        for reference in [true, false] {
            let id = format!("{}/{}", ty.name(), if reference { "ref" } else { "fast" });
            group.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| dequantize_with(ty, black_box(&q), &mut y, reference).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_legacy, bench_dequant);
criterion_main!(benches);
