//! Incoherence processing of a weight before trellis coding (QuIP#, Tseng et al. arXiv 2402.04396
//! §3; exllamav3 `quantize.py regularize`, `sample_scale_tiles`, `g_scale_search_batch`).
//!
//! On a weight `W` (in × out): divide each column by `sv = sign · rms(column)/mean`, apply the
//! 128-Hadamard on the right, divide each row by `su = sign · rms(row)/(−1.24371088)`, apply the
//! 128-Hadamard on the left. A global scale `g` is then searched on sampled tiles (a wrapped
//! diagonal of width 3 plus the tiles of highest and lowest RMS): a coarse grid 0.1…1.9 (step 0.2)
//! on every third tile, a fine grid of step 0.075 around its best on all of them, and a parabola
//! through the best three. `W·g` is quantized and `su/g` stored.

use crate::bitstream::{TENSOR_CORE_PERM, TILE};
use crate::codebook::CODEBOOK_SCALE;
use crate::hadamard::{had_left, had_right};
use crate::viterbi::Encoder;

/// The weight in the trellis's domain and the vectors that undo the transform.
#[derive(Debug, Clone)]
pub struct Regularized {
    /// Row-major `in × out`, ready for LDLQ.
    pub weight: Vec<f32>,
    /// Input-side vector (stored as `suh`).
    pub su: Vec<f32>,
    /// Output-side vector (stored as `svh`).
    pub sv: Vec<f32>,
    /// The global scale folded into `su`.
    pub g_scale: f32,
}

/// How much LDLQ's error feedback inflates the tiles the encoder sees, per K (exllamav3's
/// measured `LDLQ_DRIFT`); the scale search samples are multiplied by it.
pub fn ldlq_drift(k: u32) -> f32 {
    match k {
        1 => 1.08,
        2 => 1.018,
        3 => 1.004,
        _ => 1.0,
    }
}

fn rms_cols(w: &[f32], cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let mut s = vec![0f64; cols];
    for row in w.chunks_exact(cols) {
        for (a, &x) in s.iter_mut().zip(row) {
            *a += (x as f64) * (x as f64);
        }
    }
    s.iter().map(|v| (v / rows as f64).sqrt() as f32).collect()
}

/// Regularizes `w` (row-major `in × out`, both multiples of 128) with the given ±1 signs.
/// `out_scales` applies output-channel scales (exllamav3's `--out_scales always`).
pub fn regularize(
    mut w: Vec<f32>,
    su_sign: &[f32],
    sv_sign: &[f32],
    out_scales: bool,
    sample_cap: Option<usize>,
    enc: &Encoder,
) -> Regularized {
    let (in_f, out_f) = (su_sign.len(), sv_sign.len());
    let mut out_ch = rms_cols(&w, out_f);
    let mean = out_ch.iter().map(|&x| x as f64).sum::<f64>() / out_f as f64;
    let zero: Vec<bool> = if mean > 1e-30 {
        out_ch.iter_mut().for_each(|x| *x /= mean as f32);
        out_ch.iter().map(|x| x.abs() < 1e-30).collect()
    } else {
        vec![true; out_f]
    };
    let mut sv: Vec<f32> = sv_sign.to_vec();
    if out_scales {
        for ((s, c), &z) in sv.iter_mut().zip(&out_ch).zip(&zero) {
            *s = *s * if z { 0.1 } else { *c } + 1e-10;
        }
    }
    for row in w.chunks_exact_mut(out_f) {
        for (x, s) in row.iter_mut().zip(&sv) {
            *x /= s;
        }
    }
    for (s, &z) in sv.iter_mut().zip(&zero) {
        if z {
            *s = 0.0;
        }
    }
    had_right(&mut w, out_f);
    let mut su = vec![0f32; in_f];
    for ((s, row), &sign) in su.iter_mut().zip(w.chunks_exact_mut(out_f)).zip(su_sign) {
        let ms = row.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / out_f as f64;
        let mut r = ms.sqrt() as f32;
        if r.abs() < 1e-30 {
            r = 0.1;
        }
        *s = (sign as f64 * r as f64 / -CODEBOOK_SCALE) as f32 + 1e-10;
        row.iter_mut().for_each(|x| *x /= *s);
    }
    had_left(&mut w, out_f);
    let g = g_scale_search(&w, out_f, sample_cap, enc);
    w.iter_mut().for_each(|x| *x *= g);
    su.iter_mut().for_each(|x| *x /= g);
    Regularized {
        weight: w,
        su,
        sv,
        g_scale: g,
    }
}

/// The sampled tiles (stream order), as exllamav3's `sample_scale_tiles(width = 3)`.
pub fn sample_tiles(w: &[f32], out_f: usize) -> Vec<f32> {
    let (tk, tn) = (w.len() / out_f / 16, out_f / 16);
    let width = 3;
    let tile = |i: usize, j: usize| -> [f32; TILE] {
        let mut t = [0f32; TILE];
        for (s, &p) in t.iter_mut().zip(TENSOR_CORE_PERM.iter()) {
            let (r, c) = (p as usize / 16, p as usize % 16);
            *s = w[(i * 16 + r) * out_f + j * 16 + c];
        }
        t
    };
    let diag = tk.max(tn);
    let mut picks: Vec<(usize, usize)> = (0..diag * width)
        .map(|x| {
            let (i, ww) = (x / width, x % width);
            (i % tk, (i + ww) % tn)
        })
        .collect();
    let mut ms: Vec<(f64, usize)> = (0..tk * tn)
        .map(|f| {
            let (i, j) = (f / tn, f % tn);
            let mut s = 0f64;
            for r in 0..16 {
                for c in 0..16 {
                    s += (w[(i * 16 + r) * out_f + j * 16 + c] as f64).powi(2);
                }
            }
            (s / 256.0, f)
        })
        .collect();
    let num_x = (diag * width / 16).max(8).min(ms.len().div_ceil(2));
    ms.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let hi: Vec<usize> = ms[..num_x].iter().map(|x| x.1).collect();
    let lo: Vec<usize> = ms[ms.len() - num_x..].iter().rev().map(|x| x.1).collect();
    picks.extend(hi.iter().chain(&lo).map(|&f| (f / tn, f % tn)));
    picks.iter().flat_map(|&(i, j)| tile(i, j)).collect()
}

/// Mean squared error of quantizing `tiles·s`, measured back in the unscaled domain.
fn eval(enc: &Encoder, tiles: &[f32], s: f32) -> f64 {
    let scaled: Vec<f32> = tiles.iter().map(|x| x * s).collect();
    let (_, q) = enc.encode_tiles(&scaled);
    q.iter()
        .zip(tiles)
        .map(|(q, t)| ((q / s - t) as f64).powi(2))
        .sum::<f64>()
        / tiles.len() as f64
}

/// The global scale for a regularized weight; `cap` keeps at most that many sampled tiles, evenly
/// spaced over the sample.
pub fn g_scale_search(w: &[f32], out_f: usize, cap: Option<usize>, enc: &Encoder) -> f32 {
    let drift = ldlq_drift(enc.k());
    let mut tiles: Vec<f32> = sample_tiles(w, out_f).iter().map(|x| x * drift).collect();
    let n = tiles.len() / TILE;
    if let Some(c) = cap.filter(|&c| c > 0 && c < n) {
        tiles = (0..c)
            .flat_map(|i| tiles[i * n / c * TILE..][..TILE].to_vec())
            .collect();
    }
    let sub: Vec<f32> = tiles
        .chunks_exact(TILE)
        .step_by(3)
        .flatten()
        .copied()
        .collect();
    let coarse: Vec<f32> = (0..10).map(|i| 0.1 + 0.2 * i as f32).collect();
    let mse1: Vec<f64> = coarse.iter().map(|&s| eval(enc, &sub, s)).collect();
    let c = coarse[argmin(&mse1)];
    let step = 0.075f32;
    let fine: Vec<f32> = (0..5).map(|i| c + step * (i as f32 - 2.0)).collect();
    let mse2: Vec<f64> = fine.iter().map(|&s| eval(enc, &tiles, s)).collect();
    let best = argmin(&mse2);
    let mut offset = 0.0;
    if best > 0 && best < 4 {
        let (y0, y1, y2) = (mse2[best - 1], mse2[best], mse2[best + 1]);
        let denom = y0 - 2.0 * y1 + y2;
        if denom > 0.0 {
            offset = (0.5 * (y0 - y2) / denom).clamp(-0.5, 0.5);
        }
    }
    (fine[best] + offset as f32 * step).max(0.01)
}

fn argmin(v: &[f64]) -> usize {
    let mut b = 0;
    for (i, &x) in v.iter().enumerate() {
        if x < v[b] {
            b = i;
        }
    }
    b
}
