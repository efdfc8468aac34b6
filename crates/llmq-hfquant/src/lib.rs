//! Hugging Face quantized checkpoint layouts (GPTQ, AWQ, compressed-tensors): packing,
//! unpacking and writers. The quantizers (RTN, GPTQ, AWQ) produce [`IntQuantized`];
//! the layout modules turn it into each project's tensors.

pub mod int_quantized;

pub use int_quantized::IntQuantized;
