//! GPTQ: post-training quantization of a linear layer's weight with second-order error
//! compensation (Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training
//! Quantization for Generative Pre-trained Transformers", arXiv 2210.17323, Algorithm 1).
//!
//! Given `W` (`[out, in]`) and the layer-input Hessian `H = 2/n · XᵀX` (`[in, in]`),
//! columns are quantized one at a time and the rounding error of each is spread over
//! the columns not yet quantized through the upper Cholesky factor `U` of `H⁻¹`
//! (`H⁻¹ = UᵀU`): `err = (w − q)/U_ii`, `W[:, j] −= err · U_ij` for `j > i`. Updates
//! inside a block of 128 columns are applied at once; the rest of the matrix gets them
//! lazily, one matrix product per block (the paper's "lazy batch updates").
//!
//! Details follow the reference implementation (`gptq.py` of IST-DASLab/gptq, AutoGPTQ
//! and GPTQModel), so results can be compared with it:
//! * dead inputs (`H_ii = 0`) get `H_ii = 1` and a zero weight column;
//! * dampening `damp_percent · mean(diag H)` is added to the diagonal; when the
//!   Cholesky factorisation still fails the dampening is multiplied by 10 until
//!   `max_damp_percent`, then a [`GptqError::NotPositiveDefinite`] names the tensor;
//! * act-order (`desc_act`) processes columns by descending `H_ii`; `g_idx` then maps
//!   every original column to its group;
//! * with groups, a group's min-max parameters are computed when its first column is
//!   reached, from the weights as they stand at the start of the current 128-column
//!   block (as the reference reads `W`, not the in-block working copy); with
//!   `static_groups` all of them come up front from the unpermuted weight;
//! * per-channel parameters (no groups) come from the weight before dead columns are
//!   zeroed;
//! * the min-max quantizer: `xmin = min(0, min w)`, `xmax = max(0, max w)`; symmetric:
//!   `xmax = max(|xmin|, xmax)` and `xmin = −xmax` if `xmin < 0`, zero `2^(bits−1)`;
//!   asymmetric zero `round(−xmin/scale)`; `scale = (xmax − xmin)/maxq`; `q =
//!   clamp(round(w/scale) + zero, 0, maxq)` with round-half-to-even.
//!
//! Differences: scales are rounded to f16 *before* `q` is computed, so the integers
//! match the f16 scales stored in checkpoints; the Cholesky work is done in f64 (the
//! column updates in f32, like the reference). `U` is obtained from one Cholesky
//! factorisation of the index-reversed `H` (`JHJ = L̃L̃ᵀ` gives `U = J·L̃⁻¹·J`), which
//! is the same unique factor the reference gets from `cholesky(cholesky_inverse(
//! cholesky(H)), upper=True)`, with half the work.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use half::f16;
use llmq_hfquant::{rtn, IntQuantized};
use rayon::prelude::*;
use std::borrow::Cow;

/// GPTQ settings (names as in AutoGPTQ's `BaseQuantizeConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqConfig {
    /// 2, 3, 4 or 8.
    pub bits: u8,
    /// Columns per group; `None` = per output channel.
    pub group_size: Option<usize>,
    /// Symmetric (zero point `2^(bits−1)`) or asymmetric.
    pub sym: bool,
    /// Act-order: process columns by descending Hessian diagonal.
    pub desc_act: bool,
    /// Compute every group's parameters up front from the unpermuted weight.
    pub static_groups: bool,
    /// Dampening as a fraction of the mean Hessian diagonal (0.01 = 1%).
    pub damp_percent: f64,
    /// Largest dampening tried (×10 per retry) before giving up.
    pub max_damp_percent: f64,
    /// Columns per lazy-update block.
    pub block_size: usize,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            bits: 4,
            group_size: Some(128),
            sym: true,
            desc_act: false,
            static_groups: false,
            damp_percent: 0.01,
            max_damp_percent: 10.0,
            block_size: 128,
        }
    }
}

/// What [`gptq_quantize`] returns.
#[derive(Debug, Clone)]
pub struct GptqResult {
    pub quantized: IntQuantized,
    /// The reference's `Losses.sum()`: `Σ (w − q)² / (2·U_ii²)`.
    pub loss: f64,
    /// The dampening that gave a positive-definite `H` (≥ the configured one).
    pub damp_percent: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum GptqError {
    #[error("invalid GPTQ config: {0}")]
    Config(String),
    #[error("tensor '{tensor}': {why}")]
    Shape { tensor: String, why: String },
    #[error("tensor '{tensor}': the {what} holds NaN or infinite values")]
    NonFinite { tensor: String, what: &'static str },
    #[error("tensor '{tensor}': Hessian is not positive definite even with dampening {damp_percent} x mean(diag H) (pivot {column} failed); collect more calibration data or raise damp_percent")]
    NotPositiveDefinite {
        tensor: String,
        damp_percent: f64,
        column: usize,
    },
}

/// Min-max parameters of one (row, group).
#[derive(Debug, Clone, Copy)]
struct Params {
    scale: f16,
    zero: u8,
}

/// The shared min-max grid ([`llmq_hfquant::rtn::group_params`]) of `vals`.
fn find_params(vals: &[f32], bits: u8, sym: bool) -> Params {
    let (scale, zero) = rtn::group_params(vals, bits, sym);
    Params { scale, zero }
}

/// Code of `x` and its dequantized value.
#[inline]
fn quantize(x: f32, p: Params, maxq: u32) -> (u8, f32) {
    let q = rtn::quantize_value(x, p.scale, p.zero, maxq as u8);
    (q, p.scale.to_f32() * (q as f32 - p.zero as f32))
}

fn check_config(cfg: &GptqConfig) -> Result<(), GptqError> {
    if !matches!(cfg.bits, 2 | 3 | 4 | 8) {
        return Err(GptqError::Config(format!(
            "bits {} (2, 3, 4 or 8)",
            cfg.bits
        )));
    }
    if cfg.group_size == Some(0) {
        return Err(GptqError::Config("group_size 0".into()));
    }
    if cfg.block_size == 0 {
        return Err(GptqError::Config("block_size 0".into()));
    }
    if !(cfg.damp_percent.is_finite() && cfg.damp_percent > 0.0) {
        return Err(GptqError::Config(format!(
            "damp_percent {} (must be > 0)",
            cfg.damp_percent
        )));
    }
    Ok(())
}

/// Round-to-nearest with the same min-max quantizer (and f16 scales) GPTQ uses, no
/// error feedback: the baseline GPTQ improves on (and equals for `H = I`).
pub fn rtn_quantize(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    bits: u8,
    group_size: Option<usize>,
    sym: bool,
) -> IntQuantized {
    let cfg = rtn::RtnConfig {
        bits,
        group_size,
        symmetric: sym,
    };
    rtn::quantize_rtn(w, out_features, in_features, &cfg).expect("weight shape and bits")
}

/// Upper-triangular `U` (row-major, f32) with `(H + damp·I)⁻¹ = UᵀU`, or the failing
/// pivot.
pub(crate) fn upper_cholesky_of_inverse(h: &[f64], n: usize, damp: f64) -> Result<Vec<f32>, usize> {
    // R = J (H + damp I) J, lower triangle only
    let mut r = Mat::<f64>::zeros(n, n);
    for i in 0..n {
        for j in 0..=i {
            let (a, b) = (n - 1 - i, n - 1 - j);
            let mut v = h[a * n + b];
            if i == j {
                v += damp;
            }
            r[(i, j)] = v;
        }
    }
    let par = Par::Seq;
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(
        r.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(
        |faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index }| n - 1 - index,
    )?;
    for i in 0..n {
        for j in i + 1..n {
            r[(i, j)] = 0.0;
        }
    }
    let mut linv = Mat::<f64>::zeros(n, n);
    faer::linalg::triangular_inverse::invert_lower_triangular(linv.as_mut(), r.as_ref(), par);
    drop(r);
    let mut u = vec![0.0f32; n * n];
    for i in 0..n {
        for j in i..n {
            let v = linv[(n - 1 - i, n - 1 - j)];
            if !v.is_finite() || (i == j && v <= 0.0) {
                return Err(i);
            }
            u[i * n + j] = v as f32;
        }
        if u[i * n + i] <= 0.0 {
            return Err(i);
        }
    }
    Ok(u)
}

/// The element types a Hessian can be given in.
pub trait HessianElem: Copy + Into<f64> {
    /// The values as f64 without a copy, when they are f64 already.
    fn as_f64(_h: &[Self]) -> Option<&[f64]> {
        None
    }
}

impl HessianElem for f32 {}

impl HessianElem for f64 {
    fn as_f64(h: &[f64]) -> Option<&[f64]> {
        Some(h)
    }
}

/// Quantize `w` (`[out_features, in_features]`, row-major) with GPTQ against the
/// Hessian `h` (`[in, in]`, row-major, f32 or f64; an f64 one is read in place, and
/// copied only where dead inputs or act-order change it). `name` is used in errors.
pub fn gptq_quantize<T: HessianElem>(
    name: &str,
    w: &[f32],
    out_features: usize,
    in_features: usize,
    h: &[T],
    cfg: &GptqConfig,
) -> Result<GptqResult, GptqError> {
    check_config(cfg)?;
    let n = in_features;
    let shape_err = |why: String| GptqError::Shape {
        tensor: name.to_string(),
        why,
    };
    if n == 0 || out_features == 0 {
        return Err(shape_err(format!("empty weight [{out_features}, {n}]")));
    }
    if w.len() != out_features * n {
        return Err(shape_err(format!(
            "weight has {} values, [{out_features}, {n}] needs {}",
            w.len(),
            out_features * n
        )));
    }
    if h.len() != n * n {
        return Err(shape_err(format!(
            "Hessian has {} values, [{n}, {n}] needs {}",
            h.len(),
            n * n
        )));
    }
    if !w.iter().all(|v| v.is_finite()) {
        return Err(GptqError::NonFinite {
            tensor: name.to_string(),
            what: "weight",
        });
    }
    let mut hd: Cow<'_, [f64]> = match T::as_f64(h) {
        Some(h) => Cow::Borrowed(h),
        None => Cow::Owned(h.iter().map(|&v| v.into()).collect()),
    };
    if !hd.iter().all(|v| v.is_finite()) {
        return Err(GptqError::NonFinite {
            tensor: name.to_string(),
            what: "Hessian",
        });
    }
    let maxq = (1u32 << cfg.bits) - 1;
    let rows = out_features;
    let mut w: Vec<f32> = w.to_vec();

    // per-channel parameters: from the weight before dead columns are zeroed
    let channel_params: Option<Vec<Params>> = match cfg.group_size {
        None => Some(
            (0..rows)
                .map(|o| find_params(&w[o * n..(o + 1) * n], cfg.bits, cfg.sym))
                .collect(),
        ),
        Some(_) => None,
    };

    // dead inputs
    for i in 0..n {
        if hd[i * n + i] == 0.0 {
            hd.to_mut()[i * n + i] = 1.0;
            for o in 0..rows {
                w[o * n + i] = 0.0;
            }
        }
    }

    let gs = cfg.group_size.unwrap_or(n);
    let n_groups = match cfg.group_size {
        Some(g) => n.div_ceil(g),
        None => 1,
    };
    let static_params: Option<Vec<Params>> = match cfg.group_size {
        Some(g) if cfg.static_groups => {
            let mut v = Vec::with_capacity(rows * n_groups);
            for o in 0..rows {
                for k in 0..n_groups {
                    let cols = k * g..((k + 1) * g).min(n);
                    v.push(find_params(
                        &w[o * n + cols.start..o * n + cols.end],
                        cfg.bits,
                        cfg.sym,
                    ));
                }
            }
            Some(v)
        }
        _ => None,
    };

    // act-order permutation (stable for equal diagonals)
    let perm: Vec<usize> = if cfg.desc_act {
        let mut p: Vec<usize> = (0..n).collect();
        p.sort_by(|&a, &b| hd[b * n + b].total_cmp(&hd[a * n + a]));
        p
    } else {
        (0..n).collect()
    };
    let identity = !cfg.desc_act;
    let (mut wp, hp) = if identity {
        (w, hd)
    } else {
        let mut wp = vec![0.0f32; rows * n];
        for o in 0..rows {
            for (p, &c) in perm.iter().enumerate() {
                wp[o * n + p] = w[o * n + c];
            }
        }
        let mut hp = vec![0.0f64; n * n];
        for (i, &pi) in perm.iter().enumerate() {
            for (j, &pj) in perm.iter().enumerate() {
                hp[i * n + j] = hd[pi * n + pj];
            }
        }
        drop(hd);
        (wp, Cow::Owned(hp))
    };

    // dampening with retries
    let mean_diag = (0..n).map(|i| hp[i * n + i]).sum::<f64>() / n as f64;
    let mut damp_percent = cfg.damp_percent;
    let u = loop {
        match upper_cholesky_of_inverse(&hp, n, damp_percent * mean_diag) {
            Ok(u) => break u,
            Err(column) => {
                let next = damp_percent * 10.0;
                if next > cfg.max_damp_percent * (1.0 + 1e-9) {
                    return Err(GptqError::NotPositiveDefinite {
                        tensor: name.to_string(),
                        damp_percent,
                        column: perm[column],
                    });
                }
                damp_percent = next;
            }
        }
    };
    drop(hp);

    let mut qp = vec![0u8; rows * n];
    let mut scales = vec![f16::ZERO; rows * n_groups];
    let mut zeros = vec![0u8; rows * n_groups];
    if let Some(cp) = &channel_params {
        for (o, p) in cp.iter().enumerate() {
            scales[o] = p.scale;
            zeros[o] = p.zero;
        }
    }
    if let Some(sp) = &static_params {
        for (i, p) in sp.iter().enumerate() {
            scales[i] = p.scale;
            zeros[i] = p.zero;
        }
    }
    let mut cur = vec![
        Params {
            scale: f16::ONE,
            zero: 0
        };
        rows
    ];
    if let Some(cp) = &channel_params {
        cur.copy_from_slice(cp);
    }

    let bs = cfg.block_size;
    let mut loss = 0.0f64;
    let mut w1 = vec![0.0f32; rows * bs];
    let mut err1 = vec![0.0f32; rows * bs];
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + bs).min(n);
        let count = i2 - i1;
        for o in 0..rows {
            w1[o * count..(o + 1) * count].copy_from_slice(&wp[o * n + i1..o * n + i2]);
        }
        for i in 0..count {
            let col = i1 + i;
            if cfg.group_size.is_some() {
                if let Some(sp) = &static_params {
                    let k = perm[col] / gs;
                    for (o, c) in cur.iter_mut().enumerate() {
                        *c = sp[o * n_groups + k];
                    }
                } else if col % gs == 0 {
                    let k = col / gs;
                    let end = (col + gs).min(n);
                    for (o, c) in cur.iter_mut().enumerate() {
                        let p = find_params(&wp[o * n + col..o * n + end], cfg.bits, cfg.sym);
                        *c = p;
                        scales[o * n_groups + k] = p.scale;
                        zeros[o * n_groups + k] = p.zero;
                    }
                }
            }
            let urow = &u[col * n + i1..col * n + i2];
            let d = urow[i];
            let mut block_loss = 0.0f64;
            for o in 0..rows {
                let row = &mut w1[o * count..(o + 1) * count];
                let x = row[i];
                let (q, dq) = quantize(x, cur[o], maxq);
                qp[o * n + col] = q;
                let e = (x - dq) / d;
                block_loss += (e as f64) * (e as f64);
                err1[o * count + i] = e;
                for (wj, &uj) in row[i + 1..].iter_mut().zip(&urow[i + 1..]) {
                    *wj -= e * uj;
                }
            }
            loss += block_loss / 2.0;
        }
        if i2 < n {
            let rest = n - i2;
            // (faer 0.24.4's `from_row_major_slice_with_stride_mut` builds a
            // column-major view, so build the transpose of a column-major one)
            let dst = MatMut::from_column_major_slice_with_stride_mut(&mut wp[i2..], rest, rows, n)
                .transpose_mut();
            let lhs = MatRef::from_row_major_slice(&err1[..rows * count], rows, count);
            let rhs = MatRef::from_row_major_slice_with_stride(&u[i1 * n + i2..], count, rest, n);
            faer::linalg::matmul::matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::Seq);
        }
        i1 = i2;
    }

    // back to the original column order
    let (q, g_idx) = if identity {
        (qp, None)
    } else {
        let mut q = vec![0u8; rows * n];
        for o in 0..rows {
            for (p, &c) in perm.iter().enumerate() {
                q[o * n + c] = qp[o * n + p];
            }
        }
        let mut g = vec![0u32; n];
        if cfg.group_size.is_some() {
            for (p, &c) in perm.iter().enumerate() {
                g[c] = if cfg.static_groups { c / gs } else { p / gs } as u32;
            }
        }
        (q, Some(g))
    };

    Ok(GptqResult {
        quantized: IntQuantized {
            bits: cfg.bits,
            group_size: cfg.group_size,
            symmetric: cfg.sym,
            out_features: rows,
            in_features: n,
            q,
            scales,
            zeros,
            g_idx,
        },
        loss,
        damp_percent,
    })
}

/// Accumulates `H = 2/n · XᵀX` over calibration tokens, in f64, then finishes it in
/// its own storage (no second `[in, in]` copy).
#[derive(Debug, Clone)]
pub struct HessianAccumulator {
    cols: usize,
    /// column-major `XᵀX` while accumulating; row-major `2/n · XᵀX` once finished
    xtx: Vec<f64>,
    n_tokens: u64,
    finished: bool,
}

impl HessianAccumulator {
    /// For a layer with `in_features` inputs.
    pub fn new(in_features: usize) -> Self {
        HessianAccumulator {
            cols: in_features,
            xtx: vec![0.0; in_features * in_features],
            n_tokens: 0,
            finished: false,
        }
    }

    /// Tokens seen so far.
    pub fn n_tokens(&self) -> u64 {
        self.n_tokens
    }

    /// Add `n_tokens` rows of layer input `x` (`[n_tokens, in_features]`, row-major).
    /// Panics once the Hessian is finished.
    pub fn add(&mut self, x: &[f32], n_tokens: usize) {
        assert!(!self.finished, "tokens added to a finished Hessian");
        assert_eq!(
            x.len(),
            n_tokens * self.cols,
            "activations are not [n_tokens, in_features]"
        );
        const CHUNK: usize = 512;
        let c = self.cols;
        for start in (0..n_tokens).step_by(CHUNK) {
            let m = CHUNK.min(n_tokens - start);
            let chunk = &x[start * c..(start + m) * c];
            let xm = Mat::<f64>::from_fn(m, c, |i, j| chunk[i * c + j] as f64);
            // Column blocks of a fixed width in parallel: every entry is computed the
            // same way whatever the thread count (deterministic results).
            const COLS: usize = 64;
            let xm = &xm;
            let blocks: Vec<(usize, MatMut<'_, f64>)> = {
                let mut v = Vec::new();
                let mut rest = MatMut::from_column_major_slice_mut(&mut self.xtx, c, c);
                let mut start = 0;
                while start < c {
                    let w = COLS.min(c - start);
                    let (left, right) = rest.split_at_col_mut(w);
                    v.push((start, left));
                    rest = right;
                    start += w;
                }
                v
            };
            blocks.into_par_iter().for_each(|(start, dst)| {
                let w = dst.ncols();
                faer::linalg::matmul::matmul(
                    dst,
                    Accum::Add,
                    xm.transpose(),
                    xm.as_ref().subcols(start, w),
                    1.0f64,
                    Par::Seq,
                );
            });
        }
        self.n_tokens += n_tokens as u64;
    }

    /// Turns the sums into `2/n · XᵀX` (`[in, in]`, row-major; all zeros if no token
    /// was added) where they are stored; a second call does nothing.
    pub fn finish_in_place(&mut self) {
        if self.finished {
            return;
        }
        let c = self.cols;
        let f = if self.n_tokens == 0 {
            0.0
        } else {
            2.0 / self.n_tokens as f64
        };
        // column-major → row-major: entry (i, j) moves from j·c+i to i·c+j
        for i in 0..c {
            for j in i + 1..c {
                self.xtx.swap(i * c + j, j * c + i);
            }
        }
        self.xtx.iter_mut().for_each(|v| *v *= f);
        self.finished = true;
    }

    /// The finished Hessian (`[in, in]`, row-major), once [`Self::finish_in_place`]
    /// has run.
    pub fn finished(&self) -> Option<&[f64]> {
        self.finished.then_some(self.xtx.as_slice())
    }

    /// `2/n · XᵀX` (`[in, in]`, row-major); all zeros if no token was added.
    pub fn finish(mut self) -> Vec<f64> {
        self.finish_in_place();
        self.xtx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_is_the_upper_cholesky_factor_of_the_inverse() {
        let n = 7;
        // H = B Bᵀ + I
        let b: Vec<f64> = (0..n * n)
            .map(|k| ((k * 37 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let u = upper_cholesky_of_inverse(&h, n, 0.0).unwrap();
        // (UᵀU) H = I
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0f64;
                for k in 0..n {
                    let utu: f64 = (0..n)
                        .map(|m| u[m * n + i] as f64 * u[m * n + k] as f64)
                        .sum();
                    s += utu * h[k * n + j];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-4, "({i},{j}) = {s}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
    }
}
