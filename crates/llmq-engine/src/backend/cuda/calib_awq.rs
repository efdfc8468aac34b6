//! AWQ's searches on the GPU (Lin et al., arXiv 2306.00978; the CPU reference is
//! `llmq_calib::awq`, which follows AutoAWQ's `_search_best_scale` /
//! `_search_best_clip`), on statistics gathered on the device:
//!
//! * [`DeviceAwqStats`]: per Linear input, `Σ|x|` per channel (f64, in row order) and
//!   the strided row sample the CPU's observer keeps (every `stride`-th row, the
//!   stride doubling whenever the sample reaches its cap) — the choice of rows is
//!   made on the host from the row counts alone, the rows are gathered on the device;
//! * [`CalibGpu::awq_scale_losses`]: for every grid point's scales (computed on the
//!   host by `llmq_calib::awq::grid_scales`), each weight's quantize-dequantize error
//!   `Q(W·diag(s))·diag(s)⁻¹ − W` (`kernels/calib_awq.cuh`), its product with the
//!   sample rows (cuBLAS `Sgemm`) and the squared sum reduced on the device in a fixed
//!   order; only the per-grid-point sums come back;
//! * [`CalibGpu::awq_clip`]: the sample divided by the chosen scales, the Gram matrix
//!   of every group's columns, and every (row, group)'s clip search on it, the CPU's
//!   arithmetic in the CPU's order; the ranges come back.
//!
//! * [`DeviceSquares`]: the importance matrix's `Σx²` per input channel (llama.cpp's
//!   imatrix; the CPU's `ImatrixObserver`), each batch's f32 sum added to the total
//!   as the CPU adds them.
//!
//! The scale search's loss differs from the CPU's by the GEMM's summation order
//! (`‖X·Dᵀ‖²` instead of `‖X·Wqᵀ − X·Wᵀ‖²`, the same quantity); the clip search
//! gives the CPU's bits on the same inputs.

use super::{blas_ok, dev, grid, CalibGpu};
use crate::backend::cuda::CudaBuf;
use crate::error::{EngineError, Result};
use cudarc::cublas::sys;
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Blocks of the squared-sum reduction (a fixed number: the order is fixed).
const SQ_BLOCKS: usize = 256;

/// AWQ's statistics of one Linear input on the device.
pub struct DeviceAwqStats {
    cols: usize,
    rows: u64,
    abs_sum: CudaSlice<f64>,
    /// the kept rows (`[n_sample, cols]`), `None` before the first
    sample: Option<CudaSlice<f32>>,
    n_sample: usize,
    stride: u64,
    cap: usize,
}

impl DeviceAwqStats {
    /// Rows seen.
    pub fn rows(&self) -> u64 {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Rows in the sample.
    pub fn n_sample(&self) -> usize {
        self.n_sample
    }
}

/// Where a row of the new sample comes from.
#[derive(Clone, Copy)]
enum Src {
    Old(u32),
    New(u32),
}

/// The sample after `rows` more rows, as `Collector::observe` keeps it: the kept
/// rows' sources, the new stride.
fn sample_plan(n_old: usize, seen: u64, stride: u64, rows: usize, cap: usize) -> (Vec<Src>, u64) {
    let mut kept: Vec<Src> = (0..n_old as u32).map(Src::Old).collect();
    let mut stride = stride;
    for r in 0..rows {
        let idx = seen + r as u64;
        if idx.is_multiple_of(stride) {
            kept.push(Src::New(r as u32));
            if kept.len() >= cap {
                kept = kept.into_iter().step_by(2).collect();
                stride *= 2;
            }
        }
    }
    (kept, stride)
}

impl CalibGpu {
    /// Empty statistics for `cols` input features, keeping at most `cap` sample rows
    /// (the CPU's `AWQ_SAMPLE_ROWS`).
    pub fn awq_stats(&self, cols: usize, cap: usize) -> Result<DeviceAwqStats> {
        Ok(DeviceAwqStats {
            cols,
            rows: 0,
            abs_sum: self.zeros::<f64>(cols)?,
            sample: None,
            n_sample: 0,
            stride: 1,
            cap: cap.max(2),
        })
    }

    /// Add `rows` rows of `x` (`[rows, cols]` on the device) to `st`.
    pub fn awq_add(&self, st: &mut DeviceAwqStats, x: &CudaBuf, rows: usize) -> Result<()> {
        let c = st.cols;
        if rows == 0 {
            return Ok(());
        }
        if x.len != rows * c {
            return Err(EngineError::Device(format!(
                "AWQ input holds {} values, {rows} rows of {c} need {}",
                x.len,
                rows * c
            )));
        }
        let xp = x.ptr_at(self.be.stream(), 0);
        self.launch(
            "awq_abs_sum",
            grid(c),
            &[&xp, &(rows as i32), &(c as i32), &self.ptr(&st.abs_sum)],
        )?;
        let (kept, stride) = sample_plan(st.n_sample, st.rows, st.stride, rows, st.cap);
        let olds: Vec<u32> = kept
            .iter()
            .filter_map(|s| match s {
                Src::Old(i) => Some(*i),
                Src::New(_) => None,
            })
            .collect();
        let news: Vec<u32> = kept
            .iter()
            .filter_map(|s| match s {
                Src::New(i) => Some(*i),
                Src::Old(_) => None,
            })
            .collect();
        let unchanged = news.is_empty() && olds.len() == st.n_sample;
        if !unchanged {
            let n = kept.len();
            // SAFETY: every row is written by the gathers below (olds first: the kept
            // old rows always precede the new ones)
            let dst = dev("alloc", unsafe {
                self.be.stream().alloc::<f32>((n * c).max(1))
            })?;
            if !olds.is_empty() {
                let old = st.sample.as_ref().expect("old rows kept");
                let idx = self.upload(&olds)?;
                self.launch(
                    "awq_gather",
                    grid(olds.len() * c),
                    &[
                        &self.ptr(old),
                        &self.ptr(&idx),
                        &(olds.len() as i32),
                        &(c as i32),
                        &self.ptr(&dst),
                    ],
                )?;
            }
            if !news.is_empty() {
                let idx = self.upload(&news)?;
                let at = self.ptr(&dst) + (4 * olds.len() * c) as u64;
                self.launch(
                    "awq_gather",
                    grid(news.len() * c),
                    &[&xp, &self.ptr(&idx), &(news.len() as i32), &(c as i32), &at],
                )?;
            }
            st.sample = Some(dst);
            st.n_sample = n;
        }
        st.stride = stride;
        st.rows += rows as u64;
        Ok(())
    }

    /// `Σ|x|` per input channel, on the host.
    pub fn awq_abs_sum(&self, st: &DeviceAwqStats) -> Result<Vec<f64>> {
        self.download(&st.abs_sum, st.cols)
    }

    /// The sample rows on the host (`[n_sample, cols]`; checks and tests).
    pub fn awq_sample_host(&self, st: &DeviceAwqStats) -> Result<Vec<f32>> {
        match &st.sample {
            Some(s) => self.download(s, st.n_sample * st.cols),
            None => Ok(Vec::new()),
        }
    }

    /// The scale search's output errors: for every grid point's scales `grid[i]`, the
    /// sum over `layers` (each a weight `[out, cols]` on the host and its `out`) of
    /// `‖X·(Q(W·diag(s))·diag(s)⁻¹ − W)ᵀ‖²` on the sample rows `X` (not divided by
    /// the element count).
    pub fn awq_scale_losses(
        &self,
        st: &DeviceAwqStats,
        layers: &[(&[f32], usize)],
        grid_scales: &[Vec<f32>],
        bits: u8,
        gs: usize,
    ) -> Result<Vec<f64>> {
        let (inp, n) = (st.cols, st.n_sample);
        check_grid(inp, gs, bits)?;
        let losses = self.zeros::<f64>(grid_scales.len())?;
        let Some(x) = &st.sample else {
            return Ok(vec![0.0; grid_scales.len()]);
        };
        let max_out = layers.iter().map(|l| l.1).max().unwrap_or(0);
        let d = self.zeros::<f32>(max_out * inp)?;
        let y = self.zeros::<f32>(max_out * n)?;
        let partial = self.zeros::<f64>(SQ_BLOCKS)?;
        let maxqf = ((1u32 << bits) - 1) as f32;
        let s_d: Vec<CudaSlice<f32>> = grid_scales
            .iter()
            .map(|s| self.upload(s))
            .collect::<Result<_>>()?;
        for &(w, out) in layers {
            if w.len() != out * inp {
                return Err(EngineError::Device(format!(
                    "AWQ weight of {} values is not [{out}, {inp}]",
                    w.len()
                )));
            }
            let w_d = self.upload(w)?;
            for (i, s) in s_d.iter().enumerate() {
                self.launch(
                    "awq_fq_diff_k",
                    grid(out * (inp / gs)),
                    &[
                        &self.ptr(&w_d),
                        &self.ptr(s),
                        &(out as i32),
                        &(inp as i32),
                        &(gs as i32),
                        &maxqf,
                        &self.ptr(&d),
                    ],
                )?;
                // column-major: D is [inp, out] (ld inp), X is [inp, n] (ld inp);
                // Y = Dᵀ·X is [out, n] (ld out)
                let (one, zero) = (1.0f32, 0.0f32);
                // SAFETY: d holds out·inp values, x n·inp, y out·n.
                let r = unsafe {
                    sys::cublasSgemm_v2(
                        *self.blas.handle(),
                        sys::cublasOperation_t::CUBLAS_OP_T,
                        sys::cublasOperation_t::CUBLAS_OP_N,
                        out as i32,
                        n as i32,
                        inp as i32,
                        &one,
                        self.ptr(&d) as *const f32,
                        inp as i32,
                        self.ptr(x) as *const f32,
                        inp as i32,
                        &zero,
                        self.ptr(&y) as *mut f32,
                        out as i32,
                    )
                };
                blas_ok("Sgemm", r)?;
                self.launch(
                    "awq_sq_partial",
                    LaunchConfig {
                        grid_dim: (SQ_BLOCKS as u32, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    },
                    &[&self.ptr(&y), &((out * n) as i64), &self.ptr(&partial)],
                )?;
                let at = self.ptr(&losses) + 8 * i as u64;
                self.launch(
                    "awq_sum_into",
                    LaunchConfig {
                        grid_dim: (1, 1, 1),
                        block_dim: (1, 1, 1),
                        shared_mem_bytes: 0,
                    },
                    &[&self.ptr(&partial), &(SQ_BLOCKS as i32), &at],
                )?;
            }
        }
        self.download(&losses, grid_scales.len())
    }

    /// The clip search of `w` (`[out, cols]`, on the host, already multiplied by
    /// `scales` when given) on the sample rows divided by `scales`, rows
    /// `0, step, 2·step, …`: the range to clamp to per (row, group), `[out, cols/gs]`.
    #[allow(clippy::too_many_arguments)]
    pub fn awq_clip(
        &self,
        st: &DeviceAwqStats,
        w: &[f32],
        out: usize,
        scales: Option<&[f32]>,
        step: usize,
        bits: u8,
        gs: usize,
        factors: &[f32],
    ) -> Result<Vec<f32>> {
        let (inp, n) = (st.cols, st.n_sample);
        check_grid(inp, gs, bits)?;
        if w.len() != out * inp || scales.is_some_and(|s| s.len() != inp) || step == 0 {
            return Err(EngineError::Device(format!(
                "AWQ clip: weight of {} values as [{out}, {inp}], step {step}",
                w.len()
            )));
        }
        let ng = inp / gs;
        let x = match &st.sample {
            Some(s) => {
                let x = dev("copy", self.be.stream().clone_dtod(s))?;
                if let Some(sc) = scales {
                    let sd = self.upload(sc)?;
                    self.launch(
                        "awq_div_cols",
                        grid(n * inp),
                        &[
                            &self.ptr(&x),
                            &self.ptr(&sd),
                            &((n * inp) as i64),
                            &(inp as i32),
                        ],
                    )?;
                }
                x
            }
            None => self.zeros::<f32>(inp)?,
        };
        let gram = self.zeros::<f32>(ng * gs * gs)?;
        self.launch(
            "awq_gram",
            grid(ng * gs * gs),
            &[
                &self.ptr(&x),
                &(n as i32),
                &(step as i32),
                &(inp as i32),
                &(gs as i32),
                &self.ptr(&gram),
            ],
        )?;
        drop(x);
        let w_d = self.upload(w)?;
        let f_d = self.upload(factors)?;
        let best = self.zeros::<f32>(out * ng)?;
        let maxqf = ((1u32 << bits) - 1) as f32;
        // each thread's error vector in shared memory, within the 48 KB of a launch
        let threads = (48 * 1024 / (4 * gs)).clamp(1, 64);
        self.launch(
            "awq_clip",
            LaunchConfig {
                grid_dim: (out.div_ceil(threads) as u32, ng as u32, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: (threads * gs * 4) as u32,
            },
            &[
                &self.ptr(&w_d),
                &self.ptr(&gram),
                &(out as i32),
                &(inp as i32),
                &(gs as i32),
                &maxqf,
                &self.ptr(&f_d),
                &(factors.len() as i32),
                &self.ptr(&best),
            ],
        )?;
        self.download(&best, out * ng)
    }
}

/// The importance matrix's `Σx²` per input channel of one Linear input on the device,
/// and the rows added.
pub struct DeviceSquares {
    cols: usize,
    sum: CudaSlice<f32>,
    rows: u64,
}

impl DeviceSquares {
    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl CalibGpu {
    /// Empty sums for `cols` input features.
    pub fn squares(&self, cols: usize) -> Result<DeviceSquares> {
        Ok(DeviceSquares {
            cols,
            sum: self.zeros::<f32>(cols)?,
            rows: 0,
        })
    }

    /// Add `rows` rows of `x` (`[rows, cols]` on the device) to `sq`: their f32 sum of
    /// squares per column, then that sum to the total.
    pub fn squares_add(&self, sq: &mut DeviceSquares, x: &CudaBuf, rows: usize) -> Result<()> {
        let c = sq.cols;
        if rows == 0 {
            return Ok(());
        }
        if x.len != rows * c {
            return Err(EngineError::Device(format!(
                "imatrix input holds {} values, {rows} rows of {c} need {}",
                x.len,
                rows * c
            )));
        }
        self.launch(
            "calib_sq_sum",
            grid(c),
            &[
                &x.ptr_at(self.be.stream(), 0),
                &(rows as i32),
                &(c as i32),
                &self.ptr(&sq.sum),
            ],
        )?;
        sq.rows += rows as u64;
        Ok(())
    }

    /// The sums on the host.
    pub fn squares_host(&self, sq: &DeviceSquares) -> Result<Vec<f32>> {
        self.download(&sq.sum, sq.cols)
    }
}

fn check_grid(inp: usize, gs: usize, bits: u8) -> Result<()> {
    if gs == 0 || !inp.is_multiple_of(gs) || gs > 12 * 1024 || !(1..=8).contains(&bits) {
        return Err(EngineError::Device(format!(
            "AWQ on the device: {inp} inputs in groups of {gs} at {bits} bits"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device sample's row plan keeps the CPU observer's rows (its rule replayed
    /// on global row indices).
    #[test]
    fn sample_plan_keeps_the_observers_rows() {
        for cap in [4usize, 7, 512] {
            for batches in [vec![3usize, 5, 2, 9, 1], vec![1000, 24, 4096], vec![1; 40]] {
                // the CPU rule on global indices
                let mut want: Vec<u64> = Vec::new();
                let (mut stride, mut seen) = (1u64, 0u64);
                // the plan on (old, new) sources
                let mut got: Vec<u64> = Vec::new();
                let mut st = 1u64;
                for &rows in &batches {
                    for r in 0..rows as u64 {
                        let idx = seen + r;
                        if idx.is_multiple_of(stride) {
                            want.push(idx);
                            if want.len() >= cap {
                                want = want.into_iter().step_by(2).collect();
                                stride *= 2;
                            }
                        }
                    }
                    let (kept, s2) = sample_plan(got.len(), seen, st, rows, cap);
                    got = kept
                        .iter()
                        .map(|s| match s {
                            Src::Old(i) => got[*i as usize],
                            Src::New(i) => seen + *i as u64,
                        })
                        .collect();
                    st = s2;
                    seen += rows as u64;
                    assert_eq!(got, want, "cap {cap} batches {batches:?}");
                    assert_eq!(st, stride);
                }
            }
        }
    }
}
