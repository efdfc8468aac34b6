//! The importance matrix (llama.cpp's imatrix, as [`super::imatrix`] computes it on
//! the CPU) on a CUDA device (`quantize MODEL gguf -q … --calibration-data FILE
//! --device cuda`): the model streamed onto the device one block at a time, the
//! calibration activations kept there when they fit ([`super::device_acts`],
//! bf16-rounded as the host store rounds them), every Linear input's `Σx²` per channel
//! summed on the device ([`CalibGpu::squares_add`]: each batch's f32 sum from zero in
//! row order, then added to the total, as `add_squares` and `ImatrixEntry::add_sums`
//! do) with no copy of the rows to the host; only the sums come back, once per block.
//! Batches, entry names and expert slots are the CPU's.

use super::activations::{batches, ActStore};
use super::device_acts::{fits_on_device, Acts};
use super::device_observe::DeviceCollector;
use super::engine_err;
use super::imatrix::{finish_imatrix, imatrix_calibration, imatrix_spill_dir};
use crate::error::{PipelineError, Result};
use crate::request::CalibrationRequest;
use crate::run::Progress;
use llmq_engine::backend::cuda::CalibGpu;
use llmq_engine::backend::{Backend, Cuda};
use llmq_engine::{Model, WeightSource};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

/// Tokens per batch through a block (as the CPU's importance matrix).
const BATCH_TOKENS: usize = 4096;

pub(super) fn collect_imatrix_device(
    model_path: &Path,
    src: &WeightSource,
    cuda: &Cuda,
    calibration: &CalibrationRequest,
    ram_budget_bytes: Option<u64>,
    progress: &dyn Progress,
) -> Result<(llmq_calib::ImatrixData, Vec<String>)> {
    let gpu = CalibGpu::new(cuda).map_err(engine_err)?;
    progress.message(&format!("importance matrix on {}", cuda.describe()));
    let mut model = Model::load_streamed_on(cuda.clone(), src).map_err(engine_err)?;
    let (calib, notes, seq_len) =
        imatrix_calibration(model_path, src, calibration, model.hp.n_ctx_train, progress)?;
    let d = model.hp.n_embd;
    let lens: Vec<usize> = calib.samples.iter().map(|s| s.len()).collect();
    let need = lens.iter().sum::<usize>() as u64 * d as u64 * 2;
    let budget = ram_budget_bytes
        .or_else(crate::memory::available_bytes)
        .unwrap_or(u64::MAX)
        / 2;
    let groups = batches(&lens, BATCH_TOKENS);
    let spill_dir = imatrix_spill_dir();
    let on_device = fits_on_device(need * 2, cuda.free_memory());
    let spill = !on_device && need > budget;
    if spill {
        std::fs::create_dir_all(&spill_dir)
            .map_err(|e| PipelineError::io("cannot create", &spill_dir, &e))?;
    }
    let n_expert = model.hp.moe.as_ref().map(|m| m.n_expert).unwrap_or(0);
    let res = (|| {
        let mut acts = if on_device {
            Acts::on_device(&model, &gpu, &calib.samples, &groups)?
        } else {
            let mut store = ActStore::new(d, lens.clone(), spill.then_some(spill_dir.as_path()))?;
            for (i, s) in calib.samples.iter().enumerate() {
                let x = model.embed(s).map_err(engine_err)?;
                store.write(i, &x)?;
            }
            Acts::Host(store)
        };
        model.release_embeddings(src);
        let mut entries: BTreeMap<String, llmq_calib::ImatrixEntry> = BTreeMap::new();
        for layer in 0..model.hp.n_layer {
            if crate::CANCEL.load(Ordering::SeqCst) {
                return Err(PipelineError::cancelled(
                    "cancelled while computing the importance matrix",
                    "Run the command again",
                ));
            }
            model.load_block(src, layer).map_err(engine_err)?;
            let mut col = DeviceCollector::new(&gpu, false);
            col.squares = true;
            col.check = false;
            acts.run(&model, &gpu, layer, &groups, Some(&mut col), true)?;
            if let Some(e) = col.error.take() {
                return Err(engine_err(e));
            }
            for ((_, expert, _), site) in &col.sites {
                let Some(sq) = &site.sq else { continue };
                let sums = gpu.squares_host(sq).map_err(engine_err)?;
                let (n_mat, e) = match expert {
                    Some(e) => (n_expert.max(e + 1), *e),
                    None => (1, 0),
                };
                for w in &site.weights {
                    entries
                        .entry(format!("blk.{layer}.{w}"))
                        .or_insert_with(|| llmq_calib::ImatrixEntry::zeros(n_mat, sq.cols()))
                        .add_sums(e, &sums, sq.rows());
                }
            }
            drop(col);
            model.unload_block(src, layer);
        }
        Ok(entries)
    })();
    finish_imatrix(
        res,
        spill.then_some(spill_dir.as_path()),
        &calib,
        seq_len,
        notes,
    )
}
