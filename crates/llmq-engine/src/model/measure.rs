//! Hooks for measuring what quantizing the embeddings or the output head costs
//! (the measured bit allocator of `llmq-pipeline`, `target_bpw`): the logits of final
//! hidden states ([`Model::logits_of_hidden`], the tail of [`Model::forward`]) and
//! replacement of the token embeddings and of the head, alongside the block weights
//! that [`Model::replace_weight`] replaces.

use super::load::check_dims;
use super::Model;
use crate::backend::{Backend, Linear};
use crate::error::{EngineError, Result};
use llmq_kernels::WeightMatrix;

impl<B: Backend> Model<B> {
    /// Logits (`[rows, n_vocab]`, row-major) of hidden states after the last block
    /// (`[rows, n_embd]`): the output norm, the head and the final soft-cap.
    pub fn logits_of_hidden(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        let d = self.hp.n_embd;
        if !hidden.len().is_multiple_of(d) {
            return Err(EngineError::Source(format!(
                "{} hidden values are not rows of {d}",
                hidden.len()
            )));
        }
        let output = self.output.as_ref().ok_or_else(|| {
            EngineError::Source("this layer-streamed model has no output head".into())
        })?;
        self.logits_with_head(hidden, output)
    }

    /// [`Model::logits_of_hidden`] through another head (`[n_vocab, n_embd]`, e.g. the
    /// original one while the model's own is replaced).
    pub fn logits_with_head(&self, hidden: &[f32], output: &Linear<B>) -> Result<Vec<f32>> {
        let d = self.hp.n_embd;
        if !hidden.len().is_multiple_of(d)
            || output.out_features() != self.hp.n_vocab
            || output.in_features() != d
        {
            return Err(EngineError::Source(format!(
                "{} hidden values and a {}x{} head do not fit a model of width {d} and vocabulary {}",
                hidden.len(),
                output.out_features(),
                output.in_features(),
                self.hp.n_vocab
            )));
        }
        let rows = hidden.len() / d;
        let be = &self.be;
        let mut x = be.upload(hidden.to_vec());
        be.rms_norm_inplace(&mut x, &self.output_norm, self.hp.eps);
        let mut logits = output.forward(be, &x, rows);
        if let Some(c) = self.hp.final_softcap {
            be.softcap(&mut logits, c);
        }
        Ok(be.download(logits))
    }

    /// Replace the output head (`[n_vocab, n_embd]`); with tied embeddings only the
    /// head's use changes.
    pub fn replace_head(&mut self, w: WeightMatrix) -> Result<()> {
        check_dims("output.weight", &w, self.hp.n_vocab, self.hp.n_embd)?;
        self.output = Some(Linear::new(&self.be, w));
        Ok(())
    }

    /// Replace the token embeddings (`[n_vocab, n_embd]`); with tied embeddings only
    /// the lookup's use changes.
    pub fn replace_embeddings(&mut self, w: WeightMatrix) -> Result<()> {
        check_dims("token_embd.weight", &w, self.hp.n_vocab, self.hp.n_embd)?;
        self.tok_embd = Some(Linear::new(&self.be, w));
        Ok(())
    }
}
