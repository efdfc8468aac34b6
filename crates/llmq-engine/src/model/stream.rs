//! Layer-streamed loading, for calibration (GPTQ, AWQ, imatrix in `llmq-pipeline`):
//! a model whose blocks are loaded from the source one at a time
//! ([`Model::load_block`]) and dropped when done ([`Model::unload_block`]), with the
//! source's mapped pages of that block released, so the resident set holds one block
//! at a time instead of the whole model. The embeddings are loaded for embedding the
//! calibration samples and can be released before the blocks run
//! ([`Model::release_embeddings`]); the output head is never loaded.

use super::load::{activation_of, hparams_of, load_layer, Loader};
use super::Model;
use crate::backend::{Backend, Cpu};
use crate::error::{EngineError, Result};
use crate::weights::WeightSource;

impl Model<Cpu> {
    /// [`Model::load_streamed_on`] the CPU.
    pub fn load_streamed(src: &WeightSource) -> Result<Model> {
        Model::load_streamed_on(Cpu, src)
    }
}

impl<B: Backend> Model<B> {
    /// A model with its hyper-parameters, embeddings and final norm, and no block
    /// loaded. A GGUF source is checked as [`Model::load_on`] checks it (every block's
    /// tensors present, of the right shapes and finite, none unexplained) by loading
    /// and dropping each block in turn, its pages released after.
    pub fn load_streamed_on(be: B, src: &WeightSource) -> Result<Model<B>> {
        let hp = hparams_of(src)?;
        let d = hp.n_embd;
        let ld = Loader {
            src,
            be: &be,
            asked: Default::default(),
        };
        let tok_embd = ld.req("token_embd.weight", hp.n_vocab, d)?;
        let output_norm = ld.req_vec("output_norm.weight", d)?;
        src.release("output_norm.weight");
        if let WeightSource::Gguf(_) = src {
            // the same checks as a whole load, one block at a time
            ld.opt("output.weight", hp.n_vocab, d)?;
            src.release("output.weight");
            for i in 0..hp.n_layer {
                drop(load_layer(&ld, &hp, i)?);
                src.release_block(i);
            }
            ld.check_unexplained()?;
        } else {
            // the block's values were copied out of the mapping
            src.release("token_embd.weight");
        }
        let act = activation_of(&hp);
        let layers = (0..hp.n_layer).map(|_| None).collect();
        Ok(Model {
            act,
            hp,
            be,
            tok_embd: Some(tok_embd),
            output_norm,
            output: None,
            layers,
        })
    }

    /// Load block `layer` from `src` (the source this model was loaded from).
    pub fn load_block(&mut self, src: &WeightSource, layer: usize) -> Result<()> {
        if layer >= self.layers.len() {
            return Err(EngineError::Source(format!(
                "block {layer} does not exist (the model has {})",
                self.layers.len()
            )));
        }
        let ld = Loader {
            src,
            be: &self.be,
            asked: Default::default(),
        };
        self.layers[layer] = Some(load_layer(&ld, &self.hp, layer)?);
        if let WeightSource::Hf(_) = src {
            // a safetensors block is copied out of the mapping at load
            src.release_block(layer);
        }
        Ok(())
    }

    /// Drop block `layer` and release its pages of `src` (a GGUF block's weights are
    /// the mapped pages themselves).
    pub fn unload_block(&mut self, src: &WeightSource, layer: usize) {
        if let Some(slot) = self.layers.get_mut(layer) {
            *slot = None;
            src.release_block(layer);
        }
    }

    /// Rows `x` (`[tokens, n_embd]`, the last block's output) through the final norm:
    /// the output head's input (EXL3 codes the head with their Hessian).
    pub fn output_normed(&self, x: Vec<f32>) -> Vec<f32> {
        let mut b = self.be.upload(x);
        self.be
            .rms_norm_inplace(&mut b, &self.output_norm, self.hp.eps);
        self.be.download(b)
    }

    /// Drop the token embeddings (after the calibration samples are embedded).
    pub fn release_embeddings(&mut self, src: &WeightSource) {
        self.tok_embd = None;
        src.release("token_embd.weight");
    }
}
