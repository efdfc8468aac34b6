//! One linear layer to EXL3 (exllamav3 `quantize.py quantize_exl3`, `finalize_capture_H`, `ldlq`):
//! pad both dimensions to 128, regularize the Hessian (`+ 0.025·mean(diag H)`, more on Cholesky
//! failure, up to 10 times), rotate it with the input signs and the 128-Hadamard, factor it
//! ([`crate::ldl`]), regularize the weight ([`crate::regularize`]), then LDLQ: 16-row strips from
//! the last to the first, each strip corrected by `Σ_{r below} L[r, strip]ᵀ·E[r]`, cut into 16×16
//! tiles and trellis-coded ([`crate::viterbi`]). Reports the proxy error `tr(EᵀHE)/tr(WᵀHW)` in
//! the rotated domain. Without a Hessian (no activations) `H = I`: tiles are coded independently.
//!
//! Not done (exllamav3 does it): the post-LDLQ refit of `su`/`sv` (`refit_scales`) and the
//! output-Hessian variants; signs come from ChaCha8 seeded per tensor, not torch's generator.

use crate::bitstream::{pack_tensor, TENSOR_CORE_PERM, TILE};
use crate::codebook::Codebook;
use crate::hadamard::{had_left, had_right, HAD};
use crate::ldl::block_ldl;
use crate::regularize::regularize;
use crate::viterbi::Encoder;
use crate::TrellisError;
use faer::{Accum, Mat, Par};
use half::f16;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Settings of one tensor's quantization.
#[derive(Debug, Clone)]
pub struct Exl3Config {
    /// Bits per weight, 1…8.
    pub k: u32,
    pub codebook: Codebook,
    /// Hessian damping as a share of its mean diagonal (exllamav3: 0.025).
    pub sigma_reg: f64,
    /// Output-channel scales (exllamav3's default `always`).
    pub out_scales: bool,
    /// Seed of the sign vectors (exllamav3 seeds with the module index).
    pub seed: u64,
    /// At most this many sampled tiles in the global scale search (`None`: exllamav3's sample,
    /// about 3·max(tiles_k, tiles_n); a cap trades search precision for CPU time).
    pub scale_sample_cap: Option<usize>,
}

impl Exl3Config {
    /// exllamav3's defaults at `k` bits.
    pub fn new(k: u32, codebook: Codebook, seed: u64) -> Exl3Config {
        Exl3Config {
            k,
            codebook,
            sigma_reg: 0.025,
            out_scales: true,
            seed,
            scale_sample_cap: None,
        }
    }
}

/// The stored tensors of one EXL3 linear, dimensions padded to 128.
#[derive(Debug, Clone, PartialEq)]
pub struct Exl3Linear {
    /// Padded input features.
    pub in_features: usize,
    /// Padded output features.
    pub out_features: usize,
    pub k: u32,
    pub codebook: Codebook,
    /// `(in/16, out/16, 16·k)` flattened.
    pub trellis: Vec<i16>,
    pub suh: Vec<f16>,
    pub svh: Vec<f16>,
    /// `tr(EᵀHE)/tr(WᵀHW)` in the rotated domain (`None` without a Hessian).
    pub proxy_err: Option<f64>,
    /// The global scale the search chose.
    pub g_scale: f32,
}

/// Rounds up to a multiple of 128.
pub fn pad128(n: usize) -> usize {
    n.div_ceil(HAD) * HAD
}

/// Quantizes a Hugging Face weight (`out × in`, row-major) with the Hessian of its input
/// (`in × in`, any positive scale; `None` for the uncalibrated path).
pub fn quantize_linear(
    weight: &[f32],
    out_f: usize,
    in_f: usize,
    hessian: Option<&[f64]>,
    cfg: &Exl3Config,
) -> Result<Exl3Linear, TrellisError> {
    if weight.len() != out_f * in_f {
        return Err(TrellisError::Shape {
            what: "weight".into(),
            expected: out_f * in_f,
            got: weight.len(),
        });
    }
    if let Some(h) = hessian {
        if h.len() != in_f * in_f {
            return Err(TrellisError::Shape {
                what: "hessian".into(),
                expected: in_f * in_f,
                got: h.len(),
            });
        }
    }
    let enc = Encoder::new(cfg.k, cfg.codebook)?;
    let (ip, op) = (pad128(in_f), pad128(out_f));
    let mut w = vec![0f32; ip * op];
    for o in 0..out_f {
        for i in 0..in_f {
            w[i * op + o] = weight[o * in_f + i];
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let su_sign: Vec<f32> = (0..ip)
        .map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 })
        .collect();
    let sv_sign: Vec<f32> = (0..op)
        .map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 })
        .collect();

    let h = hessian.and_then(|h| rotated_hessian(h, in_f, ip, &su_sign, cfg.sigma_reg));
    let reg = regularize(
        w,
        &su_sign,
        &sv_sign,
        cfg.out_scales,
        cfg.scale_sample_cap,
        &enc,
    );
    let (states, q, proxy) = match &h {
        Some((hr, l)) => {
            let (s, q) = ldlq(&reg.weight, op, Some(l), &enc);
            let p = proxy_err(&reg.weight, &q, op, hr);
            (s, q, Some(p))
        }
        None => {
            let (s, q) = ldlq(&reg.weight, op, None, &enc);
            (s, q, None)
        }
    };
    drop(q);
    Ok(Exl3Linear {
        in_features: ip,
        out_features: op,
        k: cfg.k,
        codebook: cfg.codebook,
        trellis: pack_tensor(&states, cfg.k),
        suh: reg.su.iter().map(|&x| f16::from_f32(x)).collect(),
        svh: reg.sv.iter().map(|&x| f16::from_f32(x)).collect(),
        proxy_err: proxy,
        g_scale: reg.g_scale,
    })
}

/// Damped, sign-flipped, Hadamard-rotated Hessian (padded to `ip`) and its `L − I`; `None` when
/// it carries no signal (mean diagonal < 1e-20 or not finite).
fn rotated_hessian(
    h: &[f64],
    n: usize,
    ip: usize,
    su: &[f32],
    sigma: f64,
) -> Option<(Mat<f64>, Mat<f64>)> {
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / ip as f64;
    if !mean.is_finite() || mean < 1e-20 {
        return None;
    }
    let mut m = vec![0f32; ip * ip];
    for i in 0..n {
        for j in 0..n {
            m[i * ip + j] = h[i * n + j] as f32;
        }
    }
    for i in 0..ip {
        m[i * ip + i] += (sigma * mean) as f32;
        for j in 0..ip {
            m[i * ip + j] *= su[i] * su[j];
        }
    }
    had_right(&mut m, ip);
    had_left(&mut m, ip);
    let mut hm = Mat::<f64>::from_fn(ip, ip, |i, j| m[i * ip + j] as f64);
    for _ in 0..=10 {
        if let Ok(l) = block_ldl(&hm) {
            return Some((hm, l));
        }
        for i in 0..ip {
            hm[(i, i)] += 2.0 * sigma * mean;
        }
    }
    None
}

/// LDLQ over 16-row strips; returns the states `[tile_k][tile_n][256]` and the quantized weight.
fn ldlq(w: &[f32], op: usize, l: Option<&Mat<f64>>, enc: &Encoder) -> (Vec<u16>, Vec<f32>) {
    let ip = w.len() / op;
    let (tk, tn) = (ip / 16, op / 16);
    let mut q = vec![0f32; ip * op];
    let mut states = vec![0u16; ip * op];
    let l32 = l.map(|l| Mat::<f32>::from_fn(ip, ip, |i, j| l[(i, j)] as f32));
    let mut corr = Mat::<f32>::zeros(ip, op);
    let mut tiles = vec![0f32; 16 * op];
    for b in (0..tk).rev() {
        for j in 0..tn {
            for (t, &p) in TENSOR_CORE_PERM.iter().enumerate() {
                let (r, c) = (b * 16 + p as usize / 16, j * 16 + p as usize % 16);
                tiles[j * TILE + t] = w[r * op + c] + corr[(r, c)];
            }
        }
        let (s, v): (Vec<Vec<u16>>, Vec<Vec<f32>>) = tiles
            .par_chunks(TILE)
            .map_init(Default::default, |sc, t| {
                let e = enc.encode(t, sc);
                (e.states, e.values)
            })
            .unzip();
        let mut err = Mat::<f32>::zeros(16, op);
        for j in 0..tn {
            states[(b * tn + j) * TILE..][..TILE].copy_from_slice(&s[j]);
            for (t, &p) in TENSOR_CORE_PERM.iter().enumerate() {
                let (r, c) = (p as usize / 16, j * 16 + p as usize % 16);
                q[(b * 16 + r) * op + c] = v[j][t];
                err[(r, c)] = w[(b * 16 + r) * op + c] - v[j][t];
            }
        }
        if let (Some(l), true) = (&l32, b > 0) {
            faer::linalg::matmul::matmul(
                corr.as_mut().submatrix_mut(0, 0, b * 16, op),
                Accum::Add,
                l.as_ref().submatrix(b * 16, 0, 16, b * 16).transpose(),
                err.as_ref(),
                1.0,
                Par::Seq,
            );
        }
    }
    (states, q)
}

/// `tr(EᵀHE)/tr(WᵀHW)` with `E = W − Q`.
fn proxy_err(w: &[f32], q: &[f32], op: usize, h: &Mat<f64>) -> f64 {
    let ip = w.len() / op;
    let wm = Mat::<f64>::from_fn(ip, op, |i, j| w[i * op + j] as f64);
    let em = Mat::<f64>::from_fn(ip, op, |i, j| (w[i * op + j] - q[i * op + j]) as f64);
    let quad = |x: &Mat<f64>| -> f64 {
        let hx = h * x;
        let mut s = 0.0;
        for i in 0..ip {
            for j in 0..op {
                s += hx[(i, j)] * x[(i, j)];
            }
        }
        s
    };
    quad(&em) / quad(&wm).max(1e-8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::reconstruct;

    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    /// A 96×120 weight (padded to 128×128) with correlated inputs: the stored tensors decode to
    /// a weight close to the original, and LDLQ's proxy error beats coding without feedback.
    #[test]
    fn round_trip_and_ldlq_helps() {
        let (out_f, in_f) = (96, 120);
        let mut r = lcg(5);
        let w: Vec<f32> = (0..out_f * in_f).map(|_| r() * 0.1).collect();
        // inputs with a strong shared component → an ill-conditioned Hessian
        let n = 256;
        let x: Vec<f32> = (0..n * in_f).map(|_| r()).collect();
        let base: Vec<f32> = (0..n).map(|_| r() * 4.0).collect();
        let mut h = vec![0f64; in_f * in_f];
        for t in 0..n {
            for i in 0..in_f {
                let xi = (x[t * in_f + i] + base[t]) as f64;
                for j in 0..in_f {
                    h[i * in_f + j] += xi * (x[t * in_f + j] + base[t]) as f64;
                }
            }
        }
        let cfg = Exl3Config::new(5, Codebook::Mul1, 1);
        let q = quantize_linear(&w, out_f, in_f, Some(&h), &cfg).unwrap();
        assert_eq!((q.in_features, q.out_features), (128, 128));
        assert_eq!(q.trellis.len(), 8 * 8 * 16 * 5);
        let wq = reconstruct(&q.trellis, &q.suh, &q.svh, q.k, q.codebook);
        let (mut num, mut den) = (0f64, 0f64);
        for o in 0..out_f {
            for i in 0..in_f {
                let a = w[o * in_f + i] as f64;
                num += (a - wq[i * 128 + o] as f64).powi(2);
                den += a * a;
            }
        }
        // padding decodes to (near) zero too
        let pad: f64 = (in_f..128).map(|i| (wq[i * 128] as f64).powi(2)).sum();
        assert!(num / den < 0.01, "relative error {}", num / den);
        assert!(pad < 1e-3 * den, "padding {pad}");
        let ldlq_err = q.proxy_err.unwrap();
        assert!(ldlq_err < 0.01, "proxy {ldlq_err}");
        // the same tensor with H = I quantized, measured with the real H
        let plain = quantize_linear(&w, out_f, in_f, None, &cfg).unwrap();
        let wp = reconstruct(&plain.trellis, &plain.suh, &plain.svh, 5, Codebook::Mul1);
        let hq = |wx: &[f32]| -> f64 {
            let mut s = 0.0;
            for o in 0..out_f {
                let e: Vec<f64> = (0..in_f)
                    .map(|i| (w[o * in_f + i] - wx[i * 128 + o]) as f64)
                    .collect();
                for i in 0..in_f {
                    for j in 0..in_f {
                        s += e[i] * h[i * in_f + j] * e[j];
                    }
                }
            }
            s
        };
        eprintln!(
            "rel {} proxy {ldlq_err} ldlq {} plain {}",
            num / den,
            hq(&wq),
            hq(&wp)
        );
        assert!(
            hq(&wq) < 0.8 * hq(&wp),
            "LDLQ {} vs plain {}",
            hq(&wq),
            hq(&wp)
        );
    }
}
