//! Errors of this crate.

use std::path::PathBuf;

/// What can go wrong while packing, unpacking or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The [`crate::IntQuantized`] (or packed tensors) are inconsistent.
    #[error("invalid quantized tensor: {0}")]
    Invalid(String),
    /// The layout cannot represent this tensor (bits, shape, act-order, ...).
    #[error("{layout} cannot store this tensor: {what}")]
    Unsupported { layout: &'static str, what: String },
    /// A checkpoint this crate cannot read (method, format, bits, ...).
    #[error("unsupported quantized checkpoint: {0}")]
    UnsupportedCheckpoint(String),
    /// A `quantization_config` that does not make sense.
    #[error("quantization config: {0}")]
    Config(String),
    /// A stored tensor is missing, of the wrong dtype or shape.
    #[error("tensor `{name}`: {why}")]
    Tensor { name: String, why: String },
    #[error("I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JSON error in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

pub(crate) fn unsupported(layout: &'static str, what: impl Into<String>) -> Error {
    Error::Unsupported {
        layout,
        what: what.into(),
    }
}
