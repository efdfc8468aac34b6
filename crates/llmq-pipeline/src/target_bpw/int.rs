//! `quantize MODEL gptq|compressed-tensors --target-bpw X`: the measured allocator for
//! the integer layouts — one bit width per group of Linears ([`super::linears`]) on the
//! request's group size and symmetry, measured at [`candidates`] (each group rounded to
//! nearest on the min-max grid at that width, [`super::rounding`], everything else at
//! the source's precision), and written as the runtimes read per-module widths:
//! GPTQModel's `dynamic` overrides of `bits` for GPTQ, one config group per width with
//! its modules as explicit `targets` for compressed-tensors
//! ([`crate::writers::IntWriter::quantization_config_mixed`]).

use super::linears::{allocate_linears, LinearInputs};
use super::rounding::Candidate;
use super::AllocationReport;
use crate::allocate::{Allocation, QuantSpec, TensorSpec};
use crate::error::{PipelineError, Result};
use crate::request::{CalibrationRequest, IntGrid, Method};
use crate::run::Progress;
use crate::writers::Layout;
use std::collections::BTreeMap;
use std::path::Path;

/// The widths measured and written: 2, 3, 4, 8 — GPTQModel's packings, and the
/// widths our GPTQ solver (`llmq_calib::gptq`) takes; compressed-tensors'
/// `pack-quantized` would hold any width from 2 to 8, the solver does not.
pub fn widths(_layout: Layout) -> &'static [u8] {
    &[2, 3, 4, 8]
}

/// The candidates of `layout` on one group size and symmetry.
pub fn candidates(layout: Layout, group_size: Option<usize>, symmetric: bool) -> Vec<Candidate> {
    widths(layout)
        .iter()
        .map(|&bits| {
            Candidate::Int(IntGrid {
                bits,
                group_size,
                symmetric,
                act_order: false,
            })
        })
        .collect()
}

/// The bits of every target and the report, for `target_bpw` within the layout's
/// widths, on `base`'s group size and symmetry.
#[allow(clippy::too_many_arguments)]
pub fn allocate_int(
    target_bpw: f64,
    layout: Layout,
    base: IntGrid,
    measurements: Option<&Path>,
    per_expert: bool,
    inputs: &LinearInputs<'_>,
    calibration: &CalibrationRequest,
    progress: &dyn Progress,
) -> Result<(BTreeMap<String, u32>, AllocationReport)> {
    let w = widths(layout);
    let (lo, hi) = (w[0] as f64, w[w.len() - 1] as f64);
    if !(target_bpw.is_finite() && (lo..=hi).contains(&target_bpw)) {
        return Err(PipelineError::invalid(
            format!(
                "--target-bpw {target_bpw} is out of range for {} (bit widths {w:?})",
                layout.name()
            ),
            format!("Use {lo} to {hi}"),
        ));
    }
    let cands = candidates(layout, base.group_size, base.symmetric);
    allocate_linears(
        target_bpw,
        &cands,
        measurements,
        per_expert,
        inputs,
        calibration,
        progress,
    )
}

/// `base` (method, group size, symmetry, act-order) for every Linear, at the width
/// `bits` gives each listed one.
pub fn allocation(method: Method, base: IntGrid, bits: &BTreeMap<String, u32>) -> Allocation {
    let mut a = Allocation::uniform(method, base);
    for (name, &b) in bits {
        a.set(
            name,
            TensorSpec {
                method,
                quant: QuantSpec::Int(IntGrid {
                    bits: b as u8,
                    ..base
                }),
            },
        );
    }
    a
}
