//! GGUF v3 (llama.cpp's model container), as specified in `ggml/docs/gguf.md` and
//! implemented by `ggml/src/gguf.cpp`: a memory-mapped [`GgufFile`] reader that treats
//! its input as hostile, and a [`GgufStreamWriter`] that lays the whole file out from a
//! [`GgufPlan`] up front so tensors can be written in any order, from several threads,
//! and resumed after a crash.
//!
//! File layout (all little-endian): `"GGUF"`, `u32 version`, `u64 tensor_count`,
//! `u64 kv_count`, the KV pairs, the tensor infos (`name`, `u32 n_dims`,
//! `u64 ne[n_dims]`, `u32 ggml_type`, `u64 offset`), zero padding up to the alignment,
//! then the data section where each tensor starts at `offset` (a multiple of the
//! alignment, relative to the data section).

mod reader;
mod value;
mod writer;

use std::path::PathBuf;

pub use reader::{GgufFile, GgufTensorInfo};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use writer::{temp_path_for, GgufLayout, GgufPlan, GgufStreamWriter, PlannedTensor, TensorRef};

/// `"GGUF"` as the first four bytes of the file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The first bytes of a GGUF file still being written (`<final>.tmp`): the stream
/// writer puts [`GGUF_MAGIC`] in place only when every tensor is written, so no reader
/// takes an unfinished or abandoned output for a model.
pub const GGUF_PARTIAL_MAGIC: [u8; 4] = *b"GGU~";
/// The version this crate writes.
pub const GGUF_VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u32 = 32;
/// Metadata key that overrides the alignment (must be a `u32` power of two).
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// Metadata key naming the model architecture (`llama`, `qwen2`, ...).
pub const KEY_ARCHITECTURE: &str = "general.architecture";
/// Metadata key holding the `llama_ftype` (e.g. 15 = MOSTLY_Q4_K_M).
pub const KEY_FILE_TYPE: &str = "general.file_type";
/// ggml's `GGML_MAX_NAME`: a tensor name must be shorter than this (it is stored in a
/// `char[64]` with its NUL terminator), so at most 63 bytes.
pub const GGML_MAX_NAME: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const GGML_MAX_DIMS: usize = 4;
/// Deepest array-of-array nesting the reader accepts (bounds recursion on hostile input).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Errors reading, planning or writing a GGUF file. Offsets are byte offsets from the
/// start of the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("I/O error while {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: String,
        source: std::io::Error,
    },
    #[error("GGUF truncated at offset {offset}: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        offset: u64,
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("not a GGUF file: first bytes are {found:02x?}, expected \"GGUF\" [47, 47, 55, 46]")]
    BadMagic { found: Vec<u8> },
    /// The unfinished output of an interrupted or failed run ([`GGUF_PARTIAL_MAGIC`]).
    #[error("an unfinished GGUF output (an interrupted or failed run left it; finish it with `quantize … --resume` or delete it), not a model")]
    Unfinished,
    #[error("unsupported GGUF version {version} (offset 4): {why}")]
    UnsupportedVersion { version: u32, why: &'static str },
    #[error("unknown GGUF value type id {type_id} at offset {offset} ({context})")]
    UnknownValueType {
        offset: u64,
        type_id: u32,
        context: String,
    },
    #[error("tensor '{tensor}' has unknown ggml type id {type_id} (offset {offset})")]
    UnknownGgmlType {
        offset: u64,
        tensor: String,
        type_id: u32,
    },
    #[error("invalid UTF-8 at offset {offset} in {what}")]
    InvalidUtf8 { offset: u64, what: String },
    #[error("duplicate metadata key '{key}' at offset {offset}")]
    DuplicateKey { offset: u64, key: String },
    #[error("duplicate tensor name '{name}' at offset {offset}")]
    DuplicateTensor { offset: u64, name: String },
    #[error("invalid GGUF at offset {offset}: {why}")]
    Invalid { offset: u64, why: String },
    #[error("invalid GGUF plan: {0}")]
    InvalidPlan(String),
    #[error("tensor {0} is not in the plan")]
    UnknownTensor(String),
    #[error("tensor '{name}' has {got} bytes but the plan expects {expected}")]
    TensorSizeMismatch {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("tensor '{name}' was already written (or is being written by another thread)")]
    TensorWrittenTwice { name: String },
    #[error("cannot finish {path}: {} of the planned tensors were never written (first: '{}')", missing.len(), missing.first().map(String::as_str).unwrap_or(""))]
    MissingTensors { path: PathBuf, missing: Vec<String> },
    #[error("cannot resume {path}: {why}")]
    ResumeMismatch { path: PathBuf, why: String },
}

pub(crate) fn io_error(
    path: &std::path::Path,
    action: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> GgufError {
    let path = path.to_path_buf();
    let action = action.into();
    move |source| GgufError::Io {
        path,
        action,
        source,
    }
}

/// `n` rounded up to a multiple of `alignment` (a power of two); `None` on overflow.
pub(crate) fn align_up(n: u64, alignment: u64) -> Option<u64> {
    debug_assert!(alignment.is_power_of_two());
    Some(n.checked_add(alignment - 1)? & !(alignment - 1))
}

/// Bytes of a tensor of shape `ne` and type `t`, with the checks llama.cpp makes:
/// at most 4 dims, each ≤ `i64::MAX`, element count ≤ `i64::MAX`, row length a
/// multiple of the block size. The error says what is wrong (without location).
pub(crate) fn tensor_nbytes(ne: &[u64], t: crate::GgmlType) -> Result<u64, String> {
    if ne.len() > GGML_MAX_DIMS {
        return Err(format!(
            "{} dimensions, at most {GGML_MAX_DIMS} allowed",
            ne.len()
        ));
    }
    let mut n_elements: u64 = 1;
    for (i, &d) in ne.iter().enumerate() {
        if d > i64::MAX as u64 {
            return Err(format!("dimension {i} is {d}, more than i64::MAX"));
        }
        n_elements = n_elements
            .checked_mul(d)
            .filter(|n| *n <= i64::MAX as u64)
            .ok_or_else(|| format!("shape {ne:?} has more than i64::MAX elements"))?;
    }
    let block = t.block_size() as u64;
    let row = ne.first().copied().unwrap_or(1);
    if row % block != 0 {
        return Err(format!(
            "row length ne[0] = {row} is not a multiple of the {t} block size {block}"
        ));
    }
    (n_elements / block)
        .checked_mul(t.type_size() as u64)
        .ok_or_else(|| format!("shape {ne:?} of type {t} has a byte size beyond u64"))
}
