//! AWQ (Lin et al., arXiv 2306.00978) of one block on a CUDA device
//! (`quantize … --method awq --device cuda`): the measured sites of
//! [`super::device_observe::DeviceCollector`] (per-channel `Σ|x|` and the row sample
//! kept on the device) seen through [`AwqSites`], so the block is quantized by the
//! CPU's [`super::awq_block::awq_block`] — same sites, same fallbacks, same folding
//! of the scales into the norms and up projections — with the two searches on the
//! device: the scale search's grid points through
//! [`CalibGpu::awq_scale_losses`] (only the per-grid-point losses come back) and the
//! clip search through [`CalibGpu::awq_clip`] (only the ranges come back).
//! `LLMQ_CALIB_CHECK=1` also runs the CPU's searches on the device's statistics
//! brought to the host and logs the agreement (lines "check awq …").

use super::awq_block::AwqSites;
use super::device_observe::DeviceCollector;
use super::engine_err;
use super::observe::SiteKey;
use crate::error::{PipelineError, Result};
use crate::run::Progress;
use llmq_calib::awq::{self as awq_algo, AwqLayer, ScaleSearch};
use llmq_engine::backend::cuda::DeviceAwqStats;

/// A block's device statistics as AWQ reads them.
pub(super) struct DeviceAwq<'a, 'g> {
    pub(super) col: &'a DeviceCollector<'g>,
    /// `LLMQ_CALIB_CHECK=1`: where the comparisons with the CPU searches go
    pub(super) check: Option<&'a dyn Progress>,
}

impl DeviceAwq<'_, '_> {
    fn stats(&self, key: &SiteKey) -> Result<&DeviceAwqStats> {
        self.col.sites[key].awq.as_ref().ok_or_else(|| {
            PipelineError::general(
                "an AWQ site has no statistics on the device",
                "Report this as a bug",
            )
        })
    }
}

impl AwqSites for DeviceAwq<'_, '_> {
    fn keys(&self) -> Vec<SiteKey> {
        self.col.sites.keys().copied().collect()
    }
    fn weights(&self, key: &SiteKey) -> &[&'static str] {
        &self.col.sites[key].weights
    }
    fn cols(&self, key: &SiteKey) -> usize {
        self.col.sites[key].awq.as_ref().map_or(0, |a| a.cols())
    }
    fn rows(&self, key: &SiteKey) -> u64 {
        self.col.sites[key].awq.as_ref().map_or(0, |a| a.rows())
    }
    fn n_sample(&self, key: &SiteKey) -> usize {
        self.col.sites[key].awq.as_ref().map_or(0, |a| a.n_sample())
    }
    fn abs_sum(&self, key: &SiteKey) -> Result<Vec<f64>> {
        self.col
            .gpu
            .awq_abs_sum(self.stats(key)?)
            .map_err(engine_err)
    }
    fn search_scale(
        &self,
        key: &SiteKey,
        layers: &[AwqLayer<'_>],
        mean: &[f32],
        bits: u8,
        gs: usize,
    ) -> Result<ScaleSearch> {
        let st = self.stats(key)?;
        let inp = st.cols();
        let grid: Vec<(f32, Vec<f32>)> = (0..awq_algo::N_GRID)
            .map(|i| awq_algo::grid_scales(mean, i))
            .collect();
        let scales: Vec<Vec<f32>> = grid.iter().map(|g| g.1.clone()).collect();
        let ws: Vec<(&[f32], usize)> = layers.iter().map(|l| (l.w, l.out)).collect();
        let sums = self
            .col
            .gpu
            .awq_scale_losses(st, &ws, &scales, bits, gs)
            .map_err(engine_err)?;
        let total_out: usize = layers.iter().map(|l| l.out).sum();
        let denom = (st.n_sample() * total_out).max(1) as f64;
        let results: Vec<(f64, f32, Vec<f32>)> = sums
            .into_iter()
            .zip(grid)
            .map(|(l, (ratio, s))| (l / denom, ratio, s))
            .collect();
        let found = awq_algo::pick_scale(results, inp);
        if let Some(p) = self.check {
            let x = self.col.gpu.awq_sample_host(st).map_err(engine_err)?;
            let cpu = awq_algo::search_scale(layers, inp, mean, &x, st.n_sample(), bits, gs);
            p.message(&format!(
                "check awq scale {}: ratio {} (CPU search on the same rows {}), loss {:.6e} (CPU {:.6e}), RTN loss rel. diff {:.2e}",
                key.2,
                found.ratio,
                cpu.ratio,
                found.best_loss,
                cpu.best_loss,
                (found.rtn_loss - cpu.rtn_loss).abs() / cpu.rtn_loss.max(f64::MIN_POSITIVE)
            ));
        }
        Ok(found)
    }
    fn search_clip(
        &self,
        key: &SiteKey,
        w: &[f32],
        out: usize,
        scales: Option<&[f32]>,
        bits: u8,
        gs: usize,
    ) -> Result<Vec<f32>> {
        let st = self.stats(key)?;
        let step = st.n_sample().div_ceil(awq_algo::CLIP_TOKENS).max(1);
        let clip = self
            .col
            .gpu
            .awq_clip(
                st,
                w,
                out,
                scales,
                step,
                bits,
                gs,
                &awq_algo::clip_factors(),
            )
            .map_err(engine_err)?;
        if let Some(p) = self.check {
            let inp = st.cols();
            let mut x = self.col.gpu.awq_sample_host(st).map_err(engine_err)?;
            if let Some(s) = scales {
                for row in x.chunks_mut(inp) {
                    row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
                }
            }
            let cpu = awq_algo::search_clip(w, out, inp, &x, st.n_sample(), bits, gs);
            let same = clip
                .iter()
                .zip(&cpu)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
            p.message(&format!(
                "check awq clip {} [{out}, {inp}]: ranges equal to the CPU search on the same rows {:.5}",
                key.2,
                same as f64 / cpu.len().max(1) as f64
            ));
        }
        Ok(clip)
    }
    fn n_experts(&self) -> usize {
        self.col.expert_tokens.len()
    }
}
