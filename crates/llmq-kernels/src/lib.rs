//! The compute layer: weight matrices stored in any GGML type (mapped from GGUF or
//! owned) or as group-wise integer blocks (GPTQ / AWQ / compressed-tensors, see
//! [`int_blocks`]), and the matrix products model code runs on them (`kernels::matmul`).

pub mod int_blocks;
pub mod kernels;
pub mod tensor;

pub use int_blocks::IntGroups;
pub use kernels::matmul;
pub use tensor::{ByteOwner, Bytes, ColumnOrder, IntAct, IntType, WeightMatrix, WeightType};
