//! Byte layouts, nothing about models or algorithms: the GGML block structs
//! ([`blocks`]) and type table ([`ggml_type`]), GGUF v3
//! read and streaming write, memory-mapped (sharded) safetensors, and the small float
//! codes of the FP4/FP8 formats ([`minifloat`]).

pub mod blocks;
pub mod finite;
pub mod ggml_type;
pub mod gguf;
pub mod minifloat;
pub mod safetensors;

pub use ggml_type::{GgmlType, TypeLayout, ALL_TYPES, TYPE_LAYOUTS};
