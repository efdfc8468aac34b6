//! The measure stage on the GPU: a [`LinearObserver`] that adds every Linear input to
//! its site's Hessian `XᵀX` on the device ([`CalibGpu::hessian_add`], a cuBLAS
//! `Dsyrk`) while the block runs on the CUDA backend, with no copy to the host, and
//! counts the tokens routed to every expert (as [`super::observe::Collector`] does on
//! the CPU); for AWQ it gathers the per-channel `Σ|x|` and the row sample on the
//! device instead ([`CalibGpu::awq_add`]), for the importance matrix the per-channel
//! `Σx²` ([`CalibGpu::squares_add`]).

use super::observe::SiteKey;
use super::AWQ_SAMPLE_ROWS;
use llmq_calib::HessianAccumulator;
use llmq_engine::backend::cuda::{CalibGpu, CudaBuf, DeviceAwqStats, DeviceHessian, DeviceSquares};
use llmq_engine::{Backend, EngineError, LinearObserver, LinearSite};
use std::collections::BTreeMap;

/// One site's Hessian (GPTQ) or AWQ statistics, and the weights applied to its rows.
pub(super) struct DeviceSite {
    pub(super) weights: Vec<&'static str>,
    pub(super) hess: Option<DeviceHessian>,
    pub(super) awq: Option<DeviceAwqStats>,
    pub(super) sq: Option<DeviceSquares>,
    /// `LLMQ_CALIB_CHECK=1`: the same Hessian accumulated on the host from the rows
    /// fetched there (a check of the device's)
    pub(super) host: Option<HessianAccumulator>,
}

pub(super) struct DeviceCollector<'g> {
    pub(super) gpu: &'g CalibGpu,
    pub(super) sites: BTreeMap<SiteKey, DeviceSite>,
    pub(super) expert_tokens: Vec<u64>,
    /// AWQ's statistics instead of Hessians
    pub(super) awq: bool,
    /// the importance matrix's sums of squares instead of Hessians
    pub(super) squares: bool,
    /// also accumulate every Hessian on the host (`LLMQ_CALIB_CHECK=1`)
    pub(super) check: bool,
    /// the first failure (an observer cannot return one)
    pub(super) error: Option<EngineError>,
}

impl<'g> DeviceCollector<'g> {
    pub(super) fn new(gpu: &'g CalibGpu, awq: bool) -> Self {
        DeviceCollector {
            gpu,
            sites: BTreeMap::new(),
            expert_tokens: Vec::new(),
            awq,
            squares: false,
            check: !awq && std::env::var_os("LLMQ_CALIB_CHECK").is_some_and(|v| v == "1"),
            error: None,
        }
    }

    fn add(&mut self, site: &LinearSite<'_>, x: &CudaBuf, rows: usize) -> Result<(), EngineError> {
        let cols = self.gpu.cuda().len(x) / rows;
        let key = (site.stage, site.expert, site.weights[0]);
        if !self.sites.contains_key(&key) {
            let (hess, awq, sq) = if self.squares {
                (None, None, Some(self.gpu.squares(cols)?))
            } else if self.awq {
                (None, Some(self.gpu.awq_stats(cols, AWQ_SAMPLE_ROWS)?), None)
            } else {
                (Some(self.gpu.hessian(cols)?), None, None)
            };
            self.sites.insert(
                key,
                DeviceSite {
                    weights: site.weights.to_vec(),
                    hess,
                    awq,
                    sq,
                    host: self.check.then(|| HessianAccumulator::new(cols)),
                },
            );
        }
        let s = self.sites.get_mut(&key).expect("inserted above");
        if let Some(h) = &mut s.host {
            h.add(&self.gpu.cuda().to_host(x), rows);
        }
        if let Some(a) = &mut s.awq {
            self.gpu.awq_add(a, x, rows)?;
        }
        if let Some(q) = &mut s.sq {
            self.gpu.squares_add(q, x, rows)?;
        }
        match &mut s.hess {
            Some(h) => self.gpu.hessian_add(h, x, rows),
            None => Ok(()),
        }
    }
}

impl LinearObserver for DeviceCollector<'_> {
    fn observe(&mut self, _site: &LinearSite<'_>, _x: &[f32], _rows: usize) {
        // the block runs on the CUDA backend, whose rows come to `observe_buf`
        self.error.get_or_insert_with(|| {
            EngineError::Device("a Linear input reached the GPU collector on the host".into())
        });
    }

    fn observe_buf(&mut self, site: &LinearSite<'_>, x: &dyn std::any::Any, rows: usize) -> bool {
        if rows == 0 || self.error.is_some() {
            return true;
        }
        let Some(x) = x.downcast_ref::<CudaBuf>() else {
            return false;
        };
        if let Err(e) = self.add(site, x, rows) {
            self.error = Some(e);
        }
        true
    }

    fn expert_counts(&mut self, _layer: usize, counts: &[usize]) {
        if self.expert_tokens.len() < counts.len() {
            self.expert_tokens.resize(counts.len(), 0);
        }
        for (t, c) in self.expert_tokens.iter_mut().zip(counts) {
            *t += *c as u64;
        }
    }
}
