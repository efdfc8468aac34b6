//! `y = x·W` straight from EXL3's stored tensors, without materialising `W` (exllamav3
//! `exl3.py reconstruct_hgemm` order): `x ← had128(x ⊙ suh)`, `y = x·Ŵ` with every 16×16 tile of
//! `Ŵ` decoded once from its bitstream and used for all rows of `x`, then `y ← had128(y) ⊙ svh`.
//! Tiles are decoded through a 65536-entry table of the codebook (f32), states read from the
//! stream with one 64-bit window per weight (the CUDA decoder's funnel shift). Tile columns run
//! in parallel.

use crate::bitstream::{tile_words, TENSOR_CORE_PERM, TILE};
use crate::codebook::Codebook;
use crate::hadamard::{had_right, HAD};
use half::f16;
use rayon::prelude::*;

/// An EXL3 linear ready for products: its stored tensors and a decoding table.
#[derive(Debug, Clone)]
pub struct Exl3Matrix {
    in_f: usize,
    out_f: usize,
    k: u32,
    trellis: Vec<i16>,
    suh: Vec<f32>,
    svh: Vec<f32>,
    table: std::sync::Arc<Vec<f32>>,
}

impl Exl3Matrix {
    /// From the stored tensors (`trellis` `(in/16, out/16, 16·k)`, `suh` `(in,)`, `svh` `(out,)`).
    pub fn new(
        trellis: Vec<i16>,
        suh: &[f16],
        svh: &[f16],
        k: u32,
        cb: Codebook,
    ) -> Result<Exl3Matrix, crate::TrellisError> {
        let (in_f, out_f) = (suh.len(), svh.len());
        let expected = in_f / 16 * (out_f / 16) * tile_words(k);
        if !(1..=8).contains(&k)
            || !in_f.is_multiple_of(HAD)
            || !out_f.is_multiple_of(HAD)
            || trellis.len() != expected
        {
            return Err(crate::TrellisError::Shape {
                what: format!("EXL3 trellis for {in_f}x{out_f} at K={k}"),
                expected,
                got: trellis.len(),
            });
        }
        Ok(Exl3Matrix {
            in_f,
            out_f,
            k,
            trellis,
            suh: suh.iter().map(|x| x.to_f32()).collect(),
            svh: svh.iter().map(|x| x.to_f32()).collect(),
            table: std::sync::Arc::new(cb.table()),
        })
    }

    /// Input features (padded).
    pub fn in_features(&self) -> usize {
        self.in_f
    }

    /// Output features (padded).
    pub fn out_features(&self) -> usize {
        self.out_f
    }

    /// Decodes tile `(i, j)` into `out` (row-major 16×16).
    pub fn decode_tile(&self, i: usize, j: usize, out: &mut [f32; TILE]) {
        let words = tile_words(self.k);
        let tn = self.out_f / 16;
        let stored = &self.trellis[(i * tn + j) * words..][..words];
        let mut w32 = [0u32; 64];
        for (w, p) in w32.iter_mut().zip(stored.chunks_exact(2)) {
            *w = (p[0] as u16 as u32) | ((p[1] as u16 as u32) << 16);
        }
        let n32 = words / 2;
        let k = self.k as usize;
        let nbits = TILE * k;
        for (t, &p) in TENSOR_CORE_PERM.iter().enumerate() {
            let b = ((t + 1) * k + nbits - 16) % nbits;
            let (i0, off) = (b / 32, b % 32);
            let win = ((w32[i0] as u64) << 32) | w32[(i0 + 1) % n32] as u64;
            let state = (win >> (48 - off)) & 0xffff;
            out[p as usize] = self.table[state as usize];
        }
    }

    /// `y = x·W` for `rows` rows (`x` `rows × in`, `y` `rows × out`, row-major, padded sizes).
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) {
        let rows = x.len() / self.in_f;
        assert_eq!(y.len(), rows * self.out_f);
        let mut xh: Vec<f32> = x
            .chunks_exact(self.in_f)
            .flat_map(|r| r.iter().zip(&self.suh).map(|(a, s)| a * s))
            .collect();
        had_right(&mut xh, self.in_f);
        let (tk, tn) = (self.in_f / 16, self.out_f / 16);
        let cols: Vec<Vec<f32>> = (0..tn)
            .into_par_iter()
            .map(|j| {
                let mut acc = vec![0f32; rows * 16];
                let mut tile = [0f32; TILE];
                for i in 0..tk {
                    self.decode_tile(i, j, &mut tile);
                    for r in 0..rows {
                        let xr = &xh[r * self.in_f + i * 16..][..16];
                        let a = &mut acc[r * 16..][..16];
                        for (kk, &xv) in xr.iter().enumerate() {
                            for (o, &wv) in a.iter_mut().zip(&tile[kk * 16..][..16]) {
                                *o += xv * wv;
                            }
                        }
                    }
                }
                acc
            })
            .collect();
        for (j, acc) in cols.iter().enumerate() {
            for r in 0..rows {
                y[r * self.out_f + j * 16..][..16].copy_from_slice(&acc[r * 16..][..16]);
            }
        }
        had_right(y, self.out_f);
        for row in y.chunks_exact_mut(self.out_f) {
            for (v, s) in row.iter_mut().zip(&self.svh) {
                *v *= s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitstream::unpack_tile;
    use crate::decode::reconstruct;

    fn random_trellis(n: usize, seed: u32) -> Vec<i16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as i16
            })
            .collect()
    }

    /// The fast state reader agrees with the reference bit reader for every K, and the product
    /// equals x times the reconstructed weight.
    #[test]
    fn matches_the_reconstruction() {
        for (k, cb) in [
            (2u32, Codebook::Mul1),
            (3, Codebook::Inst3),
            (5, Codebook::Mcg),
            (8, Codebook::Mul1),
        ] {
            let (in_f, out_f) = (256, 128);
            let trellis = random_trellis(in_f / 16 * out_f / 16 * 16 * k as usize, 7 + k);
            let suh: Vec<f16> = (0..in_f)
                .map(|i| {
                    f16::from_f32(
                        0.01 * (1.0 + (i % 7) as f32) * if i % 3 == 0 { -1.0 } else { 1.0 },
                    )
                })
                .collect();
            let svh: Vec<f16> = (0..out_f)
                .map(|i| f16::from_f32(0.5 + (i % 5) as f32 * 0.25))
                .collect();
            let m = Exl3Matrix::new(trellis.clone(), &suh, &svh, k, cb).unwrap();
            let mut t = [0f32; TILE];
            m.decode_tile(3, 5, &mut t);
            let words = tile_words(k);
            let states = unpack_tile(&trellis[(3 * (out_f / 16) + 5) * words..][..words], k);
            for (s, &p) in states.iter().zip(TENSOR_CORE_PERM.iter()) {
                assert_eq!(t[p as usize], cb.decode(*s).to_f32());
            }
            let w = reconstruct(&trellis, &suh, &svh, k, cb);
            let rows = 3;
            let x: Vec<f32> = (0..rows * in_f)
                .map(|i| ((i * 37 % 19) as f32 - 9.0) / 9.0)
                .collect();
            let mut y = vec![0f32; rows * out_f];
            m.matmul(&x, &mut y);
            for r in 0..rows {
                for o in 0..out_f {
                    let want: f64 = (0..in_f)
                        .map(|i| x[r * in_f + i] as f64 * w[i * out_f + o] as f64)
                        .sum();
                    let got = y[r * out_f + o] as f64;
                    assert!(
                        (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "k{k} r{r} o{o}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
