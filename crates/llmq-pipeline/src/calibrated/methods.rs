//! The block-sequential entries of the method registry ([`crate::methods`]): what each
//! method needs the measure stage to collect, and how it quantizes the Linears of one
//! block — GPTQ and round-to-nearest in [`super::gptq_block`], AWQ in
//! [`super::awq_block`], trellis (EXL3) in [`super::trellis_block`], GPTQ and MR-GPTQ
//! on the floating-point grids in [`super::fp_block`].

use super::observe::Collector;
use super::Tensors;
use crate::allocate::Allocation;
use crate::checkpoint::block_codec::FpModule;
use crate::error::Result;
use crate::report::TensorReport;
use crate::request::{Method, QuantizeRequest};
use llmq_engine::Model;
use llmq_hfquant::IntQuantized;
use llmq_trellis::quantize::Exl3Linear;
use std::collections::HashMap;

/// What a method needs from the measure stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    /// GPTQ's `2/n·XᵀX` per Linear input
    pub(crate) hessian: bool,
    /// AWQ's `mean|x|` and a row sample per Linear input
    pub(crate) awq_stats: bool,
    /// every calibration batch, and the quantized block's outputs as the next block's
    /// inputs (without it: one batch to find the Linears, activations stay the
    /// embeddings)
    pub(crate) block_outputs: bool,
}

/// Everything a method sees while quantizing one block.
pub(super) struct BlockCx<'a> {
    pub(super) req: &'a QuantizeRequest,
    pub(super) alloc: &'a Allocation,
    pub(super) tensors: &'a Tensors,
    pub(super) model: &'a mut Model,
    pub(super) layer: usize,
    pub(super) col: &'a Collector,
    /// experts per token (1 for dense models)
    pub(super) top_k: usize,
    /// the quantized modules, in the order produced
    pub(super) out: &'a mut Vec<(String, IntQuantized, TensorReport)>,
    /// the trellis-coded modules (EXL3), in the order produced
    pub(super) trellis_out: &'a mut Vec<(String, Exl3Linear, TensorReport)>,
    /// the floating-point-coded modules (GPTQ / MR-GPTQ on NVFP4, MXFP4, FP8)
    pub(super) fp_out: &'a mut Vec<(String, FpModule, TensorReport)>,
    /// norms (HF name → values as stored) that scales were folded into
    pub(super) overrides: &'a mut HashMap<String, Vec<f32>>,
}

/// A method that quantizes a model block by block on calibration activations.
pub(super) trait BlockMethod: Sync {
    fn needs(&self) -> Needs;
    fn quantize_block(&self, cx: BlockCx<'_>) -> Result<()>;
}

struct Gptq;
struct Rtn;
struct Awq;
struct Trellis;
struct FpGptq;

impl BlockMethod for Gptq {
    fn needs(&self) -> Needs {
        Needs {
            hessian: true,
            awq_stats: false,
            block_outputs: true,
        }
    }
    fn quantize_block(&self, cx: BlockCx<'_>) -> Result<()> {
        super::gptq_block::quantize_block_gptq(cx, true)
    }
}

impl BlockMethod for Rtn {
    fn needs(&self) -> Needs {
        Needs {
            hessian: false,
            awq_stats: false,
            block_outputs: false,
        }
    }
    fn quantize_block(&self, cx: BlockCx<'_>) -> Result<()> {
        super::gptq_block::quantize_block_gptq(cx, false)
    }
}

impl BlockMethod for Awq {
    fn needs(&self) -> Needs {
        Needs {
            hessian: false,
            awq_stats: true,
            block_outputs: true,
        }
    }
    fn quantize_block(&self, cx: BlockCx<'_>) -> Result<()> {
        super::awq_block::quantize_block_awq(cx)
    }
}

impl BlockMethod for Trellis {
    fn needs(&self) -> Needs {
        Needs {
            hessian: true,
            awq_stats: false,
            block_outputs: true,
        }
    }
    fn quantize_block(&self, cx: BlockCx<'_>) -> Result<()> {
        super::trellis_block::quantize_block_trellis(cx)
    }
}

impl BlockMethod for FpGptq {
    fn needs(&self) -> Needs {
        Needs {
            hessian: true,
            awq_stats: false,
            block_outputs: true,
        }
    }
    fn quantize_block(&self, cx: BlockCx<'_>) -> Result<()> {
        super::fp_block::quantize_block_fp(cx)
    }
}

/// The block-sequential implementation of `method` (on a floating-point grid when
/// `fp`), if it is one.
pub(super) fn block_method(method: Method, fp: bool) -> Option<&'static dyn BlockMethod> {
    match method {
        Method::Gptq | Method::MrGptq if fp => Some(&FpGptq),
        Method::MrGptq => None,
        Method::Gptq => Some(&Gptq),
        Method::Rtn => Some(&Rtn),
        Method::Awq => Some(&Awq),
        Method::Trellis => Some(&Trellis),
        Method::KQuant => None,
    }
}
