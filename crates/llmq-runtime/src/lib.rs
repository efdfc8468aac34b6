//! The runtime layer: what runs a loaded model for users, above the decoder
//! (`llmq-engine`) and below the front ends (the `generate` command, the HTTP server).
//!
//! - [`generation`]: one text generation in progress ([`Session`]) and the loop that runs
//!   a single session to the end ([`generate`]);
//! - [`prompt`]: chat templates and prompt tokens, the same for every front end;
//! - [`LoadedModel`]: a model with its tokenizer, ready to run.

pub mod generation;
pub mod prompt;

pub use generation::{generate, random_seed, FinishReason, GenRequest, GenStats, Session};
pub use prompt::{prompt_tokens, render_chat};

use llmq_engine::{Backend, Cpu, EngineError, Model};
use llmq_tokenizer::{Tokenizer, TokenizerError};

/// A model ready to run on backend `B`: its weights and its tokenizer.
pub struct LoadedModel<B: Backend = Cpu> {
    /// the name shown to users (folder, file or Hub id)
    pub name: String,
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
}

/// Errors of the runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The prompt has no tokens.
    #[error("the prompt is empty (no tokens)")]
    EmptyPrompt,
    /// The prompt leaves no room in the context for a generated token.
    #[error("the prompt has {n} tokens but the context holds {ctx}: shorten the prompt or raise --ctx-size")]
    PromptTooLong { n: usize, ctx: usize },
    /// The forward pass failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Rendering a chat template or tokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}
