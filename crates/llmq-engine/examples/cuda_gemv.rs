//! GPU GEMV check and timing (run on a CUDA machine):
//!
//! 1. for every weight type the CUDA backend computes, `x · Wᵀ` on the GPU against the
//!    CPU engine's product (which rounds the activations the same way; batch sizes 1, 5
//!    and 11), and the embedding lookup against the CPU dequantization, in f64; the
//!    same product for GPTQ-style 4- and 8-bit integer weights (groups of 128 repacked
//!    to 32-column blocks, with and without an act-order column permutation) and for
//!    compressed-tensors FP weights (NVFP4, MXFP4 with f32 activations, FP8 per
//!    channel / per tensor / 128×128 blocks, and NVFP4 behind MR-GPTQ's online
//!    Hadamard rotation of 64 and 128);
//! 2. the device-to-device copy bandwidth, then the time of `y = x · Wᵀ` for one
//!    activation row over ROWS×COLS matrices (default 14336×4096, the 8B FFN shape, then
//!    8192×8192)
//!    per type (the integer checkpoints' `INT4_B32` / `INT8_B32` and the FP types
//!    `NVFP4_F32` / `MXFP4_F32` / `FP8_B128` included): bytes moved
//!    per call / mean time over 50 back-to-back calls (median of 5 rounds), and its share
//!    of the copy rate;
//! 3. EXL3 trellis weights (`kernels/exl3.cu`): the product (rotations, GEMV, scales, a
//!    q/k-style row order) against the CPU's fused trellis product at K = 1…8 for every
//!    codebook and both decoders (`alu`: the codebook's arithmetic, exllamav3's; `lut`:
//!    the fp16 table), then the GEMV alone at K = 2, 3, 4, 5 (MUL1) per decoder, timed
//!    as in 2 (the two 128-point rotations are separate small launches, not counted).
//!
//! `cargo run --release -p llmq-engine --features cuda --example cuda_gemv [ROWS COLS]`

use llmq_engine::backend::cuda::{Cuda, Exl3Decode, GPU_TYPES};
use llmq_engine::backend::Cpu;
use llmq_engine::Backend;
use llmq_formats::GgmlType;
use llmq_kernels::int_blocks::{IntGroups, PackedInt};
use llmq_kernels::{Bytes, Codebook, FpGrid, FpGroups, IntAct, WeightMatrix};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn matrix(ty: GgmlType, rows: usize, cols: usize, values: &[f32]) -> WeightMatrix {
    let mut buf = vec![0u8; rows * ty.row_bytes(cols).expect("row size")];
    llmq_quant::quantize(ty, values, cols, None, &mut buf).expect("quantize");
    WeightMatrix::new(ty, rows, cols, Bytes::whole(Arc::new(buf))).expect("matrix")
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

/// GPU against the CPU engine for one type (the same activation rounding, so only the
/// summation order differs), for batches of 1, 5 and 11 rows; the worst relative error.
fn check(be: &Cuda, ty: GgmlType, rng: &mut impl Rng) -> f64 {
    let (rows, cols) = (48, 768);
    let vals: Vec<f32> = (0..rows * cols)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let w = matrix(ty, rows, cols, &vals);
    let deq = w.to_f32();
    let (worst, gw) = product_err(be, w, rng);
    let ids = [3u32, 0, 47];
    let e = be.download(be.embed(&gw, &ids, Some(0.5)));
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&i| {
            deq[i as usize * cols..(i as usize + 1) * cols]
                .iter()
                .map(|v| *v as f64 * 0.5)
        })
        .collect();
    worst.max(rel_err(&e, &want))
}

/// A GPTQ-style `bits`-bit matrix (random codes, scales and zero points, groups of
/// 128; `act_order`: the groups follow a shuffled column order, as `g_idx` does).
fn int_matrix(
    bits: u8,
    rows: usize,
    cols: usize,
    act_order: bool,
    rng: &mut impl Rng,
) -> WeightMatrix {
    let n_groups = cols / 128;
    let q: Vec<u8> = (0..rows * cols)
        .map(|_| rng.gen_range(0..1u16 << bits) as u8)
        .collect();
    let scales: Vec<half::f16> = (0..rows * n_groups)
        .map(|_| half::f16::from_f32(rng.gen_range(0.001f32..0.02)))
        .collect();
    let zeros: Vec<u8> = (0..rows * n_groups)
        .map(|_| rng.gen_range(0..1u16 << bits) as u8)
        .collect();
    let mut group_of_col: Vec<u32> = (0..cols).map(|c| (c / 128) as u32).collect();
    if act_order {
        for i in (1..cols).rev() {
            group_of_col.swap(i, rng.gen_range(0..=i));
        }
    }
    let g = IntGroups {
        bits,
        rows,
        cols,
        q: &q,
        scales: &scales,
        zeros: &zeros,
        n_groups,
        group_of_col: &group_of_col,
    };
    WeightMatrix::from_int_groups(&g, IntAct::Q8_0).expect("integer matrix")
}

/// A compressed-tensors FP matrix: random E2M1 / E4M3 codes, scales on their grids per
/// `rps`×`cps` group, NVFP4's global scale.
fn fp_matrix(
    grid: FpGrid,
    rows: usize,
    cols: usize,
    (rps, cps): (usize, usize),
    rng: &mut impl Rng,
) -> WeightMatrix {
    let codes: Vec<u8> = (0..rows * cols)
        .map(|_| match grid {
            // E4M3 codes without the NaN ones
            FpGrid::Fp8 => rng.gen_range(0..0x7Fu8) | (rng.gen_range(0..2u8) << 7),
            _ => rng.gen_range(0..16u8),
        })
        .collect();
    let scale_cols = cols.div_ceil(cps);
    let scales: Vec<f32> = (0..rows.div_ceil(rps) * scale_cols)
        .map(|_| match grid {
            FpGrid::Nvfp4 => llmq_formats::minifloat::e4m3_to_f32(rng.gen_range(0x20..0x60u8)),
            FpGrid::Mxfp4 => 2f32.powi(rng.gen_range(-10..0)),
            FpGrid::Fp8 => rng.gen_range(1e-4f32..1e-2),
        })
        .collect();
    let g = FpGroups {
        grid,
        rows,
        cols,
        codes: &codes,
        scales: &scales,
        rows_per_scale: rps,
        cols_per_scale: cps,
        scale_cols,
        global_scale: 448.0 * 6.0 / 1.7,
    };
    WeightMatrix::from_fp_groups(&g, IntAct::F32).expect("FP matrix")
}

/// The compressed-tensors FP matrices the GPU computes: a label, the grid and the
/// scale groups (rows, columns) of a matrix `cols` wide.
fn fp_cases(cols: usize) -> [(&'static str, FpGrid, (usize, usize)); 5] {
    [
        ("NVFP4", FpGrid::Nvfp4, (1, 16)),
        ("MXFP4_F32", FpGrid::Mxfp4, (1, 32)),
        ("FP8/chan", FpGrid::Fp8, (1, cols)),
        ("FP8/tens", FpGrid::Fp8, (usize::MAX, cols)),
        ("FP8_BLOCK", FpGrid::Fp8, (128, 128)),
    ]
}

/// The GPU product of `w` against the CPU engine's for batches of 1, 5 and 11 rows: the
/// worst relative error, and `w` on the GPU.
fn product_err(be: &Cuda, w: WeightMatrix, rng: &mut impl Rng) -> (f64, <Cuda as Backend>::Weight) {
    let cols = w.cols;
    let cpu_w = Cpu.upload_weight(w.clone());
    let gw = be.upload_weight(w);
    let mut worst = 0.0f64;
    for n in [1usize, 5, 11] {
        let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let y = be.download(be.matmul(&gw, &be.upload(x.clone()), n));
        let want: Vec<f64> = Cpu
            .matmul(&cpu_w, &x, n)
            .into_iter()
            .map(f64::from)
            .collect();
        worst = worst.max(rel_err(&y, &want));
    }
    (worst, gw)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shapes = match args[..] {
        [r, c] => vec![(r, c)],
        _ => vec![(14336, 4096), (8192, 8192)],
    };
    let be = match Cuda::open(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cuda_gemv: {e}");
            std::process::exit(8);
        }
    };
    println!("device: {}", be.describe());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut failed = false;
    println!("correctness (GPU vs the CPU engine's product; embedding vs CPU dequantization):");
    for (ty, _) in GPU_TYPES {
        let err = check(&be, *ty, &mut rng);
        let ok = err < 1e-5;
        failed |= !ok;
        println!(
            "  {:8} rel err {err:.2e} {}",
            ty.name(),
            if ok { "ok" } else { "FAIL" }
        );
    }
    for (bits, act_order) in [(4u8, false), (4, true), (8, false), (8, true)] {
        let w = int_matrix(bits, 48, 768, act_order, &mut rng);
        let (err, _) = product_err(&be, w, &mut rng);
        let ok = err < 1e-5;
        failed |= !ok;
        println!(
            "  INT{bits}{}  rel err {err:.2e} {}",
            if act_order { " act-order" } else { "" },
            if ok { "ok" } else { "FAIL" }
        );
    }
    for (label, grid, groups) in fp_cases(768) {
        for rot in [None, Some(64), Some(128)] {
            if rot.is_some() && grid != FpGrid::Nvfp4 {
                continue;
            }
            let mut w = fp_matrix(grid, 48, 768, groups, &mut rng);
            if let Some(b) = rot {
                w = w.with_input_rotation(b).expect("rotation");
            }
            let (err, _) = product_err(&be, w, &mut rng);
            let ok = err < 1e-5;
            failed |= !ok;
            let h = rot.map(|b| format!(" H{b}")).unwrap_or_default();
            let name = format!("{label}{h}");
            println!(
                "  {name:8} rel err {err:.2e} {}",
                if ok { "ok" } else { "FAIL" }
            );
        }
    }
    let copy = be.copy_bandwidth(1 << 30, 10).expect("copy bandwidth");
    println!("copy bandwidth (read + write): {:.0} GB/s", copy / 1e9);
    for &(rows, cols) in &shapes {
        time_shape(&be, rows, cols, copy, &mut rng);
    }
    // EXL3: correctness at every K, codebook and decoder, then timings on the first shape
    let (rows, cols) = shapes[0];
    let x = be.upload((0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect());
    failed |= exl3_rows(&be, rows, cols, &x, copy, &mut rng);
    if failed {
        std::process::exit(1);
    }
}

/// The timing table for `rows`×`cols` weights: every GGML type with an integer kernel
/// and F16, the integer checkpoints' blocks, and the compressed-tensors FP kernels.
fn time_shape(be: &Cuda, rows: usize, cols: usize, copy: f64, rng: &mut impl Rng) {
    println!("GEMV 1 x {cols} x {rows} (y = x . W^T), median of 5 rounds of 50:");
    let x = be.upload((0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect());
    for ty in [
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q6K,
        GgmlType::Q5K,
        GgmlType::Q4K,
        GgmlType::Q5_0,
        GgmlType::Q4_0,
        GgmlType::Q5_1,
        GgmlType::Q4_1,
        GgmlType::IQ4XS,
        GgmlType::Q2K,
    ] {
        let rb = ty.row_bytes(cols).expect("row size");
        // random bytes are a valid stand-in for timing (no value is looked at)
        let mut buf = vec![0u8; rows * rb];
        rng.fill(&mut buf[..]);
        if matches!(ty, GgmlType::F16) {
            // keep halves finite
            for h in buf.chunks_mut(2) {
                h[1] &= 0x3b;
            }
        }
        let w = WeightMatrix::new(ty, rows, cols, Bytes::whole(Arc::new(buf))).expect("matrix");
        time_row(be, w, &x, copy);
    }
    for bits in [4u8, 8] {
        let rb = llmq_kernels::int_blocks::int_block_bytes(bits, 32) * cols / 32;
        let mut data = vec![0u8; rows * rb];
        rng.fill(&mut data[..]);
        let p = PackedInt {
            bits,
            block: 32,
            data,
            perm: None,
        };
        let w = WeightMatrix::from_packed_int(p, rows, cols, IntAct::Q8_0).expect("matrix");
        time_row(be, w, &x, copy);
    }
    for (_, grid, groups) in fp_cases(cols) {
        if grid == FpGrid::Fp8 && groups != (128, 128) {
            continue; // the same FP8_B128 rows as 128x128 blocks
        }
        time_row(be, fp_matrix(grid, rows, cols, groups, rng), &x, copy);
    }
}

/// A random EXL3 Linear `rows × cols` at `k` bits (codes uniform: every state is valid).
fn exl3_matrix(rows: usize, cols: usize, k: u32, cb: Codebook, rng: &mut impl Rng) -> WeightMatrix {
    let trellis: Vec<i16> = (0..rows / 16 * cols / 16 * 16 * k as usize)
        .map(|_| rng.gen())
        .collect();
    let h = |n: usize, a: f32, rng: &mut dyn rand::RngCore| -> Vec<half::f16> {
        (0..n)
            .map(|_| {
                half::f16::from_f32(
                    a * (rng.gen_range(0.5f32..1.5)) * if rng.gen() { 1.0 } else { -1.0 },
                )
            })
            .collect()
    };
    let (suh, svh) = (h(cols, 1.0, rng), h(rows, 0.02, rng));
    WeightMatrix::from_trellis(&trellis, &suh, &svh, k, cb).expect("trellis matrix")
}

/// EXL3 correctness (every K, codebook and decoder, with and without a row order) and
/// the GEMV timings; whether anything failed.
fn exl3_rows(
    be: &Cuda,
    rows: usize,
    cols: usize,
    x: &<Cuda as Backend>::Buf,
    copy: f64,
    rng: &mut impl Rng,
) -> bool {
    let mut failed = false;
    println!("EXL3 correctness (GPU vs the CPU's fused trellis product, batches 1, 5, 11):");
    for k in 1..=8u32 {
        for cb in [Codebook::Inst3, Codebook::Mcg, Codebook::Mul1] {
            let mut line = format!("  EXL3_K{k}_{:5}", cb.name());
            for d in [Exl3Decode::Alu, Exl3Decode::Lut] {
                be.set_exl3_decode(d);
                let mut w = exl3_matrix(256, 384, k, cb, rng);
                if k % 2 == 0 {
                    let order: Vec<usize> = (0..256).map(|r| (r * 37 + 11) % 256).collect();
                    w = w.permute_rows(&order).expect("row order");
                }
                let (err, _) = product_err(be, w, rng);
                let ok = err < 1e-5;
                failed |= !ok;
                line += &format!("  {d:?} {err:.2e} {}", if ok { "ok" } else { "FAIL" });
            }
            println!("{line}");
        }
    }
    println!("EXL3 GEMV 1 x {cols} x {rows} (kernel alone, on rotated activations), median of 5 rounds of 50:");
    for k in [2u32, 3, 4, 5] {
        let w = exl3_matrix(rows, cols, k, Codebook::Mul1, rng);
        let gw = be.upload_weight(w);
        for d in [Exl3Decode::Alu, Exl3Decode::Lut] {
            be.set_exl3_decode(d);
            let mut times = Vec::new();
            for round in 0..7 {
                let t = be.time_matmul(&gw, x, 1, 50).expect("timing");
                if round >= 2 {
                    times.push(t);
                }
            }
            times.sort_by(f64::total_cmp);
            let t = times[times.len() / 2];
            let bytes = (rows * cols * k as usize / 8 + cols * 4 + rows * 4) as f64;
            println!(
                "  EXL3_K{k} {:3}  {:8.1} us  {:7.0} GB/s  {:.2} of copy",
                format!("{d:?}").to_lowercase(),
                t * 1e6,
                bytes / t / 1e9,
                bytes / t / copy
            );
        }
    }
    be.set_exl3_decode(Exl3Decode::from_env());
    failed
}

/// One timing row: `w`'s product with one activation row.
fn time_row(be: &Cuda, w: WeightMatrix, x: &<Cuda as Backend>::Buf, copy: f64) {
    let (rows, cols) = (w.rows, w.cols);
    let rb = w.ty.row_bytes(cols).expect("row size");
    let name = w.ty.name();
    let gw = be.upload_weight(w);
    // rounds of 50 back-to-back launches of the product kernel alone (one launch is
    // too short to time alone; activation packing and allocation are outside)
    let mut times = Vec::new();
    for round in 0..7 {
        let t = be.time_matmul(&gw, x, 1, 50).expect("timing");
        if round >= 2 {
            times.push(t);
        }
    }
    times.sort_by(f64::total_cmp);
    let t = times[times.len() / 2];
    let bytes = (rows * rb + cols * 4 + rows * 4) as f64;
    println!(
        "  {:8} {:8.1} us  {:7.0} GB/s  {:.2} of copy",
        name,
        t * 1e6,
        bytes / t / 1e9,
        bytes / t / copy
    );
}
