//! The quantize pipeline: one request type ([`QuantizeRequest`]) and one driver
//! ([`quantize`]) for every output format — source (local folder, Hub id, GGUF file)
//! → calibrate → measure → allocate → quantize → write → validate — with the method
//! registry choosing the executor, per-layer checkpoints, bounded memory and a
//! per-tensor error report; plus `convert` between quantized formats and `info`.

pub mod allocate;
pub mod calibrated;
pub mod checkpoint;
pub mod convert;
pub mod driver;
pub mod error;
pub mod fp_export;
pub mod gguf_source;
pub mod hf_source;
pub mod hub;
pub mod hub_headers;
pub mod info;
pub mod memory;
pub mod methods;
pub mod quantize;
pub mod report;
pub mod request;
pub mod run;
pub mod source;
pub mod staging;
pub mod target_bpw;
#[doc(hidden)]
pub mod test_hooks;
pub mod writers;

pub use checkpoint::CheckpointOptions;
pub use driver::quantize;
pub use error::{ErrorKind, PipelineError, Result};
pub use info::{model_info, ModelInfo, QuantizedInfo};
pub use report::{CalibrationDetail, CalibrationSummary, QuantizeOutcome, TensorReport};
pub use request::{
    exl3_bpw, exl3_k, CalibDevice, CalibrationRequest, IntGrid, Layout, Method, OutputFormat,
    QuantizeRequest, TargetBpw,
};
pub use run::{NoProgress, Progress, CANCEL};
