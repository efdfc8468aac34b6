//! Calibrated quantization: llama.cpp importance matrices ([`imatrix`]), GPTQ
//! ([`gptq`]) with its Hessian accumulator, GPTQ and MR-GPTQ on the floating-point
//! grids ([`fp_gptq`]), and AWQ ([`awq`]).

pub mod awq;
pub mod dataset;
pub mod fp_gptq;
pub mod gptq;
pub mod imatrix;

pub use gptq::{
    gptq_quantize, rtn_quantize, GptqConfig, GptqError, GptqResult, HessianAccumulator, HessianElem,
};
pub use imatrix::{add_squares, ImatrixCollector, ImatrixData, ImatrixEntry, ImatrixError};
