//! The method registry: every [`Method`], its name on the command line, and the
//! executor that runs it.
//!
//! * Streaming (per tensor, no forward pass): the GGML block quantizers of
//!   `llmq-quant` (k-quants, legacy, IQ4), importance-weighted when an imatrix is
//!   given — [`crate::run`] streams tensors through them into a GGUF.
//! * Block-sequential (calibration activations through the engine, block by block):
//!   GPTQ, MR-GPTQ, AWQ, round-to-nearest and trellis (EXL3) — [`crate::calibrated`]; each entry there
//!   (`calibrated/methods.rs`) says what the measure stage must collect for it.
//!
//! A new block-sequential method is its variant and name here, its entry in
//! `calibrated/methods.rs`, its block driver `calibrated/<method>_block.rs` and its
//! solver in `llmq-calib`; the command line takes it by name.

/// How weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GGML block quantizers (k-quants, legacy, IQ4), importance-weighted when an
    /// imatrix is given
    KQuant,
    /// GPTQ (Frantar et al., arXiv 2210.17323)
    Gptq,
    /// AWQ (Lin et al., arXiv 2306.00978)
    Awq,
    /// round-to-nearest on the integer grid (on the floating-point grids: with
    /// FP-Quant's MSE scale search)
    Rtn,
    /// MR-GPTQ (arXiv 2509.23202): GPTQ on a floating-point grid after a block-Hadamard
    /// rotation of every Linear's input
    MrGptq,
    /// trellis coding with LDLQ (QTIP, arXiv 2406.11235; exllamav3's EXL3)
    Trellis,
}

/// How a method's quantize stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// tensor by tensor straight from the source, in parallel layers
    Streaming,
    /// block by block on calibration activations through the engine
    BlockSequential,
}

impl Method {
    /// Every method, in the order `--help` lists them.
    pub const ALL: [Method; 6] = [
        Method::Gptq,
        Method::MrGptq,
        Method::Awq,
        Method::Rtn,
        Method::Trellis,
        Method::KQuant,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::KQuant => "k-quant",
            Method::Gptq => "gptq",
            Method::Awq => "awq",
            Method::Rtn => "rtn",
            Method::MrGptq => "mr-gptq",
            Method::Trellis => "trellis",
        }
    }

    /// The method called `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The executor of this method.
    pub fn execution(self) -> Execution {
        match self {
            Method::KQuant => Execution::Streaming,
            Method::Gptq | Method::MrGptq | Method::Awq | Method::Rtn | Method::Trellis => {
                Execution::BlockSequential
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        assert_eq!(Method::from_name("GPTQ"), Some(Method::Gptq));
        assert_eq!(Method::from_name("exl3"), None);
        assert_eq!(Method::from_name("MR-GPTQ"), Some(Method::MrGptq));
    }
}
