//! Hugging Face quantized checkpoint layouts (GPTQ, AWQ, compressed-tensors): packing,
//! unpacking and writers. The quantizers (RTN, GPTQ, AWQ) produce [`IntQuantized`];
//! the layout modules turn it into each project's tensors, and [`writer`] puts them
//! into a (sharded) safetensors folder next to the source model's config and
//! tokenizer files.
//!
//! | module | layout | reference |
//! |---|---|---|
//! | [`rtn`] | round-to-nearest quantizer | AutoGPTQ `quantization/quantizer.py` |
//! | [`gptq`] | `qweight/qzeros/scales/g_idx` | AutoGPTQ `qlinear_cuda_old.py`, GPTQModel |
//! | [`awq`] | AutoAWQ GEMM | AutoAWQ `modules/linear/gemm.py`, `utils/packing_utils.py` |
//! | [`compressed_tensors`] | `pack-quantized` | `compressed-tensors` package |
//! | [`fp_quantized`] | NVFP4 / MXFP4 / FP8 grids ([`FpQuantized`]) | NVIDIA, OCP MX v1.0, FP-Quant |
//! | [`ct_fp`] | `nvfp4-` / `mxfp4-pack-quantized`, `float-quantized` | `compressed-tensors` package |
//!
//! [`read`] reads such folders back (the inverse of the writers), into [`IntQuantized`]
//! per quantized module and dense tensors for the rest.

pub mod awq;
pub mod bitpack;
pub mod compressed_tensors;
pub mod ct_fp;
pub mod error;
pub mod fp_quantized;
pub mod gptq;
pub mod hadamard;
pub mod int_quantized;
pub mod read;
pub mod rtn;
pub mod tensor;
pub mod writer;

pub use error::{Error, Result};
pub use fp_quantized::{FpQuantized, FpScheme};
pub use int_quantized::IntQuantized;
pub use tensor::{Dtype, HfTensor};
pub use writer::{ShardedWriter, WriteSummary};
