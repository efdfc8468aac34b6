//! The inference engine: one configurable decoder for every supported architecture
//! (f32 compute on CPU) over weights from GGUF files or safetensors checkpoints.

pub mod calib;
pub mod error;
pub mod golden;
pub mod hf_quant;
pub mod hparams;
pub mod model;
pub mod ops;
pub mod perplexity;
pub mod sampling;
pub mod weights;

pub use calib::{LinearObserver, LinearSite, LinearStage};
pub use error::{EngineError, Result};
pub use hparams::Hparams;
pub use model::{KvCache, Logits, Model, SeqStep};
pub use weights::WeightSource;
