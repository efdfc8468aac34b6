//! The compute layer: weight matrices stored in any GGML type (mapped from GGUF or
//! owned), as group-wise integer blocks (GPTQ / AWQ / compressed-tensors, see
//! [`int_blocks`]) or as floating-point coded blocks (compressed-tensors NVFP4 / MXFP4 /
//! FP8, see [`fp_blocks`]), as EXL3 trellis codes ([`trellis`]), and the matrix products model code runs on them
//! (`kernels::matmul`).
//!
//! Modules depend one way: `weight_type`, `int_blocks`, `fp_blocks` and `dequant` (rows to f32) at
//! the bottom, `tensor` (the matrices) on them, `kernels` (the products) on top. CPU
//! features come from `llmq_quant::isa` (re-exported as `kernels::Isa`).

pub mod dequant;
pub mod error;
pub mod fp_blocks;
pub mod int_blocks;
pub mod kernels;
pub mod rotation;
pub mod tensor;
pub mod trellis;
pub mod weight_type;

pub use error::KernelError;
pub use fp_blocks::{FpGrid, FpGroups, FpType};
pub use int_blocks::IntGroups;
pub use kernels::matmul;
pub use tensor::{ByteOwner, Bytes, ColumnOrder, IntAct, IntType, WeightMatrix, WeightType};
pub use trellis::TrellisSides;
pub use weight_type::{Codebook, TrellisType};
