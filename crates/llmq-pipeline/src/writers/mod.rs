//! The Hugging Face output writers, shared by calibrated quantization and `convert`: one
//! [`IntWriter`] per layout, each in a file of its own, all packing the one integer
//! representation ([`IntQuantized`]) through `llmq-hfquant`. [`writer_for`] is the
//! registry: adding a layout is one file here, one [`Layout`] variant and its arm.

mod awq;
mod compressed_tensors;
mod gptq;

use llmq_hfquant::gptq::GptqFormat;
use llmq_hfquant::{HfTensor, IntQuantized};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// A Hugging Face quantized layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// GPTQModel / AutoGPTQ (`qweight`/`qzeros`/`scales`/`g_idx`), v1 or v2 zero points
    Gptq(GptqFormat),
    /// AutoAWQ GEMM
    Awq,
    /// compressed-tensors pack-quantized
    CompressedTensors,
}

impl Layout {
    /// The format's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Gptq(_) => "gptq",
            Layout::Awq => "awq",
            Layout::CompressedTensors => "compressed-tensors",
        }
    }
}

/// The grid and provenance a layout's `quantization_config` describes.
#[derive(Clone, Debug, PartialEq)]
pub struct LayoutSpec {
    pub bits: u8,
    /// `None` = per channel
    pub group_size: Option<usize>,
    pub symmetric: bool,
    /// GPTQ `desc_act`
    pub act_order: bool,
    /// GPTQ `damp_percent`
    pub damp_percent: f64,
    /// GPTQ `meta.calibration_method`, when a calibration method made the weights
    pub method: Option<&'static str>,
}

/// Packs quantized modules into one layout and reads them back.
pub trait IntWriter {
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
    /// [`Self::quantization_config`] for modules of several bit widths: `bits` maps
    /// every quantized module (`model.layers.0.mlp.down_proj`) to its width; the
    /// writer's own grid gives the rest (group size, symmetry, and the base width).
    fn quantization_config_mixed(
        &self,
        _ignored: &[String],
        _any_g_idx: bool,
        _bits: &BTreeMap<String, u8>,
    ) -> Result<Value, String> {
        Err("this layout stores one bit width for every module".into())
    }
    /// Files the layout wants beside config.json.
    fn extra_files(&self, _dir: &Path, _qc: &Value) -> llmq_hfquant::Result<()> {
        Ok(())
    }
}

/// The writer of `layout` for weights on `spec`'s grid.
pub fn writer_for(layout: Layout, spec: LayoutSpec) -> Box<dyn IntWriter> {
    match layout {
        Layout::Gptq(fmt) => Box::new(gptq::GptqWriter { spec, fmt }),
        Layout::Awq => Box::new(awq::AwqWriter { spec }),
        Layout::CompressedTensors => Box::new(compressed_tensors::CtWriter { spec }),
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
