//! Floating-point coded weights ([`crate::fp_blocks`]): repacked rows dequantize to the
//! values computed independently from codes and scales (bit for bit), and the scalar
//! and AVX2 products equal `x · dequant(W)ᵀ` within f32 rounding, the four-row kernel
//! giving each row the one-row kernel's bits.

use super::*;
use crate::fp_blocks::{FpGrid, FpGroups, FpType};
use crate::weight_type::IntAct;
use half::bf16;
use llmq_formats::minifloat::{e2m1_to_f32, e4m3_to_f32, f32_to_e2m1, f32_to_e4m3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Case {
    grid: FpGrid,
    rows: usize,
    cols: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    rps: usize,
    cps: usize,
    global: f32,
}

impl Case {
    fn groups(&self) -> FpGroups<'_> {
        FpGroups {
            grid: self.grid,
            rows: self.rows,
            cols: self.cols,
            codes: &self.codes,
            scales: &self.scales,
            rows_per_scale: self.rps,
            cols_per_scale: self.cps,
            scale_cols: self.cols.div_ceil(self.cps),
            global_scale: self.global,
        }
    }

    /// What compressed-tensors' decompressor computes (fp_quantized.rs's formula).
    fn dense(&self) -> Vec<f32> {
        let sc = self.cols.div_ceil(self.cps);
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let s = self.scales[(r / self.rps) * sc + c / self.cps];
                let q = self.codes[r * self.cols + c];
                out[r * self.cols + c] = match self.grid {
                    FpGrid::Nvfp4 => bf16::from_f32(e2m1_to_f32(q) * (s / self.global)).to_f32(),
                    FpGrid::Mxfp4 => bf16::from_f32(e2m1_to_f32(q) * s).to_f32(),
                    FpGrid::Fp8 => e4m3_to_f32(q) * s,
                };
            }
        }
        out
    }
}

fn case(
    rng: &mut ChaCha8Rng,
    grid: FpGrid,
    rows: usize,
    cols: usize,
    rps: usize,
    cps: usize,
) -> Case {
    let sc = cols.div_ceil(cps);
    let n_scales = rows.div_ceil(rps) * sc;
    let codes = (0..rows * cols)
        .map(|_| match grid {
            FpGrid::Fp8 => {
                let v: f32 = rng.gen_range(-448.0..448.0) * rng.gen_range(0.0f32..1.0).powi(6);
                f32_to_e4m3(v)
            }
            _ => f32_to_e2m1(rng.gen_range(-6.5..6.5)),
        })
        .collect();
    let scales = (0..n_scales)
        .map(|_| match grid {
            FpGrid::Nvfp4 => e4m3_to_f32(f32_to_e4m3(rng.gen_range(0.01..448.0))),
            FpGrid::Mxfp4 => f32::powi(2.0, rng.gen_range(-12..2)),
            FpGrid::Fp8 => rng.gen_range(1e-5..1e-2),
        })
        .collect();
    Case {
        grid,
        rows,
        cols,
        codes,
        scales,
        rps,
        cps,
        global: 448.0 * 6.0 / rng.gen_range(0.05f32..3.0),
    }
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    vec![
        case(&mut rng, FpGrid::Nvfp4, 9, 96, 1, 16),
        case(&mut rng, FpGrid::Mxfp4, 7, 128, 1, 32),
        // per channel, per tensor, 128x128 blocks (a partial block), odd widths
        case(&mut rng, FpGrid::Fp8, 5, 384, 1, 384),
        case(&mut rng, FpGrid::Fp8, 6, 256, 6, 256),
        case(&mut rng, FpGrid::Fp8, 130, 320, 128, 128),
        case(&mut rng, FpGrid::Fp8, 3, 36, 1, 36),
    ]
}

#[test]
fn packed_rows_dequantize_to_the_checkpoint_values() {
    for c in cases() {
        let w = WeightMatrix::from_fp_groups(&c.groups(), IntAct::F32).unwrap();
        assert!(matches!(w.ty, WeightType::Fp(_)), "{:?}", w.ty);
        let got = w.to_f32();
        let want = c.dense();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{:?} {} at {i}",
                c.grid,
                w.ty.name()
            );
        }
    }
    // FP8 block lengths follow the scale groups
    let ty = |c: &Case| c.groups().fp_type().unwrap();
    let cs = cases();
    assert_eq!(ty(&cs[2]), FpType::Fp8 { block: 128 });
    assert_eq!(ty(&cs[4]), FpType::Fp8 { block: 64 });
    assert_eq!(ty(&cs[5]), FpType::Fp8 { block: 4 });
}

#[test]
fn mxfp4_rows_are_ggml_mxfp4_blocks() {
    let c = &cases()[1];
    let q8 = WeightMatrix::from_fp_groups(&c.groups(), IntAct::Q8_0).unwrap();
    let f = WeightMatrix::from_fp_groups(&c.groups(), IntAct::F32).unwrap();
    assert_eq!(q8.ty, WeightType::Ggml(GgmlType::MXFP4));
    assert_eq!(q8.data.as_slice(), f.data.as_slice());
    assert_eq!(q8.to_f32(), c.dense());
}

#[test]
fn products_equal_the_dense_product() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for c in cases() {
        let w = WeightMatrix::from_fp_groups(&c.groups(), IntAct::F32).unwrap();
        let dense = WeightMatrix::from_f32(c.rows, c.cols, c.dense());
        for n in [1usize, 3, 4, 9] {
            let x: Vec<f32> = (0..n * c.cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let mut want = vec![0.0; n * c.rows];
            matmul_with_isa(&dense, &x, n, &mut want, Isa::Scalar);
            let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let mut by_isa = Vec::new();
            for isa in [Isa::Scalar, Isa::Avx2] {
                let mut y = vec![0.0; n * c.rows];
                matmul_with_isa(&w, &x, n, &mut y, isa);
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "{} n={n} {isa:?}: {a} vs {b}",
                        w.ty.name()
                    );
                }
                by_isa.push(y);
            }
            // one activation row at a time gives the same bits as four at once
            let mut one = vec![0.0; n * c.rows];
            for t in 0..n {
                matmul_with_isa(
                    &w,
                    &x[t * c.cols..(t + 1) * c.cols],
                    1,
                    &mut one[t * c.rows..(t + 1) * c.rows],
                    Isa::Avx2,
                );
            }
            assert_eq!(one, by_isa[1], "{} n={n}", w.ty.name());
        }
    }
}

#[test]
fn scales_off_their_grid_and_nan_codes_are_refused() {
    let mut c = cases().remove(0);
    c.scales[3] = 0.3; // not an E4M3 value
    assert!(WeightMatrix::from_fp_groups(&c.groups(), IntAct::F32).is_err());
    let mut m = cases().remove(1);
    m.scales[0] = 0.75;
    assert!(WeightMatrix::from_fp_groups(&m.groups(), IntAct::Q8_0).is_err());
    let mut f = cases().remove(2);
    f.codes[10] = 0x7F;
    assert!(WeightMatrix::from_fp_groups(&f.groups(), IntAct::F32).is_err());
}

#[test]
fn rotated_rows_multiply_as_their_folded_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for c in cases().into_iter().take(2) {
        let w = WeightMatrix::from_fp_groups(&c.groups(), IntAct::F32)
            .unwrap()
            .with_input_rotation(32)
            .unwrap();
        // the matrix's values are W'·R, every row rotated
        let mut folded = c.dense();
        for row in folded.chunks_mut(c.cols) {
            crate::rotation::hadamard_blocks(row, 32);
        }
        assert_eq!(w.to_f32(), folded);
        let dense = WeightMatrix::from_f32(c.rows, c.cols, folded);
        let x: Vec<f32> = (0..3 * c.cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let (mut got, mut want) = (vec![0.0; 3 * c.rows], vec![0.0; 3 * c.rows]);
        matmul_with_isa(&w, &x, 3, &mut got, Isa::Avx2);
        matmul_with_isa(&dense, &x, 3, &mut want, Isa::Avx2);
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
        }
    }
    let c = &cases()[0];
    assert!(WeightMatrix::from_fp_groups(&c.groups(), IntAct::F32)
        .unwrap()
        .with_input_rotation(24)
        .is_err());
}
