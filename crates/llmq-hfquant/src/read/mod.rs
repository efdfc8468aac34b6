//! Readers symmetric to the writers: a Hugging Face checkpoint folder (GPTQ v1/v2,
//! AutoAWQ GEMM, compressed-tensors pack-quantized / int-quantized / dense, or plain
//! float safetensors) read into one representation per tensor, [`HfWeight`]: the
//! integer groups of a quantized linear layer ([`crate::IntQuantized`]) or a dense
//! tensor as stored.
//!
//! | module | job |
//! |---|---|
//! | [`scheme`] | `quantization_config` → [`HfQuantScheme`] |
//! | [`modules`] | find the quantized modules, decode each into `IntQuantized` |
//! | [`checkpoint`] | a whole folder: config, tensor list, [`HfWeight`] per tensor |

pub mod checkpoint;
pub mod modules;
pub mod scheme;

pub use checkpoint::{HfCheckpoint, HfWeight};
pub use modules::{read_tensor, QuantizedModules};
pub use scheme::{CtFormat, CtGroup, HfQuantScheme};
