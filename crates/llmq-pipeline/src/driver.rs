//! `quantize`: the one entry point for every output format. The stages run in this
//! order, whatever the format:
//!
//! 1. **request** — checked as a whole ([`QuantizeRequest::check`]);
//! 2. **source** — a local folder, a Hub id (downloaded) or a GGUF file;
//! 3. **calibrate / measure / allocate / quantize / write / validate** — in the
//!    executor the method registry names ([`crate::methods::Method::execution`]): streaming
//!    ([`crate::quantize`] + [`crate::run`]) for the GGML block quantizers,
//!    block-sequential ([`crate::calibrated`]) for GPTQ, AWQ and round-to-nearest;
//!    both read each tensor's spec from an [`crate::allocate::Allocation`], stage the
//!    output under a temporary name ([`crate::staging`]), checkpoint through one
//!    mechanism ([`crate::checkpoint`]) and report with one type
//!    ([`crate::report`]).

use crate::error::Result;
use crate::methods::Execution;
use crate::report::QuantizeOutcome;
use crate::request::QuantizeRequest;
use crate::run::Progress;
use crate::source;

/// Quantize `req.model` into `req.format` at `req.level`.
pub fn quantize(req: &QuantizeRequest, progress: &dyn Progress) -> Result<QuantizeOutcome> {
    req.check()?;
    progress.message(&format!("Loading model: {}", req.model));
    let resolved = source::resolve(&req.model, req.token.clone(), progress)?;
    // floating-point grids by round-to-nearest are streamed; GPTQ / MR-GPTQ on them
    // are block-sequential
    if let Some(scheme) = crate::fp_export::fp_scheme(req) {
        if req.method == crate::methods::Method::Rtn {
            return crate::fp_export::quantize_fp(req, resolved, progress, scheme);
        }
    }
    match req.method.execution() {
        Execution::Streaming => crate::quantize::quantize_streaming(req, resolved, progress),
        Execution::BlockSequential => crate::calibrated::quantize_blocks(req, resolved, progress),
    }
}
