//! The AVX-512 one-row Q6_K / IQ4_XS kernels (`dot_kquants_avx512`) against the AVX2 one-row
//! kernels (same bits) and the scalar reference (within rounding), on random and
//! edge-case blocks and on extreme activations.

use super::act_quant::{Act, Q8_K_BYTES};
use super::{dot_kquants as kq, dot_kquants_avx2 as k2, dot_kquants_avx512 as k5, Isa};
use half::f16;
use llmq_formats::blocks::{BlockIq4Xs, BlockQ6K, BlockQ8K};
use llmq_formats::GgmlType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type One = fn(&[u8], &[u8]) -> f32;

/// type, AVX-512 kernel, AVX2 kernel, scalar reference
const CASES: [(GgmlType, One, One, One); 2] = [
    (GgmlType::Q6K, k5::dot_q6_k, k2::dot_q6_k, kq::dot_q6_k),
    (
        GgmlType::IQ4XS,
        k5::dot_iq4_xs,
        k2::dot_iq4_xs,
        kq::dot_iq4_xs,
    ),
];

fn available() -> bool {
    Isa::Avx2.available() && llmq_quant::isa::avx512_vnni()
}

fn f16b(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

/// `nb` random blocks with finite scales; `edge` adds zero and negative scales and
/// blocks whose quants and scales are all zero or all ones.
fn weight_row(rng: &mut ChaCha8Rng, ty: GgmlType, nb: usize, edge: bool) -> Vec<u8> {
    let bytes = ty.row_bytes(256).unwrap();
    let mut w: Vec<u8> = (0..nb * bytes).map(|_| rng.gen()).collect();
    for blk in w.chunks_exact_mut(bytes) {
        let mut d = rng.gen_range(0.0005f32..0.01);
        if edge && rng.gen_range(0..3) == 0 {
            d = if rng.gen() { 0.0 } else { -d };
        }
        let fill = match (edge, rng.gen_range(0..4)) {
            (true, 0) => Some(0u8),
            (true, 1) => Some(0xff),
            _ => None,
        };
        let (d_at, body) = match ty {
            GgmlType::IQ4XS => (BlockIq4Xs::D, BlockIq4Xs::D.end..bytes),
            _ => (BlockQ6K::D, 0..BlockQ6K::D.start),
        };
        blk[d_at].copy_from_slice(&f16b(d));
        if let Some(f) = fill {
            blk[body].fill(f);
        }
    }
    w
}

/// A Q8_K row quantized from uniform values, with an outlier.
fn act_row(rng: &mut ChaCha8Rng, nb: usize) -> Vec<u8> {
    let mut x: Vec<f32> = (0..nb * 256).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let at = rng.gen_range(0..x.len());
    x[at] = -80.0;
    let mut q = vec![0u8; nb * Q8_K_BYTES];
    Act::Q8K.quantize(Isa::Avx2, &x, &mut q);
    q
}

/// A Q8_K row of extreme quants (−128, −127, 127 and random), with matching `bsums`.
pub(super) fn extreme_act_row(rng: &mut ChaCha8Rng, nb: usize) -> Vec<u8> {
    let mut q = vec![0u8; nb * Q8_K_BYTES];
    for blk in q.chunks_exact_mut(Q8_K_BYTES) {
        blk[BlockQ8K::D].copy_from_slice(&rng.gen_range(0.001f32..0.1).to_le_bytes());
        for v in &mut blk[BlockQ8K::QS] {
            *v = match rng.gen_range(0..4) {
                0 => 0x80,
                1 => (-127i8) as u8,
                2 => 127,
                _ => rng.gen(),
            };
        }
        for g in 0..16 {
            let s: i32 = blk[BlockQ8K::QS.start + 16 * g..][..16]
                .iter()
                .map(|&v| v as i8 as i32)
                .sum();
            let at = BlockQ8K::BSUMS.start + 2 * g;
            blk[at..at + 2].copy_from_slice(&(s as i16).to_le_bytes());
        }
    }
    q
}

/// `Σ |w_j · a_j|` of the dequantized rows (the scale of the rounding error); the
/// prompt tiles' tests use it too.
pub(super) fn magnitude(ty: GgmlType, w: &[u8], a: &[u8]) -> f64 {
    let mut wf = vec![0.0f32; a.len() / Q8_K_BYTES * 256];
    crate::dequant::dequantize_row(ty, w, &mut wf);
    let af = a.chunks_exact(Q8_K_BYTES).flat_map(|blk| {
        let d = f32::from_le_bytes(blk[BlockQ8K::D].try_into().unwrap());
        blk[BlockQ8K::QS].iter().map(move |&q| d * q as i8 as f32)
    });
    wf.iter()
        .zip(af)
        .map(|(x, y)| (*x as f64 * y as f64).abs())
        .sum()
}

#[test]
fn avx512_one_row_kernels_equal_avx2_and_the_scalar_reference() {
    if !available() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    for (ty, fast, avx2, scalar) in CASES {
        for nb in [1, 2, 3, 8] {
            for trial in 0..24 {
                let edge = trial % 2 == 1;
                let w = weight_row(&mut rng, ty, nb, edge);
                let a = act_row(&mut rng, nb);
                let got = fast(&w, &a);
                let want = avx2(&w, &a);
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{ty:?} nb {nb}: {got} vs {want}"
                );
                let r = scalar(&w, &a);
                let tol = 1e-5 * magnitude(ty, &w, &a) + 1e-30;
                assert!(
                    ((got - r) as f64).abs() <= tol,
                    "{ty:?} nb {nb}: {got} vs scalar {r} (tol {tol})"
                );
                // quants at the i8 limits, where a saturating pair sum would show
                let a = extreme_act_row(&mut rng, nb);
                let (got, want) = (fast(&w, &a), avx2(&w, &a));
                assert_eq!(got.to_bits(), want.to_bits(), "{ty:?} nb {nb} extreme");
            }
        }
    }
}
