//! Perplexity and KL-divergence over a token stream, with two window protocols:
//!
//! - `Golden` (the shared models' protocol, `shared/models/README.md`): consecutive
//!   non-overlapping windows of `max_length` tokens, the last shorter window kept when it
//!   has at least 2 tokens, no BOS, every token but each window's first scored.
//! - `LlamaCpp` (llama.cpp `tools/perplexity/perplexity.cpp`, `perplexity()`): the text
//!   is tokenized with BOS, cut into `len / n_ctx` whole chunks, each chunk's first token
//!   replaced by BOS when the vocabulary adds one, and only the second half of each chunk
//!   scored (positions `n_ctx/2 .. n_ctx-1` predicting the next token), so numbers
//!   compare with `llama-perplexity -c n_ctx`.
//!
//! With a base model, the same windows also run through it and each scored position adds
//! `KL(P_base ‖ P_model)` and whether both pick the same top token; logits are consumed
//! window by window, never held for the whole text.

use crate::backend::Backend;
use crate::error::{EngineError, Result};
use crate::model::{KvCache, Logits, Model, SeqStep};

/// How windows are cut and scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PplProtocol {
    Golden,
    LlamaCpp,
}

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct PplOptions {
    pub protocol: PplProtocol,
    /// window (golden) or context (llama.cpp) length
    pub max_length: usize,
    /// evaluate at most this many windows
    pub max_windows: Option<usize>,
    /// windows run together in one forward pass
    pub batch_size: usize,
    /// BOS to put first in each chunk (llama.cpp protocol, when the vocab adds BOS)
    pub bos: Option<u32>,
}

/// KL-divergence statistics against a base model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KlStats {
    pub mean_kl: f64,
    pub max_kl: f64,
    pub same_top_rate: f64,
    pub base_nll: f64,
    pub base_perplexity: f64,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct PplResult {
    pub nll: f64,
    pub perplexity: f64,
    /// standard error of the mean NLL
    pub nll_std_err: f64,
    pub scored_tokens: usize,
    pub windows: usize,
    pub kl: Option<KlStats>,
}

/// A window: its tokens and the first position whose prediction is scored.
struct Window {
    tokens: Vec<u32>,
    first_scored: usize,
}

fn windows(tokens: &[u32], o: &PplOptions) -> Result<Vec<Window>> {
    let n = o.max_length;
    if n < 2 {
        return Err(EngineError::Source(format!(
            "--max-length {n} is too short: a window needs at least 2 tokens"
        )));
    }
    let mut w: Vec<Window> = match o.protocol {
        PplProtocol::Golden => tokens
            .chunks(n)
            .filter(|c| c.len() >= 2)
            .map(|c| Window {
                tokens: c.to_vec(),
                first_scored: 0,
            })
            .collect(),
        PplProtocol::LlamaCpp => {
            if tokens.len() < 2 * n {
                return Err(EngineError::Source(format!(
                    "the dataset has {} tokens; llama.cpp's protocol needs at least 2 x {n} (use a smaller --max-length or more text)",
                    tokens.len()
                )));
            }
            tokens
                .chunks_exact(n)
                .map(|c| {
                    let mut t = c.to_vec();
                    if let Some(b) = o.bos {
                        t[0] = b;
                    }
                    Window {
                        tokens: t,
                        first_scored: n / 2,
                    }
                })
                .collect()
        }
    };
    if w.is_empty() {
        return Err(EngineError::Source(format!(
            "the dataset has {} tokens: not enough for one window of at least 2 tokens",
            tokens.len()
        )));
    }
    if let Some(m) = o.max_windows {
        w.truncate(m.max(1));
    }
    Ok(w)
}

/// Number of windows `perplexity` will evaluate.
pub fn count_windows(tokens: &[u32], o: &PplOptions) -> Result<usize> {
    windows(tokens, o).map(|w| w.len())
}

/// log-softmax of a row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = row.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln();
    row.iter().map(|x| *x as f64 - m - s).collect()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] {
            best = i;
        }
    }
    best
}

fn run_windows<B: Backend>(model: &Model<B>, batch: &[&Window]) -> Result<Vec<Vec<f32>>> {
    let mut caches: Vec<KvCache<B>> = batch
        .iter()
        .map(|w| KvCache::new(model, w.tokens.len()))
        .collect();
    let mut steps: Vec<SeqStep<B>> = caches
        .iter_mut()
        .zip(batch)
        .map(|(c, w)| SeqStep {
            tokens: &w.tokens,
            cache: c,
            logits: Logits::All,
        })
        .collect();
    model.forward(&mut steps)
}

/// Evaluate `model` (and optionally compare with `base`, on the same backend) on
/// `tokens`. `progress` is called with (windows done, windows total).
pub fn perplexity<B: Backend>(
    model: &Model<B>,
    base: Option<&Model<B>>,
    tokens: &[u32],
    o: &PplOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplResult> {
    perplexity_across(model, base, tokens, o, progress)
}

/// [`perplexity`] with `base` on another backend (the GPU against the CPU).
pub fn perplexity_across<B: Backend, C: Backend>(
    model: &Model<B>,
    base: Option<&Model<C>>,
    tokens: &[u32],
    o: &PplOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplResult> {
    if let Some(b) = base {
        if b.n_vocab() != model.n_vocab() {
            return Err(EngineError::Source(format!(
                "the base model's vocabulary ({}) differs from the model's ({})",
                b.n_vocab(),
                model.n_vocab()
            )));
        }
    }
    let ws = windows(tokens, o)?;
    let v = model.n_vocab();
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let (mut kl_sum, mut kl_max, mut same, mut base_sum) = (0.0f64, 0.0f64, 0usize, 0.0f64);
    let total = ws.len();
    progress(0, total);
    let mut done = 0;
    for batch in ws.chunks(o.batch_size.max(1)) {
        let refs: Vec<&Window> = batch.iter().collect();
        let logits = run_windows(model, &refs)?;
        let base_logits = match base {
            Some(b) => Some(run_windows(b, &refs)?),
            None => None,
        };
        for (k, w) in batch.iter().enumerate() {
            let l = &logits[k];
            for t in w.first_scored..w.tokens.len() - 1 {
                let row = &l[t * v..(t + 1) * v];
                let target = w.tokens[t + 1] as usize;
                let lp = log_softmax(row);
                let nll = -lp[target];
                sum += nll;
                sum2 += nll * nll;
                count += 1;
                if let Some(bl) = &base_logits {
                    let brow = &bl[k][t * v..(t + 1) * v];
                    let blp = log_softmax(brow);
                    let kl: f64 = blp
                        .iter()
                        .zip(&lp)
                        .map(|(b, q)| b.exp() * (b - q))
                        .sum::<f64>()
                        .max(0.0);
                    kl_sum += kl;
                    kl_max = kl_max.max(kl);
                    base_sum += -blp[target];
                    if argmax(brow) == argmax(row) {
                        same += 1;
                    }
                }
            }
        }
        done += batch.len();
        progress(done, total);
    }
    let nll = sum / count as f64;
    let var = (sum2 / count as f64 - nll * nll).max(0.0);
    Ok(PplResult {
        nll,
        perplexity: nll.exp(),
        nll_std_err: (var / (count.max(2) - 1) as f64).sqrt(),
        scored_tokens: count,
        windows: total,
        kl: base.map(|_| KlStats {
            mean_kl: kl_sum / count as f64,
            max_kl: kl_max,
            same_top_rate: same as f64 / count as f64,
            base_nll: base_sum / count as f64,
            base_perplexity: (base_sum / count as f64).exp(),
        }),
    })
}
