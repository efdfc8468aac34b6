//! Byte layouts, nothing about models or algorithms: the GGML block structs
//! ([`blocks`]) and type table ([`ggml_type`]), GGUF v3
//! read and streaming write, and memory-mapped (sharded) safetensors.

pub mod blocks;
pub mod finite;
pub mod ggml_type;
pub mod gguf;
pub mod safetensors;

pub use ggml_type::{GgmlType, TypeLayout, ALL_TYPES, TYPE_LAYOUTS};
