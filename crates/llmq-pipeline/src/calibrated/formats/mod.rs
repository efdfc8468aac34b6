//! The output writers of calibrated quantization: one [`IntWriter`] per Hugging Face
//! layout, each in a file of its own, all packing the one integer representation
//! ([`IntQuantized`]) through `llmq-hfquant`. [`writer_for`] is the registry: adding a
//! layout is one file here, one arm there and one [`HfFormat`] variant.

mod awq;
mod compressed_tensors;
mod gptq;

use super::{CalibratedRequest, HfFormat};
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

/// The writer of the requested layout.
pub(super) fn writer_for(req: &CalibratedRequest) -> Box<dyn IntWriter + '_> {
    match req.format {
        HfFormat::Gptq(fmt) => Box::new(gptq::GptqWriter { req, fmt }),
        HfFormat::Awq => Box::new(awq::AwqWriter { req }),
        HfFormat::CompressedTensors => Box::new(compressed_tensors::CtWriter { req }),
    }
}

/// `prefix.name` from `get`, or why not.
fn fetch(
    get: &dyn Fn(&str) -> Option<HfTensor>,
    prefix: &str,
    name: &str,
) -> Result<HfTensor, String> {
    get(&format!("{prefix}.{name}")).ok_or_else(|| format!("missing {prefix}.{name}"))
}
