//! Architecture knowledge shared by the quantize pipeline and the inference engine:
//! the typed model configuration read from a Hugging Face `config.json`, and what
//! llama.cpp needs to load a model as GGUF (tensor names, metadata, tokenizer, mixes),
//! and the way back from GGUF to a Hugging Face model (`hf_*` modules).

pub mod config;
pub mod config_keys;
pub mod error;
pub mod gguf_export;
mod gguf_gpt_oss;
pub mod gguf_meta;
pub mod gguf_names;
pub mod gguf_rope;
pub mod gguf_tokenizer;
pub mod gpt_oss_unfused;
pub mod hf_config;
pub mod hf_from_gguf;
pub mod hf_tokenizer;
pub mod meta;
pub mod mix;
pub mod rope;
pub mod validate;

pub use config::{
    ArchConfig, ClampedSwiglu, ConfigError, Family, LayerSpec, MlaConfig, MoeConfig, RouterScoring,
};
pub use error::{ArchError, Result};
pub use gguf_export::{gguf_export, GgufExport};
pub use gguf_gpt_oss::repack_mxfp4;
pub use gguf_names::{
    apply_transform, gguf_arch, gguf_plan, GgufPlan, GgufTensorSpec, TensorRole, Transform,
};
pub use gpt_oss_unfused::{unfuse_gpt_oss_experts, ExpertView, UnfusedExperts};
pub use hf_from_gguf::{gguf_to_hf, HfModel, Inverse};
pub use meta::{MetaList, MetaValue};
pub use mix::{choose_types, Mix, MixModel, MixTensor};
pub use rope::{RopeScaling, Yarn};
