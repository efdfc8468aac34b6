//! Architecture knowledge shared by the quantize pipeline and the inference engine:
//! the typed model configuration read from a Hugging Face `config.json`.

pub mod config;

pub use config::{ArchConfig, ConfigError, Family, LayerSpec, MlaConfig, MoeConfig, RouterScoring};
