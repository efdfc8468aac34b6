//! Architecture knowledge shared by the quantize pipeline and the inference engine:
//! the typed model configuration read from a Hugging Face `config.json`, and what
//! llama.cpp needs to load a model as GGUF (tensor names, metadata, tokenizer, mixes).

pub mod config;
pub mod error;
pub mod gguf_export;
pub mod gguf_meta;
pub mod gguf_names;
pub mod gguf_rope;
pub mod gguf_tokenizer;
pub mod meta;
pub mod mix;
pub mod rope;

pub use config::{ArchConfig, ConfigError, Family, LayerSpec, MlaConfig, MoeConfig, RouterScoring};
pub use error::{ArchError, Result};
pub use gguf_export::{gguf_export, GgufExport};
pub use gguf_names::{
    apply_transform, gguf_arch, gguf_plan, GgufPlan, GgufTensorSpec, TensorRole, Transform,
};
pub use meta::{MetaList, MetaValue};
pub use mix::{choose_types, Mix, MixModel, MixTensor};
pub use rope::{RopeScaling, Yarn};
