//! The quantize pipeline: resolve a source (local folder, Hub id, GGUF file), plan
//! the output (tensor names, types from the mix rules, metadata), then stream layer
//! by layer through the quantizers into a GGUF written in place, with per-layer
//! checkpoints, bounded memory and per-tensor error measurement.

pub mod calib_checkpoint;
pub mod calibrated;
pub mod checkpoint;
pub mod convert;
pub mod error;
pub mod gguf_source;
pub mod hf_source;
pub mod hub;
pub mod info;
pub mod memory;
pub mod quantize;
pub mod run;
pub mod source;
#[doc(hidden)]
pub mod test_hooks;
pub mod writers;

pub use calibrated::{
    quantize_calibrated, CalibTensorStat, CalibratedOutcome, CalibratedRequest, HfFormat, Method,
};
pub use error::{ErrorKind, PipelineError, Result};
pub use info::{model_info, ModelInfo, QuantizedInfo};
pub use quantize::{quantize_gguf, QuantizeOutcome, QuantizeRequest};
pub use run::{CheckpointOptions, NoProgress, Progress, CANCEL};
