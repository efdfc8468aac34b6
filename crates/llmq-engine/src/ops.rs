//! Element-wise and row-wise operations of the decoder, in f32: RMSNorm
//! (Zhang & Sennrich 2019), RoPE (Su et al. 2021; llama.cpp's NORM and NEOX pairings),
//! SiLU and tanh-approximated GELU, softmax, sigmoid.

use crate::hparams::RopeKind;

/// `x * w / sqrt(mean(x²) + eps)` for every row of `x` (rows of `w.len()` values).
pub fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_mut(d) {
        let ss: f64 = row.iter().map(|v| (*v as f64) * (*v as f64)).sum();
        let inv = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * inv * g;
        }
    }
}

/// RMSNorm into a new buffer.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    rms_norm_rows(&mut y, w, eps);
    y
}

/// Per-pair RoPE frequency settings beyond the base: the position divisor `scale`,
/// optional per-pair frequency divisors and the factor on cos/sin (the backend's `Rope`
/// documents the formula).
#[derive(Clone, Copy, Debug)]
pub struct RopeFreqScaling<'a> {
    pub scale: f32,
    pub freq_factors: Option<&'a [f32]>,
    pub attn_factor: f32,
}

/// Rotation angles' cos/sin for one position: `n_rot / 2` pairs; pair `i` turns by
/// `(pos / scale) · base^(-2i/n_rot) / freq_factors[i]`, cos and sin times `attn_factor`.
pub fn rope_table(pos: usize, n_rot: usize, base: f32, f: RopeFreqScaling<'_>) -> Vec<(f32, f32)> {
    let p = pos as f64 / f.scale as f64;
    (0..n_rot / 2)
        .map(|i| {
            let mut inv_freq = (base as f64).powf(-2.0 * i as f64 / n_rot as f64);
            if let Some(ff) = f.freq_factors {
                inv_freq /= ff[i] as f64;
            }
            let a = p * inv_freq;
            let (c, s) = (a.cos() as f32, a.sin() as f32);
            if f.attn_factor == 1.0 {
                (c, s)
            } else {
                (c * f.attn_factor, s * f.attn_factor)
            }
        })
        .collect()
}

/// Rotate the first `2 * table.len()` values of `v` (one head).
pub fn rope_apply(v: &mut [f32], table: &[(f32, f32)], kind: RopeKind) {
    let half = table.len();
    for (i, (c, s)) in table.iter().enumerate() {
        let (a, b) = match kind {
            RopeKind::Norm => (2 * i, 2 * i + 1),
            RopeKind::Neox => (i, i + half),
        };
        let (x0, x1) = (v[a], v[b]);
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (K * (x + 0.044715 * x * x * x)).tanh())
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// In-place softmax.
pub fn softmax(v: &mut [f32]) {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in v.iter_mut() {
        *x *= inv;
    }
}

/// In-place softmax whose denominator also takes `exp(sink)`: a logit without a value
/// (GPT-OSS's attention sinks), so the weights sum to less than one.
pub fn softmax_with_sink(v: &mut [f32], sink: f32) {
    let m = v.iter().copied().fold(sink, f32::max);
    let mut sum = (sink - m).exp();
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in v.iter_mut() {
        *x *= inv;
    }
}

/// `log_softmax(v)[i]`, computed in f64.
pub fn log_softmax_at(v: &[f32], i: usize) -> f64 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = v.iter().map(|x| (*x as f64 - m).exp()).sum();
    v[i] as f64 - m - s.ln()
}

/// `Σ a·b` (attention scores).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// `y += a·x`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_pairings_rotate_the_right_elements() {
        let plain = RopeFreqScaling {
            scale: 1.0,
            freq_factors: None,
            attn_factor: 1.0,
        };
        let t = rope_table(3, 4, 10000.0, plain);
        let mut a = [1.0, 0.0, 1.0, 0.0];
        rope_apply(&mut a, &t, RopeKind::Norm);
        // pair (0,1) rotated by 3 rad, pair (2,3) by 3/100 rad
        assert!((a[0] - 3f32.cos()).abs() < 1e-6 && (a[1] - 3f32.sin()).abs() < 1e-6);
        assert!((a[2] - 0.03f32.cos()).abs() < 1e-6);
        let mut b = [1.0, 1.0, 0.0, 0.0];
        rope_apply(&mut b, &t, RopeKind::Neox);
        assert!((b[0] - 3f32.cos()).abs() < 1e-6 && (b[2] - 3f32.sin()).abs() < 1e-6);
        assert!((b[3] - 0.03f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn norms_and_softmax() {
        let y = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
        let mut s = [1.0, 2.0, 3.0];
        softmax(&mut s);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6 && s[2] > s[1]);
        assert!((log_softmax_at(&[0.0, 0.0], 1) + 2f64.ln()).abs() < 1e-12);
    }
}
