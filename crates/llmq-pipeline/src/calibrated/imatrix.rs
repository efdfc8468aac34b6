//! The importance matrix for GGUF k-quants (llama.cpp's imatrix): the calibration
//! samples run block by block through the engine with an observer that sums `x²` per
//! input column of every Linear (and expert).

use super::activations::{batches, run_batches, ActStore};
use super::calibration::calibration_set;
use super::engine_err;
use crate::error::{PipelineError, Result};
use crate::request::CalibrationRequest;
use crate::run::Progress;
use llmq_calib::dataset::CalibrationSet;
use llmq_engine::{LinearObserver, LinearSite, Model, WeightSource};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

/// Collects llama.cpp-style importance statistics (`Σ x²` per input column and the
/// rows seen, per weight and expert) for every Linear of the model.
struct ImatrixObserver {
    entries: BTreeMap<String, llmq_calib::ImatrixEntry>,
    n_expert: usize,
}

impl LinearObserver for ImatrixObserver {
    fn observe(&mut self, site: &LinearSite<'_>, x: &[f32], rows: usize) {
        if rows == 0 {
            return;
        }
        let cols = x.len() / rows;
        let (n_mat, e) = match site.expert {
            Some(e) => (self.n_expert.max(e + 1), e),
            None => (1, 0),
        };
        let mut sq = vec![0.0f32; cols];
        llmq_calib::add_squares(&mut sq, x);
        for w in site.weights {
            self.entries
                .entry(format!("blk.{}.{w}", site.layer))
                .or_insert_with(|| llmq_calib::ImatrixEntry::zeros(n_mat, cols))
                .add_sums(e, &sq, rows as u64);
        }
    }
}

/// Runs the calibration samples through the model (a Hugging Face folder or a GGUF
/// file), block by block with bounded activations, and returns the importance matrix
/// of every Linear (GGUF tensor names), as llama-imatrix computes it over the same
/// text, holding activations in at most half of `ram_budget_bytes` (default: the
/// available memory). Also returns the notes about the data.
/// With `device` a GPU, the blocks run there and the sums are taken there
/// ([`super::device_imatrix`]).
pub fn collect_imatrix(
    model_path: &Path,
    calibration: &CalibrationRequest,
    ram_budget_bytes: Option<u64>,
    device: &crate::request::CalibDevice,
    progress: &dyn Progress,
) -> Result<(llmq_calib::ImatrixData, Vec<String>)> {
    let src = WeightSource::open(model_path).map_err(engine_err)?;
    #[cfg(feature = "cuda")]
    if let crate::request::CalibDevice::Cuda(c) = device {
        return super::device_imatrix::collect_imatrix_device(
            model_path,
            &src,
            c,
            calibration,
            ram_budget_bytes,
            progress,
        );
    }
    let _ = device;
    // layer-streamed: one block in memory at a time
    let mut model = Model::load_streamed(&src).map_err(engine_err)?;
    let (calib, notes, seq_len) = imatrix_calibration(
        model_path,
        &src,
        calibration,
        model.hp.n_ctx_train,
        progress,
    )?;

    let d = model.hp.n_embd;
    let lens: Vec<usize> = calib.samples.iter().map(|s| s.len()).collect();
    let need = lens.iter().sum::<usize>() as u64 * d as u64 * 2;
    let budget = ram_budget_bytes
        .or_else(crate::memory::available_bytes)
        .unwrap_or(u64::MAX)
        / 2;
    let spill_dir = imatrix_spill_dir();
    let spill = need > budget;
    if spill {
        std::fs::create_dir_all(&spill_dir)
            .map_err(|e| PipelineError::io("cannot create", &spill_dir, &e))?;
    }
    let res = (|| {
        let mut store = ActStore::new(d, lens.clone(), spill.then_some(spill_dir.as_path()))?;
        for (i, s) in calib.samples.iter().enumerate() {
            let x = model.embed(s).map_err(engine_err)?;
            store.write(i, &x)?;
        }
        model.release_embeddings(&src);
        let groups = batches(&lens, 4096);
        let mut obs = ImatrixObserver {
            entries: BTreeMap::new(),
            n_expert: model.hp.moe.as_ref().map(|m| m.n_expert).unwrap_or(0),
        };
        for layer in 0..model.hp.n_layer {
            if crate::CANCEL.load(Ordering::SeqCst) {
                return Err(PipelineError::cancelled(
                    "cancelled while computing the importance matrix",
                    "Run the command again",
                ));
            }
            model.load_block(&src, layer).map_err(engine_err)?;
            run_batches(&model, layer, &mut store, &groups, Some(&mut obs), true)?;
            model.unload_block(&src, layer);
        }
        Ok(obs.entries)
    })();
    finish_imatrix(
        res,
        spill.then_some(spill_dir.as_path()),
        &calib,
        seq_len,
        notes,
    )
}

/// The folder where a run's activations spill beyond the memory budget.
pub(super) fn imatrix_spill_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("llm-quantize-imatrix-{}", std::process::id()))
}

/// A run's sums as llama.cpp's imatrix data (datasets, chunk count and size from the
/// calibration set); the spill folder, when one was used, is removed whatever happened.
pub(super) fn finish_imatrix(
    res: Result<BTreeMap<String, llmq_calib::ImatrixEntry>>,
    spill_dir: Option<&Path>,
    calib: &CalibrationSet,
    seq_len: usize,
    notes: Vec<String>,
) -> Result<(llmq_calib::ImatrixData, Vec<String>)> {
    if let Some(dir) = spill_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok((
        llmq_calib::ImatrixData {
            entries: res?,
            datasets: vec![calib.source.clone()],
            chunk_count: calib.samples.len() as u32,
            chunk_size: seq_len as u32,
            legacy: false,
        },
        notes,
    ))
}

/// The calibration set of an importance matrix (the model's tokenizer, windows of at
/// most `n_ctx` tokens), announced on `progress`: samples, notes, window length.
pub(super) fn imatrix_calibration(
    model_path: &Path,
    src: &WeightSource,
    calibration: &CalibrationRequest,
    n_ctx: usize,
    progress: &dyn Progress,
) -> Result<(llmq_calib::dataset::CalibrationSet, Vec<String>, usize)> {
    let tok = match src {
        WeightSource::Gguf(f) => llmq_tokenizer::Tokenizer::from_gguf(f),
        WeightSource::Hf(_) => llmq_tokenizer::Tokenizer::from_hf_dir(model_path),
    }
    .map_err(|e| {
        PipelineError::invalid(
            format!("cannot load the tokenizer of {}: {e}", model_path.display()),
            "Computing an imatrix needs the model's tokenizer",
        )
    })?;
    let (calib, notes, seq_len) = calibration_set(
        &tok,
        calibration.data.as_deref(),
        calibration.samples,
        calibration.seq_len,
        n_ctx.max(2),
    )?;
    progress.message(&format!(
        "Computing the importance matrix: {} samples, {} tokens from {}",
        calib.samples.len(),
        calib.n_tokens(),
        calib.source
    ));
    Ok((calib, notes, seq_len))
}
