//! The writer of a calibrated request's layout, from the shared registry
//! ([`crate::writers`]): the request's grid, act-order, damping and method as the
//! layout's `quantization_config` records them.

use super::{CalibratedRequest, HfFormat};
use crate::writers::{self, IntWriter, Layout, LayoutSpec};

/// The writer of the requested layout.
pub(super) fn writer_for(req: &CalibratedRequest) -> Box<dyn IntWriter> {
    let layout = match req.format {
        HfFormat::Gptq(fmt) => Layout::Gptq(fmt),
        HfFormat::Awq => Layout::Awq,
        HfFormat::CompressedTensors => Layout::CompressedTensors,
    };
    writers::writer_for(
        layout,
        LayoutSpec {
            bits: req.bits,
            group_size: req.group_size,
            symmetric: req.symmetric,
            act_order: req.act_order,
            damp_percent: req.damp_percent,
            method: Some(req.method.name()),
        },
    )
}
