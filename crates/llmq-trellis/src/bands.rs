//! EXL3 linears regrouped for products by output band, the layout the engine keeps in
//! memory (exllamav3 `exl3_gemv_kernel.cuh` walks the same tiles; QTIP, arXiv 2406.11235):
//! band `j` holds the 16 output columns `16j..16j+16`, its tiles `i = 0..in/16` one after
//! another (the stored `trellis` tensor orders them `[tile_k][tile_n]`), each tile its
//! `16·K` words exactly as stored. A product reads every band once, front to back.
//!
//! `y = x·W` with `W = diag(suh)·H·Ŵ·H·diag(svh)` (in, out orientation; [`crate::decode`]) is
//! `y = (had128(had128(x ⊙ suh)·Ŵ)) ⊙ svh`: the input rotated once, each 128-output block
//! of `x·Ŵ` (eight bands) accumulated tile by tile, then rotated and scaled. Blocks run in
//! parallel.

use crate::bitstream::{tile_words, TENSOR_CORE_PERM, TILE};
use crate::hadamard::{fwht128, HAD};
use rayon::prelude::*;

/// `trellis` `(in/16, out/16, 16·k)` reordered into bands (tile `(i, j)` at word
/// `(j·in/16 + i)·16k`).
pub fn to_bands(trellis: &[i16], in_f: usize, out_f: usize, k: u32) -> Vec<u16> {
    let (tk, tn, words) = (in_f / 16, out_f / 16, tile_words(k));
    assert_eq!(trellis.len(), tk * tn * words, "trellis shape");
    let mut out = vec![0u16; trellis.len()];
    for i in 0..tk {
        for j in 0..tn {
            let src = &trellis[(i * tn + j) * words..][..words];
            let dst = &mut out[(j * tk + i) * words..][..words];
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s as u16;
            }
        }
    }
    out
}

/// The inverse of [`to_bands`].
pub fn from_bands(bands: &[u16], in_f: usize, out_f: usize, k: u32) -> Vec<i16> {
    let (tk, tn, words) = (in_f / 16, out_f / 16, tile_words(k));
    assert_eq!(bands.len(), tk * tn * words, "band shape");
    let mut out = vec![0i16; bands.len()];
    for j in 0..tn {
        for i in 0..tk {
            let src = &bands[(j * tk + i) * words..][..words];
            let dst = &mut out[(i * tn + j) * words..][..words];
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s as i16;
            }
        }
    }
    out
}

/// One stored tile (`16·k` words) decoded through `table` (the codebook's 65536 values)
/// into `out`, row-major (row = input index inside the tile). The stream is read once, k
/// bits per position, into a shift register that starts with the stream's last 16 bits
/// (tail-biting), so the state of position `t` — bits `[(t+1)·k − 16, (t+1)·k)` modulo
/// `256·k` — is the register's low 16 bits after `t + 1` codes.
#[inline]
pub fn decode_tile_words(stored: &[u16], k: usize, table: &[f32], out: &mut [f32; TILE]) {
    let table = &table[..1 << 16];
    let n32 = stored.len() / 2;
    let mut w32 = [0u32; 64];
    for (w, p) in w32.iter_mut().zip(stored.chunks_exact(2)) {
        *w = (p[0] as u32) | ((p[1] as u32) << 16);
    }
    let mut reg = (w32[n32 - 1] & 0xffff) as u64;
    // the next bits, MSB-aligned: the top `nb` bits of `buf` are valid
    let (mut buf, mut nb, mut wi) = (0u64, 0usize, 0usize);
    for &p in TENSOR_CORE_PERM.iter() {
        if nb < k {
            buf |= (w32[wi & 63] as u64) << (32 - nb);
            nb += 32;
            wi += 1;
        }
        reg = (reg << k) | (buf >> (64 - k));
        buf <<= k;
        nb -= k;
        out[p as usize & (TILE - 1)] = table[(reg & 0xffff) as usize];
    }
}

/// A band-ordered EXL3 linear, borrowed: what [`BandView::matmul`] multiplies.
#[derive(Clone, Copy, Debug)]
pub struct BandView<'a> {
    /// input features (a multiple of 128)
    pub in_f: usize,
    /// output features (a multiple of 128)
    pub out_f: usize,
    /// bits per weight, 1…8
    pub k: u32,
    /// [`to_bands`]' words
    pub words: &'a [u16],
    pub suh: &'a [f32],
    pub svh: &'a [f32],
    /// the codebook's 65536 values ([`crate::Codebook::shared_table`])
    pub table: &'a [f32],
}

impl BandView<'_> {
    /// `x ← had128(x ⊙ suh)` for `n` rows: the activations the tiles multiply.
    pub fn rotate_input(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.in_f, "x is not n x in");
        let mut xh: Vec<f32> = x
            .chunks_exact(self.in_f)
            .flat_map(|r| r.iter().zip(self.suh).map(|(a, s)| a * s))
            .collect();
        xh.chunks_exact_mut(HAD).for_each(fwht128);
        xh
    }

    /// `x·Ŵ` for the 128 outputs of block `b` and `n` rows of rotated activations `xh`,
    /// into `acc` (`n × 128`, overwritten).
    pub fn block_product(&self, xh: &[f32], n: usize, b: usize, acc: &mut [f32]) {
        let (tk, words) = (self.in_f / 16, tile_words(self.k));
        acc.iter_mut().for_each(|a| *a = 0.0);
        let mut tile = [0f32; TILE];
        for band in 0..HAD / 16 {
            let j = b * (HAD / 16) + band;
            for i in 0..tk {
                let stored = &self.words[(j * tk + i) * words..][..words];
                decode_tile_words(stored, self.k as usize, self.table, &mut tile);
                for r in 0..n {
                    let xr = &xh[r * self.in_f + i * 16..][..16];
                    let a = &mut acc[r * HAD + band * 16..][..16];
                    for (kk, &xv) in xr.iter().enumerate() {
                        for (o, &wv) in a.iter_mut().zip(&tile[kk * 16..][..16]) {
                            *o += xv * wv;
                        }
                    }
                }
            }
        }
    }

    /// `y = x·W` for `n` rows (`x` `n × in`, `y` `n × out`, row-major).
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        assert_eq!(y.len(), n * self.out_f, "y is not n x out");
        if n == 0 {
            return;
        }
        let xh = self.rotate_input(x, n);
        let nb = self.out_f / HAD;
        let mut blocks = vec![0f32; nb * n * HAD];
        blocks
            .par_chunks_mut(n * HAD)
            .enumerate()
            .for_each(|(b, acc)| {
                self.block_product(&xh, n, b, acc);
                let sv = &self.svh[b * HAD..][..HAD];
                for row in acc.chunks_exact_mut(HAD) {
                    fwht128(row);
                    row.iter_mut().zip(sv).for_each(|(v, s)| *v *= s);
                }
            });
        for (b, acc) in blocks.chunks_exact(n * HAD).enumerate() {
            for r in 0..n {
                y[r * self.out_f + b * HAD..][..HAD].copy_from_slice(&acc[r * HAD..][..HAD]);
            }
        }
    }

    /// `Ŵ` decoded (row-major `in × out`), without the rotations.
    pub fn decode(&self) -> Vec<f32> {
        let (tk, tn, words) = (self.in_f / 16, self.out_f / 16, tile_words(self.k));
        let mut w = vec![0f32; self.in_f * self.out_f];
        let mut t = [0f32; TILE];
        for j in 0..tn {
            for i in 0..tk {
                let stored = &self.words[(j * tk + i) * words..][..words];
                decode_tile_words(stored, self.k as usize, self.table, &mut t);
                for r in 0..16 {
                    w[(i * 16 + r) * self.out_f + j * 16..][..16]
                        .copy_from_slice(&t[r * 16..][..16]);
                }
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::reconstruct;
    use crate::Codebook;
    use half::f16;

    /// Band order round-trips, and the band product equals x times the reconstructed weight.
    #[test]
    fn band_product_matches_the_reconstruction() {
        for (k, cb) in [
            (2u32, Codebook::Mul1),
            (3, Codebook::Inst3),
            (5, Codebook::Mcg),
        ] {
            let (in_f, out_f) = (256, 384);
            let mut s = 0x9e37_79b9u32 ^ k;
            let trellis: Vec<i16> = (0..in_f / 16 * out_f / 16 * 16 * k as usize)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    s as i16
                })
                .collect();
            let bands = to_bands(&trellis, in_f, out_f, k);
            assert_eq!(from_bands(&bands, in_f, out_f, k), trellis);
            let suh: Vec<f16> = (0..in_f)
                .map(|i| f16::from_f32(if i % 3 == 0 { -0.02 } else { 0.03 }))
                .collect();
            let svh: Vec<f16> = (0..out_f)
                .map(|i| f16::from_f32(0.5 + (i % 5) as f32 * 0.25))
                .collect();
            let (su, sv): (Vec<f32>, Vec<f32>) = (
                suh.iter().map(|v| v.to_f32()).collect(),
                svh.iter().map(|v| v.to_f32()).collect(),
            );
            let view = BandView {
                in_f,
                out_f,
                k,
                words: &bands,
                suh: &su,
                svh: &sv,
                table: cb.shared_table(),
            };
            let w = reconstruct(&trellis, &suh, &svh, k, cb);
            let n = 3;
            let x: Vec<f32> = (0..n * in_f)
                .map(|i| ((i * 37 % 19) as f32 - 9.0) / 9.0)
                .collect();
            let mut y = vec![0f32; n * out_f];
            view.matmul(&x, n, &mut y);
            for r in 0..n {
                for o in 0..out_f {
                    let want: f64 = (0..in_f)
                        .map(|i| x[r * in_f + i] as f64 * w[i * out_f + o] as f64)
                        .sum();
                    let got = y[r * out_f + o] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "k{k} r{r} o{o}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
