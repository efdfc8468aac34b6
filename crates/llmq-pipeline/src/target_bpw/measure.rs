//! The measure stage of `--target-bpw`: for every group ([`super::groups`]) and every
//! candidate type, the KL-divergence `KL(P_orig ‖ P_q)` (nats per token, mean over
//! every position of the calibration windows) between the next-token distribution of
//! the original model and that of the model with **only that group** quantized to the
//! candidate (rounded through the same GGML quantizer and importance weights as the
//! output, then dequantized to f32; everything else at the source's precision).
//! Since the original's KL to itself is 0, this is the group's ΔKL at that type.
//! A candidate is a GGML type (GGUF) or a trellis K (EXL3, [`super::rounding`]).
//!
//! Streamed layer by layer: the original hidden states at the input of block `l` are
//! computed once, and a variant of a group in block `l` runs only blocks `l…L` from
//! them (embeddings: all blocks from its own lookup; head: only the head). The model
//! is loaded whole (memory-mapped) on the CPU; extra memory is two copies of one
//! layer's hidden states, the original's final hidden states, the reference
//! log-probabilities when they take at most [`REF_CACHE_BYTES`] (else recomputed per
//! window from the final hidden states: the same numbers) and one block's tensors in
//! f32 per candidate. Cost: groups × candidates forward passes over the blocks after
//! the group's own.

use super::groups::Group;
use super::rounding::Candidate;
use crate::calibrated::calibration::calibration_set;
use crate::calibrated::engine_err;
use crate::error::{PipelineError, Result};
use crate::request::CalibrationRequest;
use crate::run::{self, Progress, TensorJob, TensorSource};
use llmq_engine::{Model, WeightSource};
use llmq_formats::GgmlType;
use llmq_kernels::WeightMatrix;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// The most bytes of reference log-probabilities kept between variants.
pub const REF_CACHE_BYTES: usize = 512 << 20;

/// What was measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// ΔKL per group and candidate
    pub loss: Vec<Vec<f64>>,
    /// calibration tokens scored
    pub tokens: usize,
    pub windows: usize,
    pub source: String,
}

/// The type a candidate becomes for a tensor of rows of `n` (llama.cpp's fallback).
pub fn candidate_for(n: usize, cand: GgmlType) -> GgmlType {
    llmq_arch::mix::fallback(n, cand)
}

/// Measures every group at every candidate.
pub fn measure(
    model_path: &Path,
    jobs: &[TensorJob],
    groups: &[Group],
    candidates: &[Candidate],
    source: &dyn TensorSource,
    calibration: &CalibrationRequest,
    progress: &dyn Progress,
) -> Result<Measured> {
    let src = WeightSource::open(model_path).map_err(engine_err)?;
    let mut model = Model::load(&src).map_err(engine_err)?;
    let tok = match &src {
        WeightSource::Gguf(f) => llmq_tokenizer::Tokenizer::from_gguf(f),
        WeightSource::Hf(_) => llmq_tokenizer::Tokenizer::from_hf_dir(model_path),
    }
    .map_err(|e| {
        PipelineError::invalid(
            format!("cannot load the tokenizer of {}: {e}", model_path.display()),
            "--target-bpw measures on calibration text and needs the model's tokenizer",
        )
    })?;
    let (calib, _notes, _) = calibration_set(
        &tok,
        calibration.data.as_deref(),
        calibration.samples,
        calibration.seq_len,
        model.hp.n_ctx_train.max(2),
    )?;
    let lens: Vec<usize> = calib.samples.iter().map(|s| s.len()).collect();
    let ids: Vec<u32> = calib.samples.concat();
    let tokens = ids.len();
    let n_layer = model.hp.n_layer;
    let total_variants = groups.len() * candidates.len();
    progress.message(&format!(
        "Measuring ΔKL of {} groups x {} types on {} windows ({tokens} tokens) from {}",
        groups.len(),
        candidates.len(),
        lens.len(),
        calib.source
    ));
    let tied = !jobs.iter().any(|j| j.name == "output.weight");
    let mut m = Measurer {
        model: &mut model,
        src: &src,
        lens: &lens,
        ids: &ids,
        ref_lp: None,
        ref_hidden: Vec::new(),
        ref_head: None,
        tied,
    };
    // the reference: the original's final hidden states (and log-probabilities)
    let mut h = m.model.embed(&ids).map_err(engine_err)?;
    let mut x = h.clone();
    m.run_blocks(0, &mut x)?;
    if tokens.saturating_mul(m.model.n_vocab()).saturating_mul(4) <= REF_CACHE_BYTES {
        m.ref_lp = Some(m.log_probs(&x)?);
    } else {
        // recomputed per window through the original head, whatever is installed
        let name = if tied {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let w = src.require(name).map_err(engine_err)?;
        m.ref_head = Some(llmq_engine::Linear::new(m.model.backend(), w));
    }
    m.ref_hidden = x;
    let mut loss = vec![vec![0.0f64; candidates.len()]; groups.len()];
    let mut done = 0usize;
    let mut cache = QuantCache::default();
    for stage in 0..=n_layer + 1 {
        // stage 0: embeddings; 1..=n_layer: block stage-1; n_layer+1: head
        let layer = stage.checked_sub(1).filter(|&l| l < n_layer);
        for (gi, g) in groups.iter().enumerate() {
            let in_stage = match g.layer {
                Some(l) => layer == Some(l),
                None => {
                    let emb = is_embeddings(jobs, g);
                    (stage == 0 && emb) || (stage == n_layer + 1 && !emb)
                }
            };
            if !in_stage {
                continue;
            }
            for (ci, &cand) in candidates.iter().enumerate() {
                if crate::CANCEL.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(PipelineError::cancelled(
                        "cancelled while measuring the allocation",
                        "Run the command again",
                    ));
                }
                let names = m.install(jobs, g, cand, source, &mut cache)?;
                let kl = match layer {
                    Some(l) => {
                        let mut x = h.clone();
                        m.run_blocks(l, &mut x)?;
                        m.kl(&x)?
                    }
                    None if stage == 0 => {
                        let mut x = m.model.embed(&ids).map_err(engine_err)?;
                        m.run_blocks(0, &mut x)?;
                        m.kl(&x)?
                    }
                    None => m.kl(&h)?,
                };
                m.restore(&names)?;
                loss[gi][ci] = kl;
                done += 1;
                progress.message(&format!(
                    "  [{done}/{total_variants}] {} at {}: ΔKL {kl:.6}",
                    g.label,
                    cand.name()
                ));
            }
        }
        if let Some(l) = layer {
            // the original hidden states move on to the next block
            m.model
                .forward_block(l, &mut h, &lens, None)
                .map_err(engine_err)?;
            cache.clear();
        }
    }
    Ok(Measured {
        loss,
        tokens,
        windows: lens.len(),
        source: calib.source.clone(),
    })
}

fn is_embeddings(jobs: &[TensorJob], g: &Group) -> bool {
    g.members
        .iter()
        .any(|m| jobs[m.job].name.starts_with("token_embd"))
}

/// Original and quantized-then-dequantized values of the current block's tensors.
#[derive(Default)]
struct QuantCache {
    orig: HashMap<usize, std::sync::Arc<Vec<f32>>>,
    deq: HashMap<(usize, Candidate), std::sync::Arc<Vec<f32>>>,
}

impl QuantCache {
    fn clear(&mut self) {
        self.orig.clear();
        self.deq.clear();
    }

    fn orig(
        &mut self,
        jobs: &[TensorJob],
        j: usize,
        source: &dyn TensorSource,
    ) -> Result<std::sync::Arc<Vec<f32>>> {
        if let Some(v) = self.orig.get(&j) {
            return Ok(v.clone());
        }
        let v = std::sync::Arc::new(source.load_f32(&jobs[j])?);
        self.orig.insert(j, v.clone());
        Ok(v)
    }

    fn deq(
        &mut self,
        jobs: &[TensorJob],
        j: usize,
        cand: Candidate,
        source: &dyn TensorSource,
    ) -> Result<std::sync::Arc<Vec<f32>>> {
        if let Some(v) = self.deq.get(&(j, cand)) {
            return Ok(v.clone());
        }
        let orig = self.orig(jobs, j, source)?;
        let out = match cand {
            Candidate::Ggml(ty) => ggml_round(&jobs[j], ty, &orig, source)?,
            other => super::rounding::round(&jobs[j], other, &orig)?,
        };
        let out = std::sync::Arc::new(out);
        self.deq.insert((j, cand), out.clone());
        Ok(out)
    }
}

/// `orig` through the GGML quantizer at `cand` (and the source's importance weights).
fn ggml_round(
    job: &TensorJob,
    cand: GgmlType,
    orig: &[f32],
    source: &dyn TensorSource,
) -> Result<Vec<f32>> {
    let mut job = job.clone();
    job.ty = candidate_for(job.row_len(), cand);
    let imatrix = source.importance(&job);
    let bytes = run::quantize_rows(&job, orig, imatrix.as_deref())?;
    let mut out = vec![0f32; orig.len()];
    llmq_quant::dequantize(job.ty, &bytes, &mut out).map_err(|e| {
        PipelineError::general(format!("{}: {e}", job.name), "Report this as a bug")
    })?;
    Ok(out)
}

struct Measurer<'a> {
    model: &'a mut Model,
    src: &'a WeightSource,
    lens: &'a [usize],
    ids: &'a [u32],
    /// log-probabilities of the original, `[tokens, n_vocab]`, when small enough
    ref_lp: Option<Vec<f32>>,
    /// the original's final hidden states, `[tokens, n_embd]`
    ref_hidden: Vec<f32>,
    /// the original head, when the log-probabilities are not kept
    ref_head: Option<llmq_engine::Linear<llmq_engine::Cpu>>,
    tied: bool,
}

impl Measurer<'_> {
    fn run_blocks(&self, from: usize, x: &mut [f32]) -> Result<()> {
        for l in from..self.model.hp.n_layer {
            self.model
                .forward_block(l, x, self.lens, None)
                .map_err(engine_err)?;
        }
        Ok(())
    }

    /// Log-probabilities of final hidden states, window by window.
    fn log_probs(&self, x: &[f32]) -> Result<Vec<f32>> {
        let d = self.model.hp.n_embd;
        let mut out = Vec::with_capacity(self.ids.len() * self.model.n_vocab());
        let mut start = 0;
        for &n in self.lens {
            out.extend_from_slice(&self.window_log_probs(&x[start * d..(start + n) * d])?);
            start += n;
        }
        Ok(out)
    }

    /// Log-probabilities of one window's final hidden states.
    fn window_log_probs(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut l = self.model.logits_of_hidden(x).map_err(engine_err)?;
        l.par_chunks_mut(self.model.n_vocab()).for_each(log_softmax);
        Ok(l)
    }

    /// Mean `KL(P_orig ‖ P)` over every position, for final hidden states `x`.
    fn kl(&self, x: &[f32]) -> Result<f64> {
        let d = self.model.hp.n_embd;
        let v = self.model.n_vocab();
        let mut sum = 0.0f64;
        let mut start = 0;
        for &n in self.lens {
            let mut l = self
                .model
                .logits_of_hidden(&x[start * d..(start + n) * d])
                .map_err(engine_err)?;
            let recomputed;
            let refs = match &self.ref_lp {
                Some(lp) => &lp[start * v..(start + n) * v],
                None => {
                    let head = self.ref_head.as_ref().ok_or_else(|| {
                        PipelineError::general("no reference head", "Report this as a bug")
                    })?;
                    let mut l = self
                        .model
                        .logits_with_head(&self.ref_hidden[start * d..(start + n) * d], head)
                        .map_err(engine_err)?;
                    l.par_chunks_mut(v).for_each(log_softmax);
                    recomputed = l;
                    &recomputed[..]
                }
            };
            let rows: Vec<f64> = l
                .par_chunks_mut(v)
                .zip(refs.par_chunks(v))
                .map(|(q, p)| {
                    log_softmax(q);
                    p.iter()
                        .zip(q.iter())
                        .map(|(&lp, &lq)| (lp as f64).exp() * (lp as f64 - lq as f64))
                        .sum::<f64>()
                })
                .collect();
            sum += rows.iter().sum::<f64>();
            start += n;
        }
        Ok(sum / self.ids.len().max(1) as f64)
    }

    /// Put group `g` at candidate `cand` into the model; returns the names replaced.
    fn install(
        &mut self,
        jobs: &[TensorJob],
        g: &Group,
        cand: Candidate,
        source: &dyn TensorSource,
        cache: &mut QuantCache,
    ) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for m in &g.members {
            let job = &jobs[m.job];
            let cols = job.row_len();
            let rows = job.numel() / cols.max(1);
            let deq = cache.deq(jobs, m.job, cand, source)?;
            let values = match m.rows {
                None => deq.as_ref().clone(),
                Some((r0, r1)) => {
                    let mut v = cache.orig(jobs, m.job, source)?.as_ref().clone();
                    v[r0 * cols..r1 * cols].copy_from_slice(&deq[r0 * cols..r1 * cols]);
                    v
                }
            };
            self.put(&job.name, WeightMatrix::from_f32(rows, cols, values))?;
            names.push(job.name.clone());
        }
        Ok(names)
    }

    /// Put the original tensors back.
    fn restore(&mut self, names: &[String]) -> Result<()> {
        for n in names {
            let w = self.src.require(n).map_err(engine_err)?;
            self.put(n, w)?;
        }
        Ok(())
    }

    fn put(&mut self, name: &str, w: WeightMatrix) -> Result<()> {
        let r = match name {
            "token_embd.weight" if self.tied => self
                .model
                .replace_embeddings(w.clone())
                .and_then(|_| self.model.replace_head(w)),
            "token_embd.weight" => self.model.replace_embeddings(w),
            "output.weight" => self.model.replace_head(w),
            _ => self.model.replace_weight(name, w),
        };
        r.map_err(engine_err)
    }
}

/// In place: `x ← x − logsumexp(x)`.
fn log_softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let lse = max as f64 + s.ln();
    x.iter_mut().for_each(|v| *v = (*v as f64 - lse) as f32);
}
