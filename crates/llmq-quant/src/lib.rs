//! GGML block quantizers and dequantizers, one module per block format, each with a
//! scalar reference (`*_ref`, a plain reading of the format) and a fast path that
//! produces the same bytes. Algorithms follow today's llama.cpp `ggml-quants.c`
//! (importance-weighted scale searches), not the 2023 ones.
//!
//! Every quantizer takes optional importance weights (an imatrix row: one weight per
//! column of the row, i.e. per input feature), as llama.cpp's `quantize_*` do.

pub mod float;
pub mod isa;
pub mod search;

pub mod iq4_nl;
pub mod iq4_xs;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;

pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;

mod dispatch;
pub use dispatch::*;
