//! `quantize MODEL gguf -q LEVEL`: resolve the source, plan the GGUF, pick the output
//! path, check the disk, then hand the jobs to the driver in [`crate::run`].

use crate::error::{PipelineError, Result};
use crate::run::{self, CheckpointOptions, Progress, RunOptions, RunReport, TensorStat};
use crate::source::{self, ModelSummary, ResolvedModel};
use crate::{gguf_source, hf_source};
use llmq_arch::mix::Mix;
use llmq_formats::gguf::GgufPlan;
use std::path::{Path, PathBuf};

/// Everything `quantize` needs.
#[derive(Debug, Clone)]
pub struct QuantizeRequest {
    pub model: String,
    pub level: String,
    pub output_dir: PathBuf,
    pub output_name: Option<String>,
    pub checkpoint: Option<CheckpointOptions>,
    pub validate: bool,
    pub max_workers: Option<usize>,
    pub ram_budget_bytes: Option<u64>,
    pub token: Option<String>,
    /// llama.cpp importance matrix file (`--imatrix`)
    pub imatrix: Option<PathBuf>,
    /// compute the importance matrix from calibration text (`--calibration-data`)
    pub imatrix_calibration: Option<crate::calibrated::ImatrixRequest>,
}

/// A tensor source with importance weights from an imatrix.
struct WithImatrix {
    inner: Box<dyn run::TensorSource>,
    data: llmq_calib::ImatrixData,
}

impl run::TensorSource for WithImatrix {
    fn load_f32(&self, job: &run::TensorJob) -> Result<Vec<f32>> {
        self.inner.load_f32(job)
    }
    fn describe(&self, job: &run::TensorJob) -> String {
        self.inner.describe(job)
    }
    fn passthrough(&self, job: &run::TensorJob) -> Option<Vec<u8>> {
        self.inner.passthrough(job)
    }
    fn load_rows(&self, job: &run::TensorJob, r0: usize, r1: usize) -> Option<Result<Vec<f32>>> {
        self.inner.load_rows(job, r0, r1)
    }
    fn release(&self, job: &run::TensorJob) {
        self.inner.release(job)
    }
    /// One weight per input column (per expert for stacked experts); entries whose
    /// width does not match the tensor's rows (MLA's absorbed k_b/v_b) are not used.
    fn importance(&self, job: &run::TensorJob) -> Option<Vec<f32>> {
        let v = self.data.importance(&job.name)?;
        let n = job.row_len();
        let rows = job.numel() / n.max(1);
        let k = v.len() / n.max(1);
        (n > 0 && v.len() % n == 0 && k > 0 && rows.is_multiple_of(k)).then_some(v)
    }
}

fn imatrix_fingerprint(d: &llmq_calib::ImatrixData) -> String {
    let mut bytes = Vec::new();
    for (name, e) in &d.entries {
        bytes.extend_from_slice(name.as_bytes());
        for v in &e.sum2 {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for c in &e.counts {
            bytes.extend_from_slice(&c.to_le_bytes());
        }
    }
    crate::checkpoint::sha256_hex(&bytes)
}

/// The result of a successful run.
#[derive(Debug, Clone)]
pub struct QuantizeOutcome {
    pub report: RunReport,
    pub summary: ModelSummary,
    pub level: String,
    pub peak_memory_bytes: u64,
    /// parameters in the output (for bits per weight)
    pub output_params: u64,
}

impl QuantizeOutcome {
    /// The `n` tensors with the largest relative RMSE.
    pub fn worst_tensors(&self, n: usize) -> Vec<&TensorStat> {
        let mut v: Vec<&TensorStat> = self
            .report
            .tensors
            .iter()
            .filter(|t| t.rel_rmse.is_some())
            .collect();
        v.sort_by(|a, b| {
            b.rel_rmse
                .partial_cmp(&a.rel_rmse)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        v.truncate(n);
        v
    }

    /// Mean relative RMSE weighted by element count.
    pub fn mean_relative_rmse(&self) -> Option<f64> {
        let (mut s, mut n) = (0.0, 0usize);
        for t in &self.report.tensors {
            if let Some(r) = t.rel_rmse {
                s += r * t.numel as f64;
                n += t.numel;
            }
        }
        (n > 0).then(|| s / n as f64)
    }

    /// Whole-file bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        if self.output_params == 0 {
            return 0.0;
        }
        self.report.file_size as f64 * 8.0 / self.output_params as f64
    }
}

/// What a source contributes: the output plan, the jobs and their source.
pub struct Planned {
    pub plan: GgufPlan,
    pub jobs: Vec<run::TensorJob>,
    pub units: Vec<run::WorkUnit>,
    pub source: Box<dyn run::TensorSource>,
    pub summary: ModelSummary,
    /// identifies the input files (paths, sizes, modification times)
    pub identity: String,
}

/// Quantize to GGUF.
pub fn quantize_gguf(req: &QuantizeRequest, progress: &dyn Progress) -> Result<QuantizeOutcome> {
    let mix = Mix::from_name(&req.level).ok_or_else(|| {
        PipelineError::invalid(
            format!("unknown GGUF quantization level `{}`", req.level),
            format!(
                "Use one of: {}",
                Mix::all().map(|m| m.name()).collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    progress.message(&format!("Loading model: {}", req.model));
    let resolved = source::resolve(&req.model, req.token.clone(), progress)?;
    let name = source::display_name(&req.model);
    let planned = match &resolved {
        ResolvedModel::HfDir(dir) => hf_source::plan(dir, &name, mix)?,
        ResolvedModel::GgufFile(file) => gguf_source::plan(file, &name, mix)?,
    };
    let mut planned = planned;
    let s = &planned.summary;
    progress.message(&format!(
        "Architecture: {} ({} layers)",
        s.architecture, s.layers
    ));
    let imatrix = match (&req.imatrix, &req.imatrix_calibration) {
        (Some(p), _) => Some(llmq_calib::ImatrixData::read(p).map_err(|e| {
            PipelineError::invalid(
                format!("cannot use imatrix {}: {e}", p.display()),
                "Give a llama.cpp imatrix file (GGUF or legacy .dat)",
            )
        })?),
        (None, Some(c)) => {
            let path = match &resolved {
                ResolvedModel::HfDir(d) => d.clone(),
                ResolvedModel::GgufFile(f) => f.clone(),
            };
            let (d, notes) = crate::calibrated::collect_imatrix(&path, c, progress)?;
            for n in notes {
                progress.message(&format!("note: {n}"));
            }
            Some(d)
        }
        (None, None) => None,
    };
    let imatrix_id = imatrix.as_ref().map(imatrix_fingerprint);
    // a computed imatrix is saved next to the output (llama.cpp's GGUF imatrix format)
    let computed = if req.imatrix.is_none() {
        imatrix.clone()
    } else {
        None
    };
    if let Some(data) = imatrix {
        let n_entries = data.entries.len();
        let inner = std::mem::replace(&mut planned.source, Box::new(NoSource));
        let src = WithImatrix { inner, data };
        let used = planned
            .jobs
            .iter()
            .filter(|j| run::TensorSource::importance(&src, j).is_some())
            .count();
        progress.message(&format!(
            "Importance matrix: {n_entries} entries, used for {used} tensors"
        ));
        planned.source = Box::new(src);
    }
    progress.message(&format!("Quantizing to GGUF {}", mix.name()));

    let out_dir = &req.output_dir;
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(PipelineError::invalid(
            format!(
                "output directory {} exists and is not a directory",
                out_dir.display()
            ),
            "Choose another --output-dir",
        ));
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| PipelineError::io("cannot create output directory", out_dir, &e))?;
    let file_name = match &req.output_name {
        Some(n) if n.contains('/') || n.is_empty() => {
            return Err(PipelineError::invalid(
                format!("--output-name `{n}` must be a plain file name"),
                "e.g. -n model-Q4_K_M.gguf",
            ))
        }
        Some(n) => n.clone(),
        None => format!("{name}-{}.gguf", mix.name()),
    };
    let output = out_dir.join(file_name);
    let need = planned
        .plan
        .layout()
        .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?
        .total_size();
    if let Some(free) = free_bytes(out_dir) {
        let resuming = req.checkpoint.as_ref().is_some_and(|c| c.resume);
        if free < need && !resuming {
            return Err(PipelineError::general(
                format!(
                    "not enough disk space in {}: need {need} bytes, {free} free",
                    out_dir.display()
                ),
                "Free disk space or choose another --output-dir",
            ));
        }
    }

    let fingerprint = crate::checkpoint::sha256_hex(
        format!(
            "llm-quantize {}\n{}\nlevel={}\nimatrix={:?}\n{:?}",
            env!("CARGO_PKG_VERSION"),
            planned.identity,
            mix.name(),
            imatrix_id,
            planned.plan
        )
        .as_bytes(),
    );
    let opts = RunOptions {
        output: output.clone(),
        checkpoint: req.checkpoint.clone(),
        validate: req.validate,
        max_workers: req.max_workers,
        ram_budget_bytes: req.ram_budget_bytes,
        fingerprint,
    };
    let report = run::run(
        &planned.plan,
        &planned.jobs,
        &planned.units,
        planned.source.as_ref(),
        &opts,
        progress,
    )?;
    if let Some(data) = computed {
        let p = output.with_extension("imatrix.gguf");
        data.write_gguf(&p).map_err(|e| {
            PipelineError::general(
                format!("cannot write the imatrix {}: {e}", p.display()),
                "Check the output directory",
            )
        })?;
        progress.message(&format!("Importance matrix saved: {}", p.display()));
    }
    progress.message(&format!(
        "Complete: {} ({:.1} MB)",
        output.display(),
        report.file_size as f64 / 1e6
    ));
    let output_params = planned.jobs.iter().map(|j| j.numel() as u64).sum();
    Ok(QuantizeOutcome {
        report,
        summary: planned.summary,
        level: mix.name().to_string(),
        peak_memory_bytes: crate::memory::peak_rss_bytes().unwrap_or(0),
        output_params,
    })
}

/// Free bytes on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and s a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

/// Placeholder while a source is being wrapped.
struct NoSource;
impl run::TensorSource for NoSource {
    fn load_f32(&self, _job: &run::TensorJob) -> Result<Vec<f32>> {
        Err(PipelineError::general(
            "no tensor source",
            "Report this as a bug",
        ))
    }
}
