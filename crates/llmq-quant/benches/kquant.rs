//! Throughput of the k-quant quantizers (reference vs fast path, with and without
//! importance weights) and dequantizers, in MB/s of f32 input (output for dequantize),
//! on a 1024×4096 Gaussian matrix.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type RowQuant = fn(&[f32], Option<&[f32]>, &mut [u8]);
type RowDequant = fn(&[u8], &mut [f32]);

const ROWS: usize = 1024;
const COLS: usize = 4096;

struct Format {
    name: &'static str,
    block_bytes: usize,
    quant_ref: RowQuant,
    quant: RowQuant,
    dequant_ref: RowDequant,
    dequant: RowDequant,
}

macro_rules! entry {
    ($module:ident, $bytes:expr) => {
        Format {
            name: stringify!($module),
            block_bytes: $bytes,
            quant_ref: llmq_quant::$module::quantize_row_ref,
            quant: llmq_quant::$module::quantize_row,
            dequant_ref: llmq_quant::$module::dequantize_row_ref,
            dequant: llmq_quant::$module::dequantize_row,
        }
    };
}

fn matrix(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = rng.gen_range(f32::MIN_POSITIVE..1.0);
            let v: f32 = rng.gen();
            scale * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let x = matrix(&mut rng, ROWS * COLS, 0.02);
    let imatrix: Vec<f32> = matrix(&mut rng, COLS, 1.0)
        .iter()
        .map(|v| v.exp())
        .collect();
    let formats = [
        entry!(q2_k, 84),
        entry!(q3_k, 110),
        entry!(q4_k, 144),
        entry!(q5_k, 176),
        entry!(q6_k, 210),
    ];
    for f in &formats {
        let row_bytes = COLS / 256 * f.block_bytes;
        let mut q = vec![0u8; ROWS * row_bytes];
        let mut group = c.benchmark_group(format!("quantize_{}", f.name));
        group.throughput(Throughput::Bytes((x.len() * 4) as u64));
        group.sample_size(10);
        for (path, fun) in [("ref", f.quant_ref), ("fast", f.quant)] {
            for weighted in [false, true] {
                let w = weighted.then_some(&imatrix[..]);
                let id = BenchmarkId::new(path, if weighted { "imatrix" } else { "plain" });
                group.bench_function(id, |b| {
                    b.iter(|| {
                        for (row, out) in x.chunks_exact(COLS).zip(q.chunks_exact_mut(row_bytes)) {
                            fun(row, w, out);
                        }
                    })
                });
            }
        }
        group.finish();
        let mut y = vec![0f32; x.len()];
        let mut group = c.benchmark_group(format!("dequantize_{}", f.name));
        group.throughput(Throughput::Bytes((y.len() * 4) as u64));
        group.sample_size(10);
        for (path, fun) in [("ref", f.dequant_ref), ("fast", f.dequant)] {
            group.bench_function(path, |b| b.iter(|| fun(&q, &mut y)));
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
