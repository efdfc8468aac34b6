//! The streaming executor's stages for GGUF output (`quantize MODEL gguf -q LEVEL`):
//! plan the GGUF from the source (tensor names, metadata, the level's mix rules),
//! calibrate (an importance matrix from a file or from calibration text), allocate
//! (every tensor's type, [`crate::allocate`]), pick the output path and check the
//! disk, then quantize, write and validate through [`crate::run`].

use crate::allocate::Allocation;
use crate::error::{PipelineError, Result};
use crate::report::QuantizeOutcome;
use crate::request::QuantizeRequest;
use crate::run::{self, Progress, RunOptions};
use crate::source::{self, ModelSummary, ResolvedModel};
use crate::staging::{self, OutputKind};
use crate::{gguf_source, hf_source};
use llmq_arch::mix::Mix;
use llmq_formats::gguf::GgufPlan;
use std::path::Path;

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

/// The GGUF mix of a level name.
pub(crate) fn gguf_mix(level: &str) -> Result<Mix> {
    Mix::from_name(level).ok_or_else(|| {
        PipelineError::invalid(
            format!("unknown GGUF quantization level `{level}`"),
            format!(
                "Use one of: {}",
                Mix::all().map(|m| m.name()).collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// Quantize to GGUF.
pub(crate) fn quantize_streaming(
    req: &QuantizeRequest,
    resolved: ResolvedModel,
    progress: &dyn Progress,
) -> Result<QuantizeOutcome> {
    let mix = gguf_mix(&req.level)?;
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
    let imatrix = match (&req.imatrix, req.wants_imatrix_calibration()) {
        (Some(p), _) => Some(llmq_calib::ImatrixData::read(p).map_err(|e| {
            PipelineError::invalid(
                format!("cannot use imatrix {}: {e}", p.display()),
                "Give a llama.cpp imatrix file (GGUF or legacy .dat)",
            )
        })?),
        (None, true) => {
            let path = match &resolved {
                ResolvedModel::HfDir(d) => d.clone(),
                ResolvedModel::GgufFile(f) => f.clone(),
            };
            let (d, notes) = crate::calibrated::collect_imatrix(
                &path,
                &req.calibration,
                req.ram_budget_bytes,
                &req.device,
                progress,
            )?;
            for n in notes {
                progress.message(&format!("note: {n}"));
            }
            Some(d)
        }
        (None, false) => None,
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
    // allocate: the mix rules' type for every tensor, or the measured allocation
    let (alloc, allocation) = match &req.target_bpw {
        None => (Allocation::from_gguf_jobs(&planned.jobs), None),
        Some(t) => {
            let path = match &resolved {
                ResolvedModel::HfDir(d) => d.as_path(),
                ResolvedModel::GgufFile(f) => f.as_path(),
            };
            let (a, r) = crate::target_bpw::allocate(
                t.bpw,
                t.measurements.as_deref(),
                path,
                &planned.jobs,
                &planned.plan,
                planned.source.as_ref(),
                &crate::request::CalibrationRequest {
                    samples: t.windows,
                    ..req.calibration.clone()
                },
                progress,
            )?;
            (a, Some(r))
        }
    };
    alloc.apply_to_gguf(&mut planned.jobs, &mut planned.plan)?;
    let level = match &allocation {
        Some(r) => format!("{:.2}bpw", r.target_bpw),
        None => mix.name().to_string(),
    };
    progress.message(&format!("Quantizing to GGUF {level}"));

    let out_dir = &req.output_dir;
    staging::prepare_output_dir(out_dir)?;
    let output = staging::output_path(
        out_dir,
        req.output_name.as_deref(),
        format!("{name}-{level}.gguf"),
        OutputKind::File,
    )?;
    let need = planned
        .plan
        .layout()
        .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?
        .total_size();
    if let Some(r) = &allocation {
        if need > r.budget_bytes {
            return Err(PipelineError::general(
                format!(
                    "the allocation takes {need} bytes, over its budget of {}",
                    r.budget_bytes
                ),
                "Report this as a bug",
            ));
        }
    }
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
            level,
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
    // every output of the run complete before the model gets its final name: the
    // imatrix first, removed again when the run fails
    let imatrix_path = computed
        .as_ref()
        .map(|_| output.with_extension("imatrix.gguf"));
    if let (Some(data), Some(p)) = (&computed, &imatrix_path) {
        data.write_gguf(p).map_err(|e| {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(llmq_formats::gguf::temp_path_for(p));
            PipelineError::general(
                format!("cannot write the imatrix {}: {e}", p.display()),
                "Check the output directory",
            )
        })?;
    }
    let report = run::run(
        &planned.plan,
        &planned.jobs,
        &planned.units,
        planned.source.as_ref(),
        &opts,
        progress,
    )
    .inspect_err(|_| {
        if let Some(p) = &imatrix_path {
            let _ = std::fs::remove_file(p);
        }
    })?;
    if let Some(p) = &imatrix_path {
        progress.message(&format!("Importance matrix saved: {}", p.display()));
    }
    progress.message(&format!(
        "Complete: {} ({:.1} MB)",
        output.display(),
        report.file_size as f64 / 1e6
    ));
    let output_params = planned.jobs.iter().map(|j| j.numel() as u64).sum();
    Ok(QuantizeOutcome {
        output: report.output,
        format: req.format.name().to_string(),
        level,
        method: if imatrix_id.is_some() {
            "k-quant+imatrix"
        } else {
            "k-quant"
        }
        .to_string(),
        file_size: report.file_size,
        summary: planned.summary,
        tensors: report.tensors,
        params: output_params,
        calibration: None,
        units: report.units,
        units_resumed: report.units_resumed,
        workers: Some(report.workers),
        validated: report.validated,
        peak_memory_bytes: crate::memory::peak_rss_bytes().unwrap_or(0),
        allocation,
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
