//! `quantize MODEL exl3 --target-bpw X`: the measured allocator for EXL3 — one trellis
//! K per group of Linears ([`super::linears`]), measured at the candidate K's
//! [`candidate_ks`] (⌊X⌋−1, ⌊X⌋, ⌊X⌋+1 within 1…8): each group trellis-coded at K
//! without LDLQ ([`super::rounding`]), everything else at the source's precision.

use super::linears::{allocate_linears, LinearInputs};
use super::rounding::Candidate;
use super::AllocationReport;
use crate::error::{PipelineError, Result};
use crate::request::CalibrationRequest;
use crate::run::Progress;
use std::collections::BTreeMap;
use std::path::Path;

/// The candidate K's for a target of `bpw` bits per weight (1…8).
pub fn candidate_ks(bpw: f64) -> Vec<u32> {
    let f = bpw.floor() as i64;
    (f - 1..=f + 1)
        .filter(|k| (1..=8).contains(k))
        .map(|k| k as u32)
        .collect()
}

/// The K of every target and the report, for `target_bpw` (1…8).
pub fn allocate_exl3(
    target_bpw: f64,
    measurements: Option<&Path>,
    per_expert: bool,
    inputs: &LinearInputs<'_>,
    calibration: &CalibrationRequest,
    progress: &dyn Progress,
) -> Result<(BTreeMap<String, u32>, AllocationReport)> {
    if !(target_bpw.is_finite() && (1.0..=8.0).contains(&target_bpw)) {
        return Err(PipelineError::invalid(
            format!("--target-bpw {target_bpw} is out of range for exl3"),
            "Use 1.0 to 8.0",
        ));
    }
    let cands: Vec<Candidate> = candidate_ks(target_bpw)
        .into_iter()
        .map(Candidate::Trellis)
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_bracket_the_target() {
        assert_eq!(candidate_ks(3.5), vec![2, 3, 4]);
        assert_eq!(candidate_ks(4.0), vec![3, 4, 5]);
        assert_eq!(candidate_ks(1.0), vec![1, 2]);
        assert_eq!(candidate_ks(8.0), vec![7, 8]);
    }
}
