//! The calibrate stage: calibration text (a file, or the bundled set) tokenized into
//! samples of at most the model's context, with the notes the user should see.

use crate::error::{PipelineError, Result};
use llmq_calib::dataset::{load_calibration, CalibrationSet, DatasetOptions};
use llmq_tokenizer::Tokenizer;
use std::path::Path;

/// Calibration samples for a model of context `ctx`: `seq_len` is cut to `ctx` (with
/// a note). Returns the samples, the notes and the sequence length used.
pub(crate) fn calibration_set(
    tok: &Tokenizer,
    data: Option<&Path>,
    n_samples: usize,
    seq_len: usize,
    ctx: usize,
) -> Result<(CalibrationSet, Vec<String>, usize)> {
    let mut notes = Vec::new();
    let mut seq_len = seq_len;
    if seq_len > ctx {
        notes.push(format!(
            "--calibration-seq-len {seq_len} exceeds the model's context of {ctx} tokens: samples are cut to {ctx}"
        ));
        seq_len = ctx;
    }
    let encode = |t: &str| tok.encode(t, false, false).map_err(|e| e.to_string());
    let calib = load_calibration(
        data,
        &encode,
        &DatasetOptions {
            n_samples,
            seq_len,
            bos: if tok.add_bos() { tok.bos_id() } else { None },
        },
    )
    .map_err(|e| {
        PipelineError::invalid(
            e.to_string(),
            "Give --calibration-data a UTF-8 text or JSONL file with enough text, or omit it for the bundled set",
        )
    })?;
    notes.extend(calib.notes.iter().cloned());
    Ok((calib, notes, seq_len))
}
