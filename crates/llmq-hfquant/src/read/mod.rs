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
//! | [`ggml`] | GGUF `Q4_0` / `Q5_0` / `Q8_0` blocks → `IntQuantized` (exact) |

pub mod checkpoint;
pub mod ggml;
pub mod modules;
pub mod scheme;
pub mod transform;

pub use checkpoint::{dense_f32, HfCheckpoint, HfWeight};
pub use ggml::int_from_ggml;
pub use modules::{read_tensor, QuantizedModules};
pub use scheme::{CtFormat, CtGroup, HfQuantScheme};
pub use transform::InputRotation;
