//! EXL3 trellis-coded matrices ([`WeightType::Trellis`]; exllamav3 1.x, QTIP arXiv
//! 2406.11235): the Linear `y = W·x` with `Wᵀ = diag(suh)·H·Ŵ·H·diag(svh)` kept as its codes.
//! The bytes are `llmq_trellis::bands`' band order (16 rows per band, `cols·k/8` bytes per
//! row); [`TrellisSides`] holds `suh` (per column), `svh` (per row) and an optional output
//! order (llama's q/k row permutation, applied to the products because the output Hadamard
//! mixes rows). The product decodes tiles inside the GEMV (`llmq_trellis::bands::BandView`);
//! nothing is expanded to f32 except on request ([`WeightMatrix::to_f32`]).

use crate::error::KernelError;
use crate::tensor::{Bytes, WeightMatrix};
use crate::weight_type::{TrellisType, WeightType};
use half::f16;
use llmq_trellis::bands::{to_bands, BandView};
use llmq_trellis::hadamard::{had_left, had_right};
use llmq_trellis::Codebook;
use std::sync::Arc;

/// What a trellis matrix needs besides its codes.
#[derive(Clone, Debug, PartialEq)]
pub struct TrellisSides {
    /// input signs/scales (fp16 values), one per column
    pub suh: Vec<f32>,
    /// output signs/scales (fp16 values), one per row in the coded order
    pub svh: Vec<f32>,
    /// row `r` of the matrix is coded row `out_order[r]`; `None`: the natural order
    pub out_order: Option<Vec<u32>>,
}

impl TrellisSides {
    /// The sides of the matrix whose row `r` is this one's row `order[r]`.
    pub fn permuted(&self, order: &[usize]) -> TrellisSides {
        let cur = |r: usize| self.out_order.as_ref().map_or(r as u32, |o| o[r]);
        TrellisSides {
            suh: self.suh.clone(),
            svh: self.svh.clone(),
            out_order: Some(order.iter().map(|&r| cur(r)).collect()),
        }
    }
}

struct U16Owner(Vec<u16>);

impl crate::tensor::ByteOwner for U16Owner {
    fn owned_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl WeightMatrix {
    /// An EXL3 Linear from its stored tensors: `trellis` `(in/16, out/16, 16·k)`, `suh`
    /// `(in,)`, `svh` `(out,)`; the matrix is `[out, in]` (Hugging Face orientation).
    pub fn from_trellis(
        trellis: &[i16],
        suh: &[f16],
        svh: &[f16],
        k: u32,
        codebook: Codebook,
    ) -> Result<WeightMatrix, KernelError> {
        let (cols, rows) = (suh.len(), svh.len());
        let ty = TrellisType {
            k: k as u8,
            codebook,
        };
        let want = (1..=8).contains(&k) && cols.is_multiple_of(128) && rows.is_multiple_of(128);
        if !want || trellis.len() != cols / 16 * (rows / 16) * 16 * k as usize {
            return Err(KernelError::Layout(format!(
                "EXL3 trellis of {} words for {rows}x{cols} at K={k}",
                trellis.len()
            )));
        }
        let bands = to_bands(trellis, cols, rows, k);
        Ok(WeightMatrix {
            ty: WeightType::Trellis(ty),
            rows,
            cols,
            data: Bytes::whole(Arc::new(U16Owner(bands))),
            col_order: None,
            input_rotation: None,
            trellis: Some(Arc::new(TrellisSides {
                suh: suh.iter().map(|v| v.to_f32()).collect(),
                svh: svh.iter().map(|v| v.to_f32()).collect(),
                out_order: None,
            })),
        })
    }

    /// The band words of a trellis matrix (`rows/16` bands of `cols/16` tiles).
    pub fn trellis_words(&self) -> Vec<u16> {
        self.data
            .as_slice()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    }
}

fn view<'a>(w: &WeightMatrix, s: &'a TrellisSides, words: &'a [u16]) -> BandView<'a> {
    let WeightType::Trellis(t) = w.ty else {
        unreachable!("trellis sides on a {} matrix", w.ty.name())
    };
    BandView {
        in_f: w.cols,
        out_f: w.rows,
        k: t.k as u32,
        words,
        suh: &s.suh,
        svh: &s.svh,
        table: t.codebook.shared_table(),
    }
}

/// The words of `w` as u16 without a copy where the bytes are aligned.
fn with_words<R>(w: &WeightMatrix, f: impl FnOnce(&[u16]) -> R) -> R {
    match bytemuck::try_cast_slice::<u8, u16>(w.data.as_slice()) {
        Ok(words) => f(words),
        Err(_) => f(&w.trellis_words()),
    }
}

/// `y = x · Wᵀ` for `n` rows: the fused decode-and-multiply of `llmq_trellis::bands`.
pub(crate) fn matmul_trellis(w: &WeightMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    let s = w.trellis.as_ref().expect("a trellis matrix has its sides");
    with_words(w, |words| {
        let v = view(w, s, words);
        match &s.out_order {
            None => v.matmul(x, n, y),
            Some(order) => {
                let mut yc = vec![0f32; y.len()];
                v.matmul(x, n, &mut yc);
                for (dst, src) in y.chunks_exact_mut(w.rows).zip(yc.chunks_exact(w.rows)) {
                    for (d, &o) in dst.iter_mut().zip(order) {
                        *d = src[o as usize];
                    }
                }
            }
        }
    })
}

/// The matrix as f32, `[rows, cols]` row-major.
pub(crate) fn dense(w: &WeightMatrix, s: &TrellisSides) -> Vec<f32> {
    let (rows, cols) = (w.rows, w.cols);
    // Ŵ (cols × rows), then diag(su)·H·Ŵ·H·diag(sv)
    let mut m = with_words(w, |words| view(w, s, words).decode());
    had_left(&mut m, rows);
    for (row, su) in m.chunks_exact_mut(rows).zip(&s.suh) {
        row.iter_mut().for_each(|v| *v *= su);
    }
    had_right(&mut m, rows);
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        let src = s.out_order.as_ref().map_or(r, |o| o[r] as usize);
        let sv = s.svh[src];
        for c in 0..cols {
            out[r * cols + c] = m[c * rows + src] * sv;
        }
    }
    out
}

/// Rows `[start, start + n)`: whole 128-row blocks in natural order keep their codes;
/// other ranges are decoded to f32.
pub(crate) fn row_range(
    w: &WeightMatrix,
    s: &TrellisSides,
    start: usize,
    n: usize,
) -> WeightMatrix {
    if s.out_order.is_none() && start.is_multiple_of(128) && n.is_multiple_of(128) {
        let rb = w.row_bytes();
        let mut sub = w.clone();
        sub.rows = n;
        sub.data = w.data.slice(start * rb, n * rb);
        sub.trellis = Some(Arc::new(TrellisSides {
            suh: s.suh.clone(),
            svh: s.svh[start..start + n].to_vec(),
            out_order: None,
        }));
        return sub;
    }
    let d = dense(w, s);
    WeightMatrix::from_f32(n, w.cols, d[start * w.cols..(start + n) * w.cols].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmq_trellis::decode::reconstruct;

    fn case(k: u32, rows: usize, cols: usize) -> (Vec<i16>, Vec<f16>, Vec<f16>) {
        let mut s = 0x2545_f491u32 ^ (k * 77);
        let trellis = (0..rows / 16 * cols / 16 * 16 * k as usize)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as i16
            })
            .collect();
        let suh = (0..cols)
            .map(|i| f16::from_f32(if i % 3 == 0 { -0.05 } else { 0.04 }))
            .collect();
        let svh = (0..rows)
            .map(|i| f16::from_f32(0.5 + (i % 7) as f32 * 0.1))
            .collect();
        (trellis, suh, svh)
    }

    /// The fused product, the f32 decode, row permutations and block ranges all agree with
    /// `llmq_trellis::decode::reconstruct` (the load-time f32 expansion).
    #[test]
    fn fused_product_matches_the_f32_expansion() {
        for (k, cb) in [
            (2u32, Codebook::Mul1),
            (4, Codebook::Inst3),
            (6, Codebook::Mcg),
        ] {
            let (rows, cols) = (256, 384);
            let (t, suh, svh) = case(k, rows, cols);
            let w = WeightMatrix::from_trellis(&t, &suh, &svh, k, cb).unwrap();
            assert_eq!(w.row_bytes(), cols * k as usize / 8);
            // reconstruct is (in, out): transpose to [out, in]
            let r = reconstruct(&t, &suh, &svh, k, cb);
            let want: Vec<f32> = (0..rows * cols)
                .map(|i| r[(i % cols) * rows + i / cols])
                .collect();
            let got = w.to_f32();
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-6 * (1.0 + e.abs()), "{g} vs {e}");
            }
            let n = 3;
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 29 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let mut y = vec![0f32; n * rows];
            crate::matmul(&w, &x, n, &mut y);
            let check = |y: &[f32], wd: &[f32], rows: usize| {
                for i in 0..n {
                    for o in 0..rows {
                        let e: f64 = (0..cols)
                            .map(|c| x[i * cols + c] as f64 * wd[o * cols + c] as f64)
                            .sum();
                        let g = y[i * rows + o] as f64;
                        assert!(
                            (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                            "k{k} {o}: {g} vs {e}"
                        );
                    }
                }
            };
            check(&y, &want, rows);
            // a row order (llama's q/k permutation) applied to the products
            let order: Vec<usize> = (0..rows).map(|r| (r * 37 + 5) % rows).collect();
            let p = w.permute_rows(&order).unwrap();
            let pw: Vec<f32> = order
                .iter()
                .flat_map(|&r| want[r * cols..(r + 1) * cols].to_vec())
                .collect();
            crate::matmul(&p, &x, n, &mut y);
            check(&y, &pw, rows);
            assert_eq!(p.to_f32(), {
                let d = w.to_f32();
                order
                    .iter()
                    .flat_map(|&r| d[r * cols..(r + 1) * cols].to_vec())
                    .collect::<Vec<_>>()
            });
            // the second 128-row block keeps its codes, an unaligned range is decoded
            let b = w.row_range(128, 128);
            assert!(matches!(b.ty, WeightType::Trellis(_)));
            let mut yb = vec![0f32; n * 128];
            crate::matmul(&b, &x, n, &mut yb);
            check(&yb, &want[128 * cols..], 128);
            let u = w.row_range(3, 5);
            assert_eq!(u.to_f32(), w.to_f32()[3 * cols..8 * cols].to_vec());
        }
    }
}
