//! One text generation in progress: prompt, KV cache, sampler, streamed detokenization
//! and stop conditions (EOS, stop strings, token limit). The forward pass is driven from
//! outside ([`Session::next_input`] / [`Session::accept`]) so [`generate`] runs one
//! session to the end and the server can batch many in one forward step.

use crate::RuntimeError;
use llmq_engine::sampling::{Sampler, SamplingParams};
use llmq_engine::{Backend, Cpu, KvCache, Logits, Model, SeqStep};
use llmq_tokenizer::{StreamDecoder, Tokenizer};
use std::time::Instant;

/// Why a generation ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string
    Stop,
    /// token limit or context full
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt_tokens: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

/// A generation in progress.
pub struct Session<'t, B: Backend = Cpu> {
    pub cache: KvCache<B>,
    sampler: Sampler,
    history: Vec<u32>,
    pub n_prompt: usize,
    /// prompt tokens already run through the model
    prompt_done: usize,
    pub generated: Vec<u32>,
    max_tokens: usize,
    eos: Vec<u32>,
    ignore_eos: bool,
    stop: Vec<String>,
    decoder: StreamDecoder<'t>,
    /// decoded text not yet released (it may be the start of a stop string)
    pending: String,
    pub finish: Option<FinishReason>,
}

impl<'t, B: Backend> Session<'t, B> {
    /// Start a session with a context of `ctx` positions. Errors when the prompt does
    /// not fit (an empty prompt is invalid too).
    pub fn new(
        model: &Model<B>,
        tok: &'t Tokenizer,
        req: GenRequest,
        ctx: usize,
    ) -> Result<Session<'t, B>, RuntimeError> {
        let n = req.prompt_tokens.len();
        if n == 0 {
            return Err(RuntimeError::EmptyPrompt);
        }
        if n >= ctx {
            return Err(RuntimeError::PromptTooLong { n, ctx });
        }
        Ok(Session {
            cache: KvCache::new(model, ctx),
            sampler: Sampler::new(req.sampling),
            history: req.prompt_tokens.clone(),
            n_prompt: n,
            prompt_done: 0,
            generated: Vec::new(),
            // the context bounds the output too
            max_tokens: req.max_tokens.min(ctx - n),
            eos: tok.eos_ids(),
            ignore_eos: req.ignore_eos,
            stop: req.stop.into_iter().filter(|s| !s.is_empty()).collect(),
            decoder: tok.stream_decoder(true),
            pending: String::new(),
            finish: if req.max_tokens == 0 {
                Some(FinishReason::Length)
            } else {
                None
            },
        })
    }

    /// True while prompt tokens remain to be processed.
    pub fn in_prompt(&self) -> bool {
        self.prompt_done < self.n_prompt
    }

    /// Prompt tokens not yet run through the model.
    pub fn prompt_left(&self) -> usize {
        self.n_prompt - self.prompt_done
    }

    /// The tokens to run next: up to `chunk` prompt tokens, or the last sampled token.
    pub fn next_input(&self, chunk: usize) -> &[u32] {
        if self.in_prompt() {
            let end = (self.prompt_done + chunk.max(1)).min(self.n_prompt);
            &self.history[self.prompt_done..end]
        } else {
            &self.history[self.history.len() - 1..]
        }
    }

    /// Record that `n` input tokens were run and, when the step produced the logits of
    /// the last position, sample from them. Returns text ready to show.
    pub fn accept(&mut self, n: usize, logits: Option<&[f32]>) -> String {
        if self.in_prompt() {
            self.prompt_done += n;
            if self.in_prompt() {
                return String::new();
            }
        }
        let Some(logits) = logits else {
            return String::new();
        };
        if self.finish.is_some() {
            return String::new();
        }
        let t = self.sampler.sample(logits, &self.history);
        self.history.push(t);
        self.generated.push(t);
        if !self.ignore_eos && self.eos.contains(&t) {
            self.finish = Some(FinishReason::Stop);
            let rest = std::mem::take(&mut self.pending) + &self.decoder.finish();
            return rest;
        }
        self.pending.push_str(&self.decoder.push(t));
        let mut out = self.release_text();
        if self.finish.is_none() && self.generated.len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
            out.push_str(&std::mem::take(&mut self.pending));
            out.push_str(&self.decoder.finish());
        }
        out
    }

    /// Move text out of `pending` unless it could still become a stop string.
    fn release_text(&mut self) -> String {
        if let Some((pos, _)) = self
            .stop
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|p| (p, s)))
            .min_by_key(|(p, _)| *p)
        {
            self.finish = Some(FinishReason::Stop);
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return out;
        }
        // hold back the longest suffix that is a prefix of some stop string
        let mut keep = 0;
        for s in &self.stop {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if s.starts_with(suffix) {
                    keep = keep.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        out
    }
}

/// Timings of a generation run by [`generate`], in seconds from its start.
#[derive(Debug, Clone, Copy)]
pub struct GenStats {
    /// when the prompt was done (the first token was sampled then)
    pub prompt_secs: f64,
    /// when generation ended
    pub total_secs: f64,
}

/// Run one session to the end on `model`: the prompt in chunks of at most
/// `prompt_chunk` tokens, then one token per forward step. `on_text` receives each
/// piece of text as soon as it is final.
pub fn generate<B: Backend>(
    model: &Model<B>,
    s: &mut Session<'_, B>,
    prompt_chunk: usize,
    mut on_text: impl FnMut(&str),
) -> Result<GenStats, RuntimeError> {
    let t0 = Instant::now();
    let mut prompt_secs = 0.0;
    while s.finish.is_none() {
        let input = s.next_input(prompt_chunk).to_vec();
        let mut steps = [SeqStep {
            tokens: &input,
            cache: &mut s.cache,
            logits: Logits::Last,
        }];
        let logits = model.forward(&mut steps)?;
        let was_prompt = s.in_prompt();
        let piece = s.accept(input.len(), Some(&logits[0]));
        if was_prompt && !s.in_prompt() {
            prompt_secs = t0.elapsed().as_secs_f64();
        }
        if !piece.is_empty() {
            on_text(&piece);
        }
    }
    Ok(GenStats {
        prompt_secs,
        total_secs: t0.elapsed().as_secs_f64(),
    })
}

/// A sampling seed from the clock, different for every call in this process.
pub fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
