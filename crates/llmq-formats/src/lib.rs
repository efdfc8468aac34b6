//! Byte layouts, nothing about models or algorithms: the GGML type table, GGUF v3
//! read and streaming write, and memory-mapped (sharded) safetensors.

pub mod ggml_type;
pub mod gguf;
pub mod safetensors;

pub use ggml_type::{GgmlType, ALL_TYPES};
