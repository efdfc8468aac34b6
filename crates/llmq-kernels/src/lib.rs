//! The compute layer: weight matrices stored in any GGML type (mapped from GGUF or
//! owned) and the matrix products model code runs on them (`kernels::matmul`).

pub mod kernels;
pub mod tensor;

pub use kernels::matmul;
pub use tensor::{ByteOwner, Bytes, WeightMatrix};
