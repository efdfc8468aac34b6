//! Device memory a model will need, planned before anything is uploaded, so a model that
//! does not fit a GPU is refused up front with the numbers instead of failing mid-run:
//! the weights as stored, the KV cache for the context a command will hold (f32, the
//! widths [`super::KvCache`] allocates), the activations of its largest batch (with
//! the f16 copies of the widest weight and of the batch that prompt products on tensor
//! cores use, from [`TENSOR_CORE_MIN_TOKENS`] tokens on), and a fixed allowance for the
//! driver context, the kernels and allocator slack.

use super::cache_widths;
use super::load::hparams_of;
use crate::error::Result;
use crate::weights::WeightSource;

/// The driver context, the loaded kernel module and allocator slack.
const FIXED_BYTES: u64 = 512 << 20;

/// Batches of this many tokens or more multiply on tensor cores (the CUDA backend's
/// `tensor_core` module), through an f16 copy of the weight.
pub const TENSOR_CORE_MIN_TOKENS: usize = 16;

/// Device bytes a model needs for a given context and batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub weights: u64,
    pub kv_cache: u64,
    pub workspace: u64,
    pub fixed: u64,
    /// the positions the KV cache was planned for
    pub ctx_tokens: usize,
}

impl MemoryPlan {
    /// The plan for the model in `src` holding `ctx_tokens` positions and running at
    /// most `batch_tokens` tokens per forward pass.
    pub fn of(src: &WeightSource, ctx_tokens: usize, batch_tokens: usize) -> Result<MemoryPlan> {
        let hp = hparams_of(src)?;
        // the engine refuses positions past the training context
        let ctx_tokens = match hp.n_ctx_train {
            0 => ctx_tokens,
            n => ctx_tokens.min(n),
        };
        let (kw, vw) = cache_widths(&hp);
        let kv_cache = (hp.n_layer * (kw + vw) * 4) as u64 * ctx_tokens as u64;
        // the widest feed-forward: dense, or the routed experts of one token plus shared ones
        let ffn = match &hp.moe {
            Some(m) => hp.n_ff.max((m.n_expert_used + m.n_shared) * m.n_ff_exp),
            None => hp.n_ff,
        };
        let q_width = hp.n_head * hp.head_dim_k.max(hp.head_dim_v);
        // f32 values alive at once per token: logits, gate and up, the residual stream and
        // its normed copies, q/k/v and the attention output; doubled for a layer's inputs
        // and outputs coexisting
        let per_token = (hp.n_vocab + 2 * ffn + 6 * hp.n_embd + 4 * q_width) as u64 * 4 * 2;
        let mut workspace = per_token * batch_tokens.max(1) as u64;
        if batch_tokens >= TENSOR_CORE_MIN_TOKENS {
            // the widest matrix (the output head, a feed-forward or the query
            // projection) and the widest input rows of the batch, in f16
            let widest = hp.n_vocab.max(ffn).max(q_width);
            workspace += (widest * hp.n_embd + batch_tokens * ffn.max(hp.n_embd)) as u64 * 2;
        }
        Ok(MemoryPlan {
            weights: src.tensor_bytes(),
            kv_cache,
            workspace,
            fixed: FIXED_BYTES,
            ctx_tokens,
        })
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.workspace + self.fixed
    }

    /// `weights 1.2 GB, KV cache 0.3 GB for 4096 tokens, activations 0.1 GB, runtime 0.5 GB`.
    pub fn describe(&self) -> String {
        let gb = |b: u64| b as f64 / 1e9;
        format!(
            "weights {:.2} GB, KV cache {:.2} GB for {} tokens, activations {:.2} GB, runtime {:.2} GB",
            gb(self.weights),
            gb(self.kv_cache),
            self.ctx_tokens,
            gb(self.workspace),
            gb(self.fixed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The shared llama (4 layers, 2 KV heads of 64, vocab 4096, hidden 256, FFN 768):
    /// the cache and the weights are counted exactly, the context capped at training's.
    #[test]
    fn plans_the_shared_llama() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/llama");
        let src = WeightSource::open_hf(&dir).unwrap();
        let p = MemoryPlan::of(&src, 1000, 100).unwrap();
        // 4 layers x (128 K + 128 V floats) x 4 bytes x 1000 positions
        assert_eq!(p.kv_cache, 4 * 256 * 4 * 1000);
        let file = std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len();
        assert!(p.weights <= file && p.weights > file - 64 * 1024, "{p:?}");
        // per token: (4096 logits + 2 x 768 + 6 x 256 + 4 x 256) floats, twice; and in
        // f16 the 4096 x 256 head and 100 rows of the 768-wide feed-forward input
        assert_eq!(
            p.workspace,
            (4096 + 1536 + 1536 + 1024) * 8 * 100 + (4096 * 256 + 100 * 768) * 2
        );
        let small = MemoryPlan::of(&src, 1000, 8).unwrap();
        assert_eq!(small.workspace, (4096 + 1536 + 1536 + 1024) * 8 * 8);
        assert_eq!(p.total(), p.weights + p.kv_cache + p.workspace + p.fixed);
        // max_position_embeddings is 2048
        assert_eq!(MemoryPlan::of(&src, 1 << 20, 1).unwrap().ctx_tokens, 2048);
    }
}
