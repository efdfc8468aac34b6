//! The output writers of calibrated quantization: one [`IntWriter`] per Hugging Face
//! layout, each in a file of its own, all packing the one integer representation
//! ([`IntQuantized`]) through `llmq-hfquant`. [`writer_for`] is the registry: adding a
//! layout is one file here, one arm there and one [`OutputFormat`] variant.

mod awq;
mod compressed_tensors;
mod gptq;

use crate::request::{IntGrid, OutputFormat, QuantizeRequest};
use llmq_hfquant::{HfTensor, IntQuantized};
use serde_json::Value;
use std::path::Path;

/// Packs quantized modules into one layout and reads them back.
pub(super) trait IntWriter {
    /// The packed tensors of one module, named under `prefix` (`model.layers.0.mlp.up_proj`).
    fn pack(&self, prefix: &str, q: &IntQuantized)
        -> llmq_hfquant::Result<Vec<(String, HfTensor)>>;
    /// One module read back from written tensors (`get` by full name); `like` gives
    /// the shape and grouping the layout does not store.
    fn read(
        &self,
        get: &dyn Fn(&str) -> Option<HfTensor>,
        prefix: &str,
        like: &IntQuantized,
    ) -> Result<IntQuantized, String>;
    /// config.json's `quantization_config`; `ignored` modules stay in full precision,
    /// `any_g_idx` tells whether a module has an act-order permutation.
    fn quantization_config(&self, ignored: &[String], any_g_idx: bool) -> Value;
    /// Files the layout wants beside config.json.
    fn extra_files(&self, _dir: &Path, _qc: &Value) -> llmq_hfquant::Result<()> {
        Ok(())
    }
}

/// The writer of the requested layout, for modules on `grid` (`None`: GGUF, which
/// has no integer-grid writer).
pub(super) fn writer_for(req: &QuantizeRequest, grid: IntGrid) -> Option<Box<dyn IntWriter + '_>> {
    Some(match req.format {
        OutputFormat::Gptq(fmt) => Box::new(gptq::GptqWriter { req, grid, fmt }),
        OutputFormat::Awq => Box::new(awq::AwqWriter { grid }),
        OutputFormat::CompressedTensors => Box::new(compressed_tensors::CtWriter { grid }),
        OutputFormat::Gguf => return None,
    })
}

/// The grid a quantized module is on.
pub(super) fn grid_of(q: &IntQuantized) -> IntGrid {
    IntGrid {
        bits: q.bits,
        group_size: q.group_size,
        symmetric: q.symmetric,
        act_order: q.g_idx.is_some(),
    }
}

/// The writer of `req`'s layout for modules on `grid`, or an error for GGUF.
pub(super) fn int_writer(
    req: &QuantizeRequest,
    grid: IntGrid,
) -> crate::error::Result<Box<dyn IntWriter + '_>> {
    writer_for(req, grid).ok_or_else(|| {
        crate::error::PipelineError::general(
            format!("{} has no integer-grid writer", req.format.name()),
            "Report this as a bug",
        )
    })
}

/// `prefix.name` from `get`, or why not.
fn fetch(
    get: &dyn Fn(&str) -> Option<HfTensor>,
    prefix: &str,
    name: &str,
) -> Result<HfTensor, String> {
    get(&format!("{prefix}.{name}")).ok_or_else(|| format!("missing {prefix}.{name}"))
}
