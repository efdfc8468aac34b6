//! The one error type of this crate: reading a `config.json` or a tokenizer, and
//! building GGUF metadata, the tensor plan or the type mix.

use crate::config::Family;

/// Errors of the architecture layer.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// A file (`config.json`, a tokenizer file) cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// `config.json` is not JSON.
    #[error("config.json is not valid JSON: {0}")]
    ConfigJson(#[from] serde_json::Error),
    /// `config.json` lacks a key the architecture needs.
    #[error("config.json lacks required key `{0}`")]
    MissingKey(String),
    /// A `config.json` value cannot be used.
    #[error("config.json key `{key}` has an unusable value: {why}")]
    BadValue { key: String, why: String },
    /// A `config.json` value that changes the model's math and that this project does
    /// not implement (an unknown `rope_type`, activation, ...): refused, never ignored.
    #[error("config.json `{key}` = {value} is not implemented (it changes the model's computation, so it cannot be ignored)")]
    UnsupportedValue { key: String, value: String },
    /// The architecture is not one this project implements.
    #[error("unsupported architecture `{0}` (supported: {list})", list = Family::supported_list())]
    Unsupported(String),
    /// A tokenizer file is not JSON.
    #[error("{file} is not valid JSON: {source}")]
    TokenizerJson {
        file: String,
        source: serde_json::Error,
    },
    /// A tokenizer model or pre-tokenizer that GGUF export does not handle.
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    /// `tokenizer.json` is inconsistent.
    #[error("malformed tokenizer.json: {0}")]
    MalformedTokenizer(String),
    /// The configuration cannot be expressed as GGUF metadata.
    #[error("{0}")]
    Unrepresentable(String),
    /// HF tensors that no GGUF name maps to.
    #[error("HF tensors with no GGUF mapping for {family:?}: {names:?}")]
    Unmapped { family: Family, names: Vec<String> },
    /// A layer lacks some of its experts' tensors.
    #[error("layer {layer}: expert tensors incomplete ({have} of {want}): {example}")]
    IncompleteExperts {
        layer: usize,
        have: usize,
        want: usize,
        example: String,
    },
    /// A tensor's shape does not fit its role or transform.
    #[error("tensor {name}: {why}")]
    Shape { name: String, why: String },
    /// Two HF tensors map to one GGUF name.
    #[error("duplicate GGUF tensor name {0}")]
    Duplicate(String),
    /// The mix rules cannot place a tensor in a layer.
    #[error("cannot determine the layer of {0} (MoE models need `blk.N.` names)")]
    NoLayer(String),
    /// A GGUF model (architecture, metadata key, tokenizer or tensor) that the
    /// GGUF → Hugging Face reverse mapping does not handle.
    #[error("cannot convert this GGUF to Hugging Face: {0}")]
    NotReversible(String),
    /// A tensor names a layer the model does not have.
    #[error("tensor {name}: layer {layer} out of range [0, {n_layer})")]
    BadLayer {
        name: String,
        layer: usize,
        n_layer: usize,
    },
}

/// Result with [`ArchError`].
pub type Result<T> = std::result::Result<T, ArchError>;
