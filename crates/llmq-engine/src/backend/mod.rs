//! The compute seam of the decoder: every number the model computes goes through a
//! [`Backend`], which owns the memory (activation buffers, weights, KV caches) and
//! implements the operations a decoder block needs. Model code (`crate::model`) is
//! written once against this trait; [`Cpu`] is the host implementation and `cuda::Cuda`
//! (feature `cuda`) the NVIDIA GPU one.
//!
//! The split follows candle's storage split (one storage type per device behind one
//! interface): a backend's buffers live where it computes (host `Vec<f32>` for
//! [`Cpu`]; device memory for an accelerator), weights are uploaded once when the model
//! loads ([`Backend::upload_weight`]), and data crosses back to the host only where
//! the caller needs host values (logits, calibration observers, MoE routing
//! decisions). Adding a backend means adding a file beside `cpu.rs` that implements
//! this trait; model code does not change.
//!
//! Buffers are flat row-major f32 arrays: the operations take the row width they work
//! on, as the model knows its shapes.

mod api;
mod cpu;
mod cpu_attention;
#[cfg(feature = "cuda")]
pub mod cuda;
mod linear;

pub use api::{Activation, AttnShape, Backend, KvView, MlaShape, Rope, Routing, TokenMap};
pub use cpu::Cpu;
#[cfg(feature = "cuda")]
pub use cuda::Cuda;
pub use linear::Linear;
