//! Trellis-coded quantization compatible with exllamav3's EXL3 format (QTIP: Tseng, Sun, Hou,
//! De Sa, arXiv 2406.11235; exllamav3 1.x by turboderp): the codebooks, the packed bitstream, the
//! tail-biting Viterbi encoder, decoding, and the incoherence-processed LDLQ around them.

pub mod bands;
pub mod bitstream;
pub mod codebook;
pub mod decode;
pub mod exl3_format;
pub mod gemv;
pub mod hadamard;
pub mod ldl;
pub mod quantize;
pub mod regularize;
pub mod viterbi;

pub use codebook::Codebook;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TrellisError {
    /// A trellis shape the encoder cannot run.
    #[error("unsupported trellis: {l} state bits, {k} bits per step (need 1 <= k, 2k <= l <= 16)")]
    BadTrellis { l: u32, k: u32 },
    /// A tensor of the wrong size.
    #[error("{what}: expected {expected} values, got {got}")]
    Shape {
        what: String,
        expected: usize,
        got: usize,
    },
    /// The Hessian could not be factored.
    #[error("{0}")]
    Numerical(String),
}
