//! The `vpdpbusd` prompt tile ([`super`]) and every one-row kernel of Q4_K, Q5_K, Q6_K
//! and IQ4_XS (AVX2 one- and four-row, AVX-512 one-row) give the scalar reference's bits, on
//! random and edge-case blocks (zero, negative and largest scales, all-zero and all-max
//! quants), activations with outliers and at the i8 limits, 1–3 and 8 blocks, and row
//! counts that leave a panel partly filled.

use super::*;
use crate::kernels::dot_kquants as kq;
use crate::kernels::dot_kquants_avx2 as k2;
use crate::kernels::dot_kquants_avx512 as k5;
use crate::kernels::tests_dot512::extreme_act_row;
use crate::kernels::tile_wide::tests::{act_rows, available, weight_rows};
use llmq_formats::GgmlType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

type One = fn(&[u8], &[u8]) -> f32;
type Four = fn(&[u8], [&[u8]; 4]) -> [f32; 4];

fn cases() -> [(GgmlType, VnniType, One, Four, One); 4] {
    let t = |decode: BlockDecodeFn, ty: GgmlType, mins: bool| VnniType {
        decode,
        bytes: ty.row_bytes(256).unwrap(),
        mins,
        sub16: ty == GgmlType::Q6K,
    };
    [
        (
            GgmlType::Q4K,
            t(decode_q4_k, GgmlType::Q4K, true),
            k2::dot_q4_k,
            k2::dot4_q4_k,
            kq::dot_q4_k,
        ),
        (
            GgmlType::Q5K,
            t(decode_q5_k, GgmlType::Q5K, true),
            k2::dot_q5_k,
            k2::dot4_q5_k,
            kq::dot_q5_k,
        ),
        (
            GgmlType::Q6K,
            t(decode_q6_k, GgmlType::Q6K, false),
            k2::dot_q6_k,
            k2::dot4_q6_k,
            kq::dot_q6_k,
        ),
        (
            GgmlType::IQ4XS,
            t(decode_iq4_xs, GgmlType::IQ4XS, false),
            k2::dot_iq4_xs,
            k2::dot4_iq4_xs,
            kq::dot_iq4_xs,
        ),
    ]
}

/// A Q8_K row of ±127 and random quants: `extreme_act_row` without −128, which Q8_K
/// never holds (`quantize_row_q8_K` rounds into −127..=127; the AVX2 IQ4_XS kernel's
/// sign trick relies on it).
fn q8_k_limits(rng: &mut ChaCha8Rng, nb: usize) -> Vec<u8> {
    let mut q = extreme_act_row(rng, nb);
    for blk in q.chunks_exact_mut(Q8_K_BYTES) {
        for v in &mut blk[BlockQ8K::QS] {
            if *v == 0x80 {
                *v = 0x81;
            }
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

fn same(got: f32, want: f32, what: &str) {
    assert_eq!(got.to_bits(), want.to_bits(), "{what}: {got} vs {want}");
}

#[test]
fn tile_and_one_row_kernels_give_the_scalar_reference_bits() {
    if !available() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for (ty, vt, one, four, scalar) in cases() {
        let wb = ty.row_bytes(256).unwrap();
        for (nb, edge, rows) in [(1, true, 21), (3, true, 16), (2, false, 5), (8, true, 33)] {
            let w = weight_rows(&mut rng, ty, rows, nb, edge);
            let row = |r: usize| &w[r * nb * wb..(r + 1) * nb * wb];
            let dec = Decoded::new(vt, nb, (0..rows).map(row));
            let n = 16;
            let rb = nb * Q8_K_BYTES;
            let mut acts = act_rows(&mut rng, n, nb * 256);
            // tokens 8 and 13 at Q8_K's limits (±127)
            for t in [8, 13] {
                acts[t * rb..(t + 1) * rb].copy_from_slice(&q8_k_limits(&mut rng, nb));
            }
            let act = |t: usize| &acts[t * rb..(t + 1) * rb];
            let packed = pack(&acts, rb, n);
            let gb = group_bytes(nb);
            for p in 0..dec.panels() {
                let rr = ROWS.min(rows - p * ROWS);
                for g in 0..n / GROUP {
                    let mut out = [f32::NAN; ROWS * GROUP];
                    let a = &packed[g * gb..(g + 1) * gb];
                    // SAFETY: checked by `available`; 8 tokens of `ROWS` floats.
                    unsafe { tile(&dec, vt, p, a, out.as_mut_ptr(), ROWS, rr) };
                    for (k, vals) in out.chunks_exact(ROWS).enumerate() {
                        let t = g * GROUP + k;
                        for (i, &got) in vals.iter().enumerate() {
                            let r = p * ROWS + i;
                            if i < rr {
                                let want = scalar(row(r), act(t));
                                same(got, want, &format!("{ty:?} nb={nb} row {r} token {t}"));
                            } else {
                                assert!(got.is_nan(), "row {r} past the panel's rows written");
                            }
                        }
                    }
                }
            }
            for r in 0..rows {
                for t0 in (0..n).step_by(4) {
                    let a = [act(t0), act(t0 + 1), act(t0 + 2), act(t0 + 3)];
                    let got4 = four(row(r), a);
                    for (k, &g4) in got4.iter().enumerate() {
                        let t = t0 + k;
                        let want = scalar(row(r), act(t));
                        let what = format!("{ty:?} nb={nb} row {r} token {t}");
                        same(g4, want, &format!("{what} (AVX2 four-row)"));
                        same(one(row(r), act(t)), want, &format!("{what} (AVX2)"));
                        if ty == GgmlType::IQ4XS {
                            same(
                                k5::dot_iq4_xs(row(r), act(t)),
                                want,
                                &format!("{what} (512)"),
                            );
                        }
                    }
                }
            }
        }
    }
}
