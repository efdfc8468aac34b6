//! Checks a model against the golden outputs transformers computed for it
//! (`golden.safetensors` next to the shared test models; protocol in
//! `shared/models/README.md`): per-position log-probabilities of the next token, argmax
//! wherever the golden top-1/top-2 margin exceeds a tolerance, the last position's full
//! logits, and 32 greedy tokens generated one at a time through the KV cache (compared
//! up to the first step whose golden margin is below the tolerance).

use crate::{KvCache, Logits, Model, SeqStep};
use llmq_formats::safetensors::SafetensorsModel;
use std::path::Path;

/// The ten shared test models (folder names).
pub const MODELS: [&str; 10] = [
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma3",
    "phi3",
    "mixtral",
    "qwen3-moe",
    "deepseek-v3",
    "glm4-moe-lite",
];

struct Golden {
    input_ids: Vec<Vec<u32>>,
    logprob: Vec<Vec<f32>>,
    argmax: Vec<Vec<u32>>,
    margin: Vec<Vec<f32>>,
    last_logits: Vec<Vec<f32>>,
    greedy: Vec<Vec<u32>>,
    greedy_margin: Vec<Vec<f32>>,
}

fn rows_i64(st: &SafetensorsModel, name: &str) -> Vec<Vec<u32>> {
    let v = st.get(name).unwrap();
    let cols = v.info.shape[1];
    let vals: Vec<u32> = v
        .bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    vals.chunks(cols).map(|c| c.to_vec()).collect()
}

fn rows_f32(st: &SafetensorsModel, name: &str) -> Vec<Vec<f32>> {
    let v = st.get(name).unwrap();
    let cols = v.info.shape[1];
    v.to_f32()
        .unwrap()
        .chunks(cols)
        .map(|c| c.to_vec())
        .collect()
}

fn golden(path: &Path) -> Golden {
    let st = SafetensorsModel::open(path).unwrap();
    Golden {
        input_ids: rows_i64(&st, "input_ids"),
        logprob: rows_f32(&st, "next_token_logprob"),
        argmax: rows_i64(&st, "argmax"),
        margin: rows_f32(&st, "argmax_margin"),
        last_logits: rows_f32(&st, "last_logits"),
        greedy: rows_i64(&st, "greedy"),
        greedy_margin: rows_f32(&st, "greedy_margin"),
    }
}

fn log_softmax_at(v: &[f32], i: usize) -> f64 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = v.iter().map(|x| (*x as f64 - m).exp()).sum();
    v[i] as f64 - m - s.ln()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Worst deviations of one model from its golden outputs.
#[derive(Debug)]
pub struct Report {
    pub max_logprob_err: f64,
    pub max_last_logit_err: f64,
    pub argmax_mismatch: usize,
    pub greedy_mismatch: usize,
}

/// Compare `model` with the goldens in `golden_path` (panics on unreadable goldens).
pub fn check_against_golden(model: &Model, golden_path: &Path, margin_tol: f32) -> Report {
    let g = golden(golden_path);
    let v = model.n_vocab();
    let mut caches: Vec<KvCache> = (0..3).map(|_| KvCache::new(model, 128)).collect();
    let mut steps: Vec<SeqStep> = caches
        .iter_mut()
        .zip(&g.input_ids)
        .map(|(c, ids)| SeqStep {
            tokens: ids,
            cache: c,
            logits: Logits::All,
        })
        .collect();
    let logits = model.forward(&mut steps).unwrap();
    let mut rep = Report {
        max_logprob_err: 0.0,
        max_last_logit_err: 0.0,
        argmax_mismatch: 0,
        greedy_mismatch: 0,
    };
    for (b, l) in logits.iter().enumerate().take(3) {
        for t in 0..64 {
            let row = &l[t * v..(t + 1) * v];
            if t < 63 {
                let lp = log_softmax_at(row, g.input_ids[b][t + 1] as usize);
                rep.max_logprob_err = rep.max_logprob_err.max((lp - g.logprob[b][t] as f64).abs());
            }
            if g.margin[b][t] > margin_tol && argmax(row) != g.argmax[b][t] {
                rep.argmax_mismatch += 1;
            }
        }
        let last = &l[63 * v..64 * v];
        for (a, e) in last.iter().zip(&g.last_logits[b]) {
            rep.max_last_logit_err = rep.max_last_logit_err.max((a - e).abs() as f64);
        }
    }
    // greedy with the KV cache, batch of 3, one token per step
    let mut caches: Vec<KvCache> = (0..3).map(|_| KvCache::new(model, 128)).collect();
    let mut next: Vec<u32> = {
        let mut steps: Vec<SeqStep> = caches
            .iter_mut()
            .zip(&g.input_ids)
            .map(|(c, ids)| SeqStep {
                tokens: &ids[..32],
                cache: c,
                logits: Logits::Last,
            })
            .collect();
        model
            .forward(&mut steps)
            .unwrap()
            .iter()
            .map(|l| argmax(l))
            .collect()
    };
    let mut live = [true; 3];
    for step in 0..32 {
        for b in 0..3 {
            if !live[b] {
                continue;
            }
            if g.greedy_margin[b][step] <= margin_tol {
                live[b] = false;
                continue;
            }
            if next[b] != g.greedy[b][step] {
                rep.greedy_mismatch += 1;
                live[b] = false;
            }
        }
        if step == 31 {
            break;
        }
        let toks: Vec<[u32; 1]> = next.iter().map(|t| [*t]).collect();
        let mut steps: Vec<SeqStep> = caches
            .iter_mut()
            .zip(&toks)
            .map(|(c, t)| SeqStep {
                tokens: t,
                cache: c,
                logits: Logits::Last,
            })
            .collect();
        next = model
            .forward(&mut steps)
            .unwrap()
            .iter()
            .map(|l| argmax(l))
            .collect();
    }
    rep
}
