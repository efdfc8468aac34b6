//! GPTQ on a real weight (layer 0 `q_proj` of the shared Llama model) with correlated
//! synthetic activations `X = Z·A` (so `H` is far from the identity), and on
//! hand-made Hessians for the edge cases.

use llmq_calib::gptq::{gptq_quantize, rtn_quantize, GptqConfig, GptqError, HessianAccumulator};
use llmq_hfquant::IntQuantized;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

fn shared() -> PathBuf {
    std::env::var_os("LLMQ_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(1e-12..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The real weight, or a synthetic stand-in when the shared model is not there.
fn real_weight() -> (Vec<f32>, usize, usize) {
    let p = shared().join("models/llama/model.safetensors");
    if p.exists() {
        let m = llmq_formats::safetensors::SafetensorsModel::open(&p).unwrap();
        let name = "model.layers.0.self_attn.q_proj.weight";
        let info = m.info(name).unwrap();
        let (o, i) = (info.shape[0], info.shape[1]);
        return (m.f32(name).unwrap(), o, i);
    }
    eprintln!("note: {} missing, using a random weight", p.display());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let w = (0..256 * 256)
        .map(|_| gauss(&mut rng) as f32 * 0.05)
        .collect();
    (w, 256, 256)
}

/// `H = 2/n XᵀX` for `X = Z·A` (`n` tokens), with column `j` of `X` scaled by
/// `col_scale(j)`.
fn correlated_hessian(
    n_in: usize,
    n_tok: usize,
    seed: u64,
    col_scale: impl Fn(usize) -> f64,
) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a: Vec<f64> = (0..n_in * n_in).map(|_| gauss(&mut rng)).collect();
    let mut acc = HessianAccumulator::new(n_in);
    let mut x = vec![0.0f32; 64 * n_in];
    let mut z = vec![0.0f64; n_in];
    for _ in 0..n_tok / 64 {
        for t in 0..64 {
            z.iter_mut().for_each(|v| *v = gauss(&mut rng));
            for j in 0..n_in {
                let mut s = 0.0;
                for (k, zk) in z.iter().enumerate() {
                    s += zk * a[k * n_in + j];
                }
                x[t * n_in + j] = (s * col_scale(j) / (n_in as f64).sqrt()) as f32;
            }
        }
        acc.add(&x, 64);
    }
    acc.finish()
}

/// `tr((W − Ŵ) H (W − Ŵ)ᵀ)`.
fn proxy_loss(w: &[f32], wq: &[f32], h: &[f64], out: usize, n: usize) -> f64 {
    let mut total = 0.0;
    let mut d = vec![0.0f64; n];
    for o in 0..out {
        for j in 0..n {
            d[j] = (w[o * n + j] - wq[o * n + j]) as f64;
        }
        for i in 0..n {
            let hi = &h[i * n..(i + 1) * n];
            let s: f64 = hi.iter().zip(&d).map(|(a, b)| a * b).sum();
            total += d[i] * s;
        }
    }
    total
}

fn cfg(bits: u8, gs: Option<usize>) -> GptqConfig {
    GptqConfig {
        bits,
        group_size: gs,
        ..Default::default()
    }
}

fn check_g_idx(q: &IntQuantized) {
    q.validate().unwrap();
    let ng = q.n_groups();
    match (&q.g_idx, q.group_size) {
        (Some(g), Some(gs)) => {
            assert_eq!(g.len(), q.in_features);
            let mut per = vec![0usize; ng];
            for &x in g {
                assert!((x as usize) < ng, "g_idx {x} >= {ng}");
                per[x as usize] += 1;
            }
            for (k, &c) in per.iter().enumerate() {
                let want = gs.min(q.in_features - k * gs);
                assert_eq!(c, want, "group {k} has {c} columns, want {want}");
            }
        }
        (Some(g), None) => assert!(g.iter().all(|&x| x == 0)),
        (None, _) => {}
    }
    assert_eq!(q.scales.len(), q.out_features * ng);
    assert!(q.q.iter().all(|&v| (v as u32) < (1 << q.bits)));
}

/// 2·loss must equal `tr(Δ H_damped Δᵀ)` exactly in exact arithmetic (with
/// `H⁻¹ = UᵀU`, `W − Q = E·U`); this checks the block updates, the permutation and
/// `g_idx` together, since `Q` here comes from `IntQuantized::dequantize`.
fn check_loss_identity(w: &[f32], h: &[f64], out: usize, n: usize, r: &llmq_calib::GptqResult) {
    let mut hd = h.to_vec();
    let mut w0 = w.to_vec();
    for i in 0..n {
        if hd[i * n + i] == 0.0 {
            hd[i * n + i] = 1.0;
            for o in 0..out {
                w0[o * n + i] = 0.0;
            }
        }
    }
    let mean = (0..n).map(|i| hd[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        hd[i * n + i] += r.damp_percent * mean;
    }
    let t = proxy_loss(&w0, &r.quantized.dequantize(), &hd, out, n);
    let rel = (t - 2.0 * r.loss).abs() / t.max(1e-30);
    assert!(
        rel < 2e-3,
        "tr(ΔHΔᵀ) = {t}, 2·loss = {}, rel {rel}",
        2.0 * r.loss
    );
}

#[test]
fn gptq_beats_rtn_on_a_real_weight() {
    let (w, out, n) = real_weight();
    let h = correlated_hessian(n, 1024, 1, |j| 0.3 + 2.0 * ((j * 7919) % 97) as f64 / 97.0);
    for bits in [4u8, 3] {
        for desc_act in [false, true] {
            let c = GptqConfig {
                desc_act,
                ..cfg(bits, Some(128))
            };
            let r = gptq_quantize("q_proj", &w, out, n, &h, &c).unwrap();
            check_g_idx(&r.quantized);
            check_loss_identity(&w, &h, out, n, &r);
            let g = proxy_loss(&w, &r.quantized.dequantize(), &h, out, n);
            let rtn = rtn_quantize(&w, out, n, bits, Some(128), true);
            let rl = proxy_loss(&w, &rtn.dequantize(), &h, out, n);
            eprintln!(
                "{bits}-bit g128 desc_act={desc_act}: proxy GPTQ {g:.4} RTN {rl:.4} (ratio {:.3})",
                g / rl
            );
            assert!(g < 0.9 * rl, "GPTQ {g} not below RTN {rl}");
        }
    }
}

#[test]
fn act_order_helps_when_the_diagonal_varies() {
    let (w, out, n) = real_weight();
    // a few input channels 30x louder than the rest (outlier features)
    let h = correlated_hessian(n, 1024, 2, |j| {
        if j % 37 == 5 {
            30.0
        } else {
            1.0 + (j % 5) as f64 * 0.2
        }
    });
    for (bits, gs) in [(4u8, Some(128)), (3, Some(64)), (4, None)] {
        let plain = gptq_quantize("q_proj", &w, out, n, &h, &cfg(bits, gs)).unwrap();
        let ao = GptqConfig {
            desc_act: true,
            ..cfg(bits, gs)
        };
        let act = gptq_quantize("q_proj", &w, out, n, &h, &ao).unwrap();
        let st = GptqConfig {
            static_groups: true,
            ..ao.clone()
        };
        let stat = gptq_quantize("q_proj", &w, out, n, &h, &st).unwrap();
        for r in [&plain, &act, &stat] {
            check_g_idx(&r.quantized);
            check_loss_identity(&w, &h, out, n, r);
        }
        let (lp, la, ls) = (
            proxy_loss(&w, &plain.quantized.dequantize(), &h, out, n),
            proxy_loss(&w, &act.quantized.dequantize(), &h, out, n),
            proxy_loss(&w, &stat.quantized.dequantize(), &h, out, n),
        );
        eprintln!("{bits}-bit {gs:?}: plain {lp:.4} act-order {la:.4} act-order+static {ls:.4}");
        assert!(la <= lp, "act-order {la} worse than plain {lp}");
        if let (Some(g), Some(gs)) = (&stat.quantized.g_idx, gs) {
            assert!(g.iter().enumerate().all(|(i, &x)| x as usize == i / gs));
        }
    }
}

#[test]
fn identity_hessian_gives_rtn_exactly() {
    let (w, out, n) = real_weight();
    let mut h = vec![0.0f32; n * n];
    for i in 0..n {
        h[i * n + i] = 1.0;
    }
    for bits in [2u8, 3, 4, 8] {
        for gs in [Some(32), Some(64), Some(128), None] {
            for sym in [true, false] {
                for desc_act in [false, true] {
                    let c = GptqConfig {
                        bits,
                        group_size: gs,
                        sym,
                        desc_act,
                        ..Default::default()
                    };
                    let r = gptq_quantize("x", &w, out, n, &h, &c).unwrap();
                    let rtn = rtn_quantize(&w, out, n, bits, gs, sym);
                    let g = &r.quantized;
                    assert_eq!(g.q, rtn.q, "{bits} {gs:?} {sym} {desc_act}");
                    assert_eq!(g.scales, rtn.scales);
                    assert_eq!(g.zeros, rtn.zeros);
                    assert_eq!(g.dequantize(), rtn.dequantize());
                    if !sym {
                        assert!(g.zeros.iter().all(|&z| (z as u32) < (1 << bits)));
                    } else {
                        assert!(g.zeros.iter().all(|&z| z == 1 << (bits - 1)));
                    }
                }
            }
        }
    }
}

#[test]
fn singular_hessian_with_duplicate_and_dead_columns() {
    let (w, out, n) = real_weight();
    // 64 tokens < 256 inputs: rank-deficient; column 3 duplicates column 2;
    // columns 10 and 200 never active
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut x: Vec<f32> = (0..64 * n).map(|_| gauss(&mut rng) as f32).collect();
    for t in 0..64 {
        x[t * n + 3] = x[t * n + 2];
        x[t * n + 10] = 0.0;
        x[t * n + 200] = 0.0;
    }
    let mut acc = HessianAccumulator::new(n);
    acc.add(&x, 64);
    let h = acc.finish();
    for desc_act in [false, true] {
        let c = GptqConfig {
            desc_act,
            ..cfg(4, Some(128))
        };
        let r = gptq_quantize("q_proj", &w, out, n, &h, &c).unwrap();
        check_g_idx(&r.quantized);
        check_loss_identity(&w, &h, out, n, &r);
        let dq = r.quantized.dequantize();
        for o in 0..out {
            assert_eq!(dq[o * n + 10], 0.0);
            assert_eq!(dq[o * n + 200], 0.0);
        }
        assert!(dq.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn bad_hessians_give_clear_errors() {
    let (w, out, n) = real_weight();
    let mut h = vec![0.0f64; n * n];
    for i in 0..n {
        h[i * n + i] = 1.0;
    }
    h[5 * n + 7] = f64::NAN;
    let e = gptq_quantize(
        "model.layers.0.self_attn.q_proj",
        &w,
        out,
        n,
        &h,
        &cfg(4, Some(128)),
    )
    .unwrap_err();
    assert!(matches!(e, GptqError::NonFinite { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("model.layers.0.self_attn.q_proj") && msg.contains("Hessian"),
        "{msg}"
    );

    // negative definite: no dampening helps
    let neg: Vec<f64> = (0..n * n)
        .map(|k| if k % (n + 1) == 0 { -1.0 } else { 0.0 })
        .collect();
    let e = gptq_quantize("blk.3.ffn_down", &w, out, n, &neg, &cfg(4, Some(128))).unwrap_err();
    assert!(matches!(e, GptqError::NotPositiveDefinite { .. }), "{e}");
    assert!(e.to_string().contains("blk.3.ffn_down"), "{e}");

    // slightly indefinite: the retry with 10x dampening succeeds
    let mut ind = vec![0.0f64; n * n];
    for i in 0..n {
        ind[i * n + i] = 1.0;
    }
    ind[17 * n + 17] = -0.05;
    let r = gptq_quantize("x", &w, out, n, &ind, &cfg(4, Some(128))).unwrap();
    assert!((r.damp_percent - 0.1).abs() < 1e-12, "{}", r.damp_percent);

    // wrong shapes
    assert!(gptq_quantize("x", &w, out, n, &ind[..n], &cfg(4, Some(128))).is_err());
    assert!(gptq_quantize("x", &w, out, n, &ind, &cfg(5, Some(128))).is_err());
}

#[test]
fn all_bit_widths_and_group_sizes_run() {
    let (w, out, n) = real_weight();
    let h = correlated_hessian(n, 512, 4, |_| 1.0);
    for bits in [2u8, 3, 4, 8] {
        for gs in [Some(32), Some(64), Some(128), None] {
            for sym in [true, false] {
                let c = GptqConfig {
                    bits,
                    group_size: gs,
                    sym,
                    desc_act: bits == 3,
                    ..Default::default()
                };
                let r = gptq_quantize("x", &w, out, n, &h, &c).unwrap();
                check_g_idx(&r.quantized);
                check_loss_identity(&w, &h, out, n, &r);
                let g = proxy_loss(&w, &r.quantized.dequantize(), &h, out, n);
                let rl = proxy_loss(
                    &w,
                    &rtn_quantize(&w, out, n, bits, gs, sym).dequantize(),
                    &h,
                    out,
                    n,
                );
                assert!(g < rl, "{bits} {gs:?} {sym}: GPTQ {g} RTN {rl}");
            }
        }
    }
}

#[test]
fn hessian_accumulator_matches_direct_formula() {
    let n = 40;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x: Vec<f32> = (0..1100 * n).map(|_| gauss(&mut rng) as f32).collect();
    let mut acc = HessianAccumulator::new(n);
    acc.add(&x[..700 * n], 700); // crosses the internal 512-token chunk
    acc.add(&x[700 * n..], 400);
    assert_eq!(acc.n_tokens(), 1100);
    let h = acc.finish();
    for i in 0..n {
        for j in 0..n {
            let mut s = 0.0f64;
            for t in 0..1100 {
                s += x[t * n + i] as f64 * x[t * n + j] as f64;
            }
            let want = 2.0 * s / 1100.0;
            assert!((h[i * n + j] - want).abs() < 1e-9 * want.abs().max(1.0));
        }
    }
}

fn read_raw<T: Copy>(p: &Path, from: fn(&[u8]) -> T, size: usize) -> Vec<T> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(size)
        .map(from)
        .collect()
}

/// Compares with `tests/gptq_reference.py`, a line-by-line NumPy transcription of
/// AutoGPTQ's `fasterquant` (same f16-scale and f64-Cholesky changes as ours). Needs
/// python3 with NumPy (`scripts/test.sh` installs it).
#[test]
fn matches_the_numpy_transcription_of_autogptq() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with numpy is needed: `python3 -m pip install numpy`"
    );
    let (w, out, n) = real_weight();
    let h = correlated_hessian(n, 1024, 5, |j| {
        if j % 37 == 5 {
            30.0
        } else {
            1.0 + (j % 5) as f64 * 0.2
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("w.f32"),
        w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(
        d.join("h.f64"),
        h.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gptq_reference.py");
    for (bits, gs, sym, act, stat) in [
        (4u8, Some(128usize), true, false, false),
        (4, Some(32), false, false, false),
        (3, Some(64), true, true, false),
        (4, Some(128), false, true, true),
        (2, None, false, false, false),
        (8, Some(64), true, true, false),
    ] {
        let c = GptqConfig {
            bits,
            group_size: gs,
            sym,
            desc_act: act,
            static_groups: stat,
            ..Default::default()
        };
        let r = gptq_quantize("q_proj", &w, out, n, &h, &c).unwrap();
        let o = std::process::Command::new("python3")
            .arg(&script)
            .arg(d)
            .args([out, n, bits as usize].map(|v| v.to_string()))
            .arg(gs.map(|g| g as i64).unwrap_or(-1).to_string())
            .args([sym, act, stat].map(|b| if b { "1" } else { "0" }))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rq = std::fs::read(d.join("ref_q.u8")).unwrap();
        let rs: Vec<f32> = read_raw(
            &d.join("ref_scale.f32"),
            |b| f32::from_le_bytes(b.try_into().unwrap()),
            4,
        );
        let rz: Vec<f32> = read_raw(
            &d.join("ref_zero.f32"),
            |b| f32::from_le_bytes(b.try_into().unwrap()),
            4,
        );
        let rg: Vec<i32> = read_raw(
            &d.join("ref_gidx.i32"),
            |b| i32::from_le_bytes(b.try_into().unwrap()),
            4,
        );
        let rl = f64::from_le_bytes(
            std::fs::read(d.join("ref_loss.f64")).unwrap()[..8]
                .try_into()
                .unwrap(),
        );
        let q = &r.quantized;
        let ng = q.n_groups();
        let differ = q.q.iter().zip(&rq).filter(|(a, b)| a != b).count();
        // scale/zero: reference is [out, n_groups] too
        let mut param_differ = 0;
        for k in 0..out * ng {
            if q.scales[k].to_f32() != rs[k] || q.zeros[k] as f32 != rz[k] {
                param_differ += 1;
            }
        }
        let g_ok = (0..n).all(|i| q.group_of(i) as i32 == rg[i]);
        let rel = (r.loss - rl).abs() / rl;
        eprintln!(
            "{bits}-bit gs {gs:?} sym {sym} act {act} static {stat}: codes differ {differ}/{} ({:.4}%), params differ {param_differ}/{}, loss ours {:.5} ref {rl:.5} (rel {rel:.2e}), g_idx equal {g_ok}",
            q.q.len(),
            100.0 * differ as f64 / q.q.len() as f64,
            out * ng,
            r.loss
        );
        assert!(g_ok, "g_idx differs from the reference");
        assert!(
            differ as f64 <= 0.002 * q.q.len() as f64,
            "{differ} codes differ"
        );
        assert!(param_differ as f64 <= 0.01 * (out * ng) as f64);
        assert!(rel < 1e-3, "loss {} vs reference {rl}", r.loss);
    }
}

/// The lazy batch update is a reordering of the same arithmetic: block sizes 1, 128
/// and "all columns" give the same codes up to f32 rounding. (Per-channel only: with
/// groups, the reference computes a group's parameters from the weights as of the
/// start of its block, so the block size legitimately matters there.)
#[test]
fn block_size_does_not_change_the_result() {
    let (w, out, n) = real_weight();
    let h = correlated_hessian(n, 512, 6, |_| 1.0);
    let run = |bs| {
        let c = GptqConfig {
            block_size: bs,
            desc_act: true,
            ..cfg(4, None)
        };
        gptq_quantize("x", &w, out, n, &h, &c).unwrap()
    };
    let (a, b, c) = (run(1), run(128), run(4096));
    for other in [&a, &c] {
        let differ = b
            .quantized
            .q
            .iter()
            .zip(&other.quantized.q)
            .filter(|(x, y)| x != y)
            .count();
        eprintln!(
            "codes differing from block size 128: {differ}, loss {} vs {}",
            other.loss, b.loss
        );
        assert!(
            differ as f64 <= 0.002 * b.quantized.q.len() as f64,
            "{differ}"
        );
        assert!((other.loss - b.loss).abs() < 1e-3 * b.loss);
    }
}

/// Our RTN baseline (GPTQ's quantizer without error feedback) is the same quantizer as
/// `llmq_hfquant::rtn`, so "GPTQ with H = I equals RTN" holds for that one too.
#[test]
fn rtn_baseline_equals_llmq_hfquant_rtn() {
    let (w, out, n) = real_weight();
    for bits in [2u8, 3, 4, 8] {
        for gs in [Some(32), Some(128), None] {
            for sym in [true, false] {
                let ours = rtn_quantize(&w, out, n, bits, gs, sym);
                let theirs = llmq_hfquant::rtn::quantize_rtn(
                    &w,
                    out,
                    n,
                    &llmq_hfquant::rtn::RtnConfig {
                        bits,
                        group_size: gs,
                        symmetric: sym,
                    },
                )
                .unwrap();
                assert_eq!(ours, theirs, "{bits} {gs:?} {sym}");
            }
        }
    }
}
