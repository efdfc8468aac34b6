//! One configurable decoder for every supported architecture, following llama.cpp's
//! graphs (`src/models/*.cpp`) over GGUF tensors and transformers' modeling files for
//! the semantics: Llama/Mistral/Mixtral, Qwen2 (q/k/v bias), Qwen3 (q/k norm),
//! Qwen3-MoE, Gemma 3 (scaled embeddings, sandwich norms, per-layer sliding window and
//! RoPE base, GELU), Phi-3 (fused qkv and gate|up) and DeepSeek-V2/V3 / GLM-4.7-Flash
//! (multi-head latent attention, DeepSeek-V2 paper arXiv 2405.04434, computed in the
//! absorbed form over the cached latent; sigmoid or softmax routing with correction
//! bias, group-limited top-k, shared experts, leading dense layers).
//!
//! The forward pass takes a batch of sequences, each with its own KV cache, and runs
//! all their new tokens through each weight product together. Every operation goes
//! through a [`Backend`] (the CPU one by default); weights are [`Linear`]s whose format
//! the model never looks at.
//!
//! Submodules: `load` (tensors → layers), `kv_cache`, `attention` (standard
//! attention), `mla` (multi-head latent attention), `mlp` (dense MLP and MoE),
//! `surgery` (the calibration hooks: one block alone, weight replacement) and
//! `measure` (the measured allocator's: logits of final hidden states, head and
//! embedding replacement).

mod attention;
mod kv_cache;
mod load;
mod measure;
mod memory_plan;
mod mla;
mod mlp;
mod stream;
mod surgery;

pub use crate::routing::route;
pub use kv_cache::{KvCache, Logits, SeqStep};
pub use memory_plan::{MemoryPlan, TENSOR_CORE_MIN_TOKENS};

use crate::backend::{Activation, Backend, Cpu, Linear, TokenMap};
use crate::calib::Tap;
use crate::error::{EngineError, Result};
use crate::hparams::Hparams;
use attention::Attention;
use mlp::FeedForward;

/// One decoder block.
struct Layer<B: Backend> {
    attn_norm: B::Buf,
    attn: Attention<B>,
    /// Gemma's sandwich norms
    post_attn_norm: Option<B::Buf>,
    ffn_norm: B::Buf,
    ffn: FeedForward<B>,
    post_ffn_norm: Option<B::Buf>,
}

/// A loaded model on backend `B`.
pub struct Model<B: Backend = Cpu> {
    pub hp: Hparams,
    be: B,
    /// `None` once a layer-streamed model has embedded its calibration samples
    tok_embd: Option<Linear<B>>,
    output_norm: B::Buf,
    /// `None` in a layer-streamed model (calibration never computes logits)
    output: Option<Linear<B>>,
    /// `None`: a block of a layer-streamed model that is not loaded now
    layers: Vec<Option<Layer<B>>>,
    act: Activation,
}

impl<B: Backend> Model<B> {
    /// Vocabulary size (rows of the output head).
    pub fn n_vocab(&self) -> usize {
        self.hp.n_vocab
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.be
    }

    /// Run the new tokens of every sequence; returns, per sequence, the logits it asked
    /// for (`rows × n_vocab`, row-major).
    pub fn forward(&self, seqs: &mut [SeqStep<'_, B>]) -> Result<Vec<Vec<f32>>> {
        let hp = &self.hp;
        let be = &self.be;
        // token → (sequence, position)
        let mut tok_seq = Vec::new();
        let mut tok_pos = Vec::new();
        let mut ids = Vec::new();
        for (s, step) in seqs.iter().enumerate() {
            let end = step.cache.len() + step.tokens.len();
            if let Some(limit) = hp.rope_exact_ctx.filter(|l| end > *l) {
                return Err(EngineError::UnsupportedValue {
                    key: "rope_type".into(),
                    value: format!(
                        "\"{}\" beyond {limit} positions (a sequence of {end} tokens: transformers changes the frequencies there)",
                        hp.rope_scaling.name()
                    ),
                });
            }
            if end > step.cache.max_len() {
                return Err(EngineError::ContextOverflow {
                    len: end,
                    ctx: step.cache.max_len(),
                });
            }
            for (i, &t) in step.tokens.iter().enumerate() {
                if t as usize >= hp.n_vocab {
                    return Err(EngineError::BadToken {
                        id: t,
                        vocab: hp.n_vocab,
                    });
                }
                tok_seq.push(s);
                tok_pos.push(step.cache.len() + i);
                ids.push(t);
            }
        }
        let tokens = TokenMap {
            seq: &tok_seq,
            pos: &tok_pos,
        };
        be.begin_step(ids.len(), seqs.len());
        let logits = be.run_step(|| self.step_logits(seqs, &ids, tokens));
        be.end_step();
        let logits = logits?;
        let v = hp.n_vocab;
        let mut result = Vec::with_capacity(seqs.len());
        let mut k = 0;
        for step in seqs.iter() {
            let n = match step.logits {
                Logits::None => 0,
                Logits::Last => usize::from(!step.tokens.is_empty()),
                Logits::All => step.tokens.len(),
            };
            result.push(logits[k * v..(k + n) * v].to_vec());
            k += n;
        }
        Ok(result)
    }

    /// The blocks over the step's tokens, the caches advanced, and the logits of the
    /// rows the steps ask for (row-major, `n_vocab` each).
    fn step_logits(
        &self,
        seqs: &mut [SeqStep<'_, B>],
        ids: &[u32],
        tokens: TokenMap<'_>,
    ) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let be = &self.be;
        let d = hp.n_embd;
        let mut x = self.embed_ids(ids)?;
        let mut tap = Tap::none();
        for li in 0..self.layers.len() {
            self.layer_forward(li, &mut x, seqs, tokens, &mut tap)?;
        }
        for step in seqs.iter_mut() {
            step.cache.advance(step.tokens.len());
        }
        // logits for the rows asked for
        let mut out_rows = Vec::new();
        let mut start = 0;
        for step in seqs.iter() {
            let n = step.tokens.len();
            match step.logits {
                Logits::None => {}
                Logits::Last if n > 0 => out_rows.push(start + n - 1),
                Logits::Last => {}
                Logits::All => out_rows.extend(start..start + n),
            }
            start += n;
        }
        let mut sel = be.gather_rows(&x, d, &out_rows);
        be.rms_norm_inplace(&mut sel, &self.output_norm, hp.eps);
        let output = self.output.as_ref().ok_or_else(|| {
            EngineError::Source("this layer-streamed model has no output head".into())
        })?;
        let mut logits = output.forward(be, &sel, out_rows.len());
        if let Some(c) = hp.final_softcap {
            be.softcap(&mut logits, c);
        }
        Ok(be.download(logits))
    }

    /// The embedding rows of `tokens` (`[tokens, n_embd]`), the input of block 0.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.be.download(self.embed_buf(tokens)?))
    }

    /// [`Model::embed`] left on the backend (a GPU's calibration keeps its activations
    /// there).
    pub fn embed_buf(&self, tokens: &[u32]) -> Result<B::Buf> {
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.hp.n_vocab) {
            return Err(EngineError::BadToken {
                id: t,
                vocab: self.hp.n_vocab,
            });
        }
        self.embed_ids(tokens)
    }

    /// Embedding rows of `ids` (scaled where the architecture does).
    fn embed_ids(&self, ids: &[u32]) -> Result<B::Buf> {
        let tok_embd = self.tok_embd.as_ref().ok_or_else(|| {
            EngineError::Source("the embeddings of this layer-streamed model were released".into())
        })?;
        Ok(self.be.embed(tok_embd.weight(), ids, self.hp.embed_scale))
    }

    /// One decoder block over `x` (`[tokens, n_embd]`), in place.
    fn layer_forward(
        &self,
        li: usize,
        x: &mut B::Buf,
        seqs: &mut [SeqStep<'_, B>],
        tokens: TokenMap<'_>,
        tap: &mut Tap<'_>,
    ) -> Result<()> {
        let hp = &self.hp;
        let be = &self.be;
        let layer = self.layers[li].as_ref().ok_or_else(|| {
            EngineError::Source(format!(
                "block {li} of this layer-streamed model is not loaded"
            ))
        })?;
        let xn = be.rms_norm(x, &layer.attn_norm, hp.eps);
        let mut a = match &layer.attn {
            Attention::Standard(at) => at.forward(be, hp, li, &xn, seqs, tokens, tap),
            Attention::Mla(at) => at.forward(be, hp, li, &xn, seqs, tokens, tap),
        };
        if let Some(w) = &layer.post_attn_norm {
            be.rms_norm_inplace(&mut a, w, hp.eps);
        }
        be.add_assign(x, &a);
        let h = be.rms_norm(x, &layer.ffn_norm, hp.eps);
        let mut f = layer.ffn.forward(be, &h, tokens.len(), tap, self.act);
        if let Some(w) = &layer.post_ffn_norm {
            be.rms_norm_inplace(&mut f, w, hp.eps);
        }
        be.add_assign(x, &f);
        Ok(())
    }
}

impl<B: Backend> Model<B> {
    /// Floats per position in each layer's K and V cache.
    fn cache_widths(&self) -> (usize, usize) {
        cache_widths(&self.hp)
    }
}

/// Floats per position in each layer's K and V cache of a model with `hp`.
pub(crate) fn cache_widths(hp: &crate::Hparams) -> (usize, usize) {
    match &hp.mla {
        Some(m) => (m.kv_lora_rank + m.qk_rope, 0),
        None => (hp.n_head_kv * hp.head_dim_k, hp.n_head_kv * hp.head_dim_v),
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for up to `max_len` positions.
    pub fn new(model: &Model<B>, max_len: usize) -> KvCache<B> {
        let (kw, vw) = model.cache_widths();
        KvCache::empty(&model.be, model.hp.n_layer, max_len, kw, vw)
    }

    /// Forget everything after the first `n` positions.
    pub fn truncate(&mut self, n: usize, model: &Model<B>) {
        let (kw, vw) = model.cache_widths();
        self.truncate_rows(&model.be, n, kw, vw);
    }
}
