//! The writer of a calibrated run's layout, from the shared registry
//! ([`crate::writers`]): each module packed and read back on its own grid (the one the
//! allocation gave it), and the checkpoint-wide `quantization_config` from the
//! request's grid, act-order, damping and method.

use crate::error::{PipelineError, Result};
use crate::request::{IntGrid, OutputFormat, QuantizeRequest};
use crate::writers::{self, IntWriter, LayoutSpec};
use llmq_hfquant::IntQuantized;

/// The grid a quantized module is on.
pub(super) fn grid_of(q: &IntQuantized) -> IntGrid {
    IntGrid {
        bits: q.bits,
        group_size: q.group_size,
        symmetric: q.symmetric,
        act_order: q.g_idx.is_some(),
    }
}

/// The writer of `req`'s layout for modules on `grid`.
pub(super) fn int_writer(req: &QuantizeRequest, grid: IntGrid) -> Result<Box<dyn IntWriter>> {
    let layout = match req.format {
        OutputFormat::Hf(layout) => layout,
        OutputFormat::Gguf | OutputFormat::Exl3 => {
            return Err(PipelineError::general(
                format!("{} has no integer-grid writer", req.format.name()),
                "Report this as a bug",
            ))
        }
    };
    Ok(writers::writer_for(
        layout,
        LayoutSpec {
            bits: grid.bits,
            group_size: grid.group_size,
            symmetric: grid.symmetric,
            act_order: grid.act_order,
            damp_percent: req.damp_percent,
            method: Some(req.method.name()),
        },
    ))
}
