//! The AVX-512 multi-row decode products (`gemv_legacy512`) against the one-row kernels
//! they stand in for (AVX-512 `dot_legacy_avx512` and AVX2 `dot_legacy::avx2`, same
//! bits) and the scalar reference (within rounding), on random block bytes with extreme
//! quants, zero and negative scales, odd block counts and row counts that are not a
//! multiple of the four rows per pass.

use super::dot_legacy::{self as lg, avx2 as l2};
use super::gemv_legacy512::{self as g5, GemvFn};
use super::{dot_legacy_avx512 as x5, Isa};
use half::f16;
use llmq_formats::GgmlType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type One = fn(&[u8], &[u8]) -> f32;

/// type, multi-row kernel, AVX-512 and AVX2 one-row kernels, scalar reference
const CASES: [(GgmlType, GemvFn, One, One, One); 5] = [
    (
        GgmlType::Q8_0,
        g5::gemv_q8_0,
        x5::dot_q8_0,
        l2::dot_q8_0,
        lg::dot_q8_0,
    ),
    (
        GgmlType::Q5_0,
        g5::gemv_q5_0,
        x5::dot_q5_0,
        l2::dot_q5_0,
        lg::dot_q5_0,
    ),
    (
        GgmlType::Q4_0,
        g5::gemv_q4_0,
        x5::dot_q4_0,
        l2::dot_q4_0,
        lg::dot_q4_0,
    ),
    (
        GgmlType::IQ4NL,
        g5::gemv_iq4_nl,
        x5::dot_iq4_nl,
        l2::dot_iq4_nl,
        lg::dot_iq4_nl,
    ),
    (
        GgmlType::MXFP4,
        g5::gemv_mxfp4,
        x5::dot_mxfp4,
        l2::dot_mxfp4,
        lg::dot_mxfp4,
    ),
];

fn available() -> bool {
    Isa::Avx2.available() && llmq_quant::isa::avx512_vnni()
}

fn f16b(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

/// `rows` rows of `nb` random blocks: finite scales (some zero or negative, MXFP4 a
/// random exponent near 1), Q8_0 quants at −128 and 127, all-zero and all-ones blocks.
fn weight_rows(rng: &mut ChaCha8Rng, ty: GgmlType, rows: usize, nb: usize) -> Vec<u8> {
    let bb = ty.row_bytes(32).unwrap();
    let mut w: Vec<u8> = (0..rows * nb * bb).map(|_| rng.gen()).collect();
    for blk in w.chunks_exact_mut(bb) {
        match rng.gen_range(0..8) {
            0 => blk.fill(0),
            1 => blk.fill(0xff),
            _ => {}
        }
        if ty == GgmlType::MXFP4 {
            blk[0] = rng.gen_range(110..140);
            continue;
        }
        let d = match rng.gen_range(0..6) {
            0 => 0.0,
            1 => -rng.gen_range(0.0005f32..0.05),
            _ => rng.gen_range(0.0005f32..0.05),
        };
        blk[..2].copy_from_slice(&f16b(d));
        if ty == GgmlType::Q8_0 && rng.gen() {
            blk[2 + rng.gen_range(0..32)] = 0x80; // −128
            blk[2 + rng.gen_range(0..32)] = 0x7f;
        }
    }
    w
}

/// A Q8_0 activation row: quants in −127..=127, many at the limits, one zero block.
fn act_row(rng: &mut ChaCha8Rng, nb: usize) -> Vec<u8> {
    let mut a = vec![0u8; nb * 34];
    for (b, blk) in a.chunks_exact_mut(34).enumerate() {
        blk[..2].copy_from_slice(&f16b(rng.gen_range(0.001f32..0.1)));
        for q in &mut blk[2..] {
            *q = match rng.gen_range(0..4) {
                _ if b == 1 => 0,
                0 => 127u8,
                1 => (-127i8) as u8,
                _ => rng.gen_range(-127i8..=127) as u8,
            };
        }
    }
    a
}

/// `Σ |w_j · a_j|` of the dequantized row against the activation row.
fn magnitude(ty: GgmlType, w: &[u8], a: &[u8]) -> f64 {
    let mut wf = vec![0.0f32; a.len() / 34 * 32];
    crate::dequant::dequantize_row(ty, w, &mut wf);
    let af = a.chunks_exact(34).flat_map(|blk| {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        blk[2..].iter().map(move |&q| d * q as i8 as f32)
    });
    wf.iter()
        .zip(af)
        .map(|(x, y)| (*x as f64 * y as f64).abs())
        .sum()
}

#[test]
fn multi_row_decode_kernels_equal_the_one_row_kernels() {
    if !available() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for (ty, gemv, one512, one, scalar) in CASES {
        let bb = ty.row_bytes(32).unwrap();
        for nb in [1, 2, 3, 7, 64] {
            for rows in [1, 3, 4, 5, 9, 13] {
                let wrb = nb * bb;
                // two rows past the ones computed: the prefetches may reach them
                let w = weight_rows(&mut rng, ty, rows + 2, nb);
                let a = act_row(&mut rng, nb);
                let mut y = vec![f32::NAN; rows];
                gemv(&w, wrb, &a, &mut y);
                for (r, &got) in y.iter().enumerate() {
                    let wr = &w[r * wrb..(r + 1) * wrb];
                    let want = one(wr, &a);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{ty:?} nb {nb} rows {rows} row {r}: {got} vs AVX2 {want}"
                    );
                    assert_eq!(got.to_bits(), one512(wr, &a).to_bits(), "{ty:?}");
                    let s = scalar(wr, &a);
                    let tol = 1e-5 * magnitude(ty, wr, &a) + 1e-30;
                    assert!(
                        ((got - s) as f64).abs() <= tol,
                        "{ty:?} nb {nb} row {r}: {got} vs scalar {s} (tol {tol})"
                    );
                }
            }
        }
    }
}
