//! The calibration activations of a GPU calibration run ([`super::device_blocks`]):
//! kept on the device, one f32 buffer per batch of samples, when they fit in a third
//! of its free memory; otherwise in the host's bf16 [`ActStore`] (spilled to disk
//! beyond the RAM budget), uploaded and downloaded for every batch.
//!
//! On the device every value is rounded to bf16 after it is written, as the host
//! store rounds it, so both stores hold the same numbers and a run writes the same
//! bytes whichever is used. What goes away is the host's work: converting, copying
//! and uploading every activation twice per block, which took most of a block's time
//! on an 8B model. `LLMQ_CALIB_HOST_ACTS=1` keeps them on the host (for comparison).

use super::activations::{run_batches, ActStore};
use super::device_observe::DeviceCollector;
use super::engine_err;
use crate::error::{PipelineError, Result};
use half::bf16;
use llmq_engine::backend::cuda::{CalibGpu, CudaBuf};
use llmq_engine::backend::{Backend, Cuda};
use llmq_engine::{LinearObserver, Model};
use std::io::Write;

/// Where the activations live.
pub(super) enum Acts {
    Host(ActStore),
    /// one buffer per batch (`groups[i]`'s samples, concatenated), bf16-exact values;
    /// `lens`: every sample's tokens
    Device {
        d: usize,
        lens: Vec<usize>,
        bufs: Vec<CudaBuf>,
    },
}

/// Whether activations of `bytes` (f32) should stay on the device with `free` bytes
/// free there.
pub(super) fn fits_on_device(bytes: u64, free: Option<u64>) -> bool {
    let forced_host = std::env::var_os("LLMQ_CALIB_HOST_ACTS").is_some_and(|v| v == "1");
    !forced_host && free.is_some_and(|f| bytes.saturating_mul(3) <= f)
}

impl Acts {
    /// The embeddings of every sample on the device, one buffer per group of `groups`.
    pub(super) fn on_device(
        model: &Model<Cuda>,
        gpu: &CalibGpu,
        samples: &[Vec<u32>],
        groups: &[Vec<usize>],
    ) -> Result<Acts> {
        let mut bufs = Vec::with_capacity(groups.len());
        for g in groups {
            let ids: Vec<u32> = g.iter().flat_map(|&s| samples[s].iter().copied()).collect();
            let mut x = model.embed_buf(&ids).map_err(engine_err)?;
            gpu.round_bf16(&mut x).map_err(engine_err)?;
            bufs.push(x);
        }
        Ok(Acts::Device {
            d: model.hp.n_embd,
            lens: samples.iter().map(|s| s.len()).collect(),
            bufs,
        })
    }

    /// Block `layer` of the device model over every sample, batch by batch, under
    /// `obs` if given; with `write_back` its outputs replace the stored activations.
    pub(super) fn run(
        &mut self,
        model: &Model<Cuda>,
        gpu: &CalibGpu,
        layer: usize,
        groups: &[Vec<usize>],
        mut obs: Option<&mut DeviceCollector<'_>>,
        write_back: bool,
    ) -> Result<()> {
        match self {
            Acts::Host(store) => run_batches(model, layer, store, groups, obs, write_back),
            Acts::Device { d, lens, bufs } => {
                let be = model.backend();
                for (g, x) in groups.iter().zip(bufs.iter_mut()) {
                    let lens: Vec<usize> = g.iter().map(|&s| lens[s]).collect();
                    let o: Option<&mut dyn LinearObserver> = match obs.as_deref_mut() {
                        Some(c) => Some(c),
                        None => None,
                    };
                    if write_back {
                        model
                            .forward_block_buf(layer, x, &lens, o)
                            .map_err(engine_err)?;
                        gpu.round_bf16(x).map_err(engine_err)?;
                    } else {
                        let mut copy = be.slice_cols(x, *d, 0, *d);
                        model
                            .forward_block_buf(layer, &mut copy, &lens, o)
                            .map_err(engine_err)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Every value as little-endian bf16, in sample order (the checkpoint snapshot
    /// [`ActStore::save_to`] writes).
    pub(super) fn save_to(&mut self, model: &Model<Cuda>, w: &mut dyn Write) -> Result<()> {
        match self {
            Acts::Host(store) => store.save_to(w),
            Acts::Device { bufs, .. } => {
                let be = model.backend();
                for x in bufs.iter() {
                    let bytes: Vec<u8> = be
                        .to_host(x)
                        .iter()
                        .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
                        .collect();
                    w.write_all(&bytes).map_err(|e| {
                        PipelineError::checkpoint(
                            format!("cannot write the activation snapshot: {e}"),
                            "Check free space in the checkpoint directory, or pass --no-checkpoints",
                        )
                    })?;
                }
                Ok(())
            }
        }
    }
}
