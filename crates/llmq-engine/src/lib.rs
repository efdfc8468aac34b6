//! The inference engine: one configurable decoder for every supported architecture
//! (f32 compute) over weights from GGUF files or safetensors checkpoints, running on a
//! [`Backend`] (the CPU one today).
//!
//! Layers, bottom up: `ops` (scalar f32 math) and `routing` (MoE expert choice) →
//! `backend` (buffers, weights and the decoder's operations; [`Cpu`]) → `model` (the
//! decoder, written against [`Backend`]) → `perplexity`, `golden`, `sampling`.

pub mod backend;
pub mod calib;
pub mod error;
pub mod exl3;
pub mod golden;
pub mod hf_quant;
pub mod hparams;
pub mod model;
pub mod ops;
pub mod perplexity;
mod routing;
pub mod sampling;
pub mod weights;

pub use backend::{Backend, Cpu, Linear};
pub use calib::{LinearObserver, LinearSite, LinearStage};
pub use error::{EngineError, Result};
pub use hparams::Hparams;
pub use model::{KvCache, Logits, MemoryPlan, Model, SeqStep};
pub use weights::WeightSource;
