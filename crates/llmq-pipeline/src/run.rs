//! The quantize driver: work units (one per transformer block, plus one for the
//! embeddings/head) are processed by a pool of workers sized from the RAM budget; each
//! worker loads one tensor at a time as f32 (memory-mapped source, so only that tensor
//! is resident), checks it is finite, quantizes its rows in parallel, measures the
//! error against the source, and writes the bytes straight to their planned offset in
//! the output's `.tmp` file. Finished units are checkpointed; the file is re-read and
//! checked before it is renamed to its final name. This is the executor of the
//! streaming methods of the registry ([`crate::methods`]: the GGML block quantizers).

use crate::checkpoint::units::TensorRecord;
use crate::checkpoint::{sha256_hex, CheckpointOptions, UnitCheckpoint};
use crate::error::{ErrorKind, PipelineError, Result};
use crate::memory;
use crate::report::TensorReport;
use llmq_formats::gguf::{temp_path_for, GgufFile, GgufPlan, GgufStreamWriter};
use llmq_formats::GgmlType;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// One output tensor to produce.
#[derive(Debug, Clone)]
pub struct TensorJob {
    /// name in the output file
    pub name: String,
    /// ggml `ne` order (ne[0] = row length)
    pub shape_ne: Vec<u64>,
    pub ty: GgmlType,
    /// index of the work unit it belongs to
    pub unit: usize,
}

impl TensorJob {
    pub fn numel(&self) -> usize {
        self.shape_ne.iter().product::<u64>() as usize
    }
    pub fn row_len(&self) -> usize {
        self.shape_ne[0] as usize
    }
}

/// A group of tensors processed and checkpointed together (a transformer block).
#[derive(Debug, Clone)]
pub struct WorkUnit {
    pub label: String,
    /// indices into the job list
    pub jobs: Vec<usize>,
}

/// Where tensor values come from (a safetensors checkpoint, a GGUF file, ...).
pub trait TensorSource: Sync {
    /// The f32 values of job `job` in row-major order (rows of `shape_ne[0]`).
    fn load_f32(&self, job: &TensorJob) -> Result<Vec<f32>>;
    /// How to name the job in messages (e.g. with the source tensors it comes from).
    fn describe(&self, job: &TensorJob) -> String {
        job.name.clone()
    }
    /// The job's bytes unchanged, when the source already holds it in the target type.
    fn passthrough(&self, _job: &TensorJob) -> Option<Vec<u8>> {
        None
    }
    /// Rows `[r0, r1)` of the job as f32, when the source can read part of a tensor
    /// (`None`: only whole tensors, through [`TensorSource::load_f32`]).
    fn load_rows(&self, _job: &TensorJob, _r0: usize, _r1: usize) -> Option<Result<Vec<f32>>> {
        None
    }
    /// The job is done: its source pages may leave memory.
    fn release(&self, _job: &TensorJob) {}
    /// Importance weights for a job's columns, if an imatrix is in use.
    fn importance(&self, _job: &TensorJob) -> Option<Vec<f32>> {
        None
    }
}

/// Receives progress events (the CLI draws a bar on stderr).
pub trait Progress: Sync {
    fn message(&self, _msg: &str) {}
    fn start(&self, _total_units: usize, _already_done: usize) {}
    fn unit_done(&self, _label: &str) {}
    fn finish(&self) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub output: PathBuf,
    pub checkpoint: Option<CheckpointOptions>,
    pub validate: bool,
    pub max_workers: Option<usize>,
    pub ram_budget_bytes: Option<u64>,
    /// identifies inputs and options (for checkpoints)
    pub fingerprint: String,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub output: PathBuf,
    pub file_size: u64,
    pub tensors: Vec<TensorReport>,
    pub units: usize,
    pub units_resumed: usize,
    pub workers: usize,
    pub validated: bool,
}

/// One written tensor's report line; `method` says how its bytes were made.
fn tensor_report(
    job: &TensorJob,
    method: &str,
    rmse: Option<f64>,
    rel_rmse: Option<f64>,
    sha256: String,
) -> TensorReport {
    let cols = job.row_len();
    TensorReport {
        name: job.name.clone(),
        shape: [job.numel() / cols.max(1), cols],
        quant: job.ty.name().to_string(),
        method: method.to_string(),
        rmse,
        rel_rmse,
        sha256: Some(sha256),
        calibration: None,
    }
}

/// The method label of a quantized job.
fn quantized_method(job: &TensorJob, imatrix: bool) -> &'static str {
    match job.ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => "convert",
        _ if imatrix => "k-quant+imatrix",
        _ => "k-quant",
    }
}

/// Set by a Ctrl-C handler; workers stop at the next unit boundary.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

/// The `.tmp` name the writer uses for `output`.
pub fn temp_path(output: &Path) -> PathBuf {
    temp_path_for(output)
}

/// Quantize every job of `plan` into `opts.output`.
pub fn run(
    plan: &GgufPlan,
    jobs: &[TensorJob],
    units: &[WorkUnit],
    source: &dyn TensorSource,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<RunReport> {
    let out = &opts.output;
    let io_err = |what: &str, e: &dyn std::fmt::Display| {
        PipelineError::general(
            format!("{what} {}: {e}", out.display()),
            "Check the output directory",
        )
    };

    // Checkpoint state and the writer (fresh, or reopened for --resume).
    let mut checkpoint = match &opts.checkpoint {
        Some(c) if c.resume => Some(UnitCheckpoint::load(&c.dir, out, &opts.fingerprint)?),
        Some(c) => Some(UnitCheckpoint::create(&c.dir, out, &opts.fingerprint)?),
        None => None,
    };
    let resuming = opts.checkpoint.as_ref().is_some_and(|c| c.resume);
    let writer = if resuming {
        GgufStreamWriter::open_existing(out, plan).map_err(|e| {
            PipelineError::checkpoint(
                format!("cannot resume into {}: {e}", temp_path(out).display()),
                "The partial output is missing or from another run; start over without --resume",
            )
        })?
    } else {
        GgufStreamWriter::create(out, plan).map_err(|e| {
            // Nothing worth resuming was written yet.
            let _ = std::fs::remove_file(temp_path(out));
            writer_error(out, e)
        })?
    };

    // Units already finished whose bytes are intact.
    let mut done = vec![false; units.len()];
    let mut stats: Vec<Option<TensorReport>> = vec![None; jobs.len()];
    if let Some(cp) = checkpoint.as_mut() {
        for &u in cp.state.units_done.clone().iter() {
            if u >= units.len() {
                continue;
            }
            let names: Vec<String> = units[u]
                .jobs
                .iter()
                .map(|&j| jobs[j].name.clone())
                .collect();
            let intact = units[u].jobs.iter().all(|&j| {
                let rec = cp.state.tensors.get(&jobs[j].name);
                let bytes = writer.read_tensor(&jobs[j].name).ok();
                matches!((rec, bytes), (Some(r), Some(b)) if r.sha256 == sha256_hex(&b))
            });
            if intact {
                done[u] = true;
                for &j in &units[u].jobs {
                    writer
                        .mark_written(&jobs[j].name)
                        .map_err(|e| io_err("cannot resume", &e))?;
                    let r = &cp.state.tensors[&jobs[j].name];
                    stats[j] = Some(tensor_report(
                        &jobs[j],
                        &r.method,
                        r.rmse,
                        r.rel_rmse,
                        r.sha256.clone(),
                    ));
                }
            } else {
                cp.forget(u, &names);
            }
        }
    }
    let units_resumed = done.iter().filter(|d| **d).count();

    // Size the worker pool from the largest unit's peak (one tensor at a time per
    // worker: f32 source + f32 dequantized copy + quantized bytes).
    let per_unit_peak = units
        .iter()
        .map(|u| {
            u.jobs
                .iter()
                .map(|&j| job_peak_bytes(&jobs[j]))
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let budget = opts
        .ram_budget_bytes
        .or_else(memory::available_bytes)
        .unwrap_or(8 << 30);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let wp =
        memory::plan_workers(per_unit_peak, budget, cpus, opts.max_workers).ok_or_else(|| {
            PipelineError::oom(
                format!(
                    "one layer needs about {:.2} GB but the RAM budget allows {:.2} GB",
                    per_unit_peak as f64 / 1e9,
                    budget as f64 * 0.8 / 1e9
                ),
                "Raise --ram-budget-gb or free memory",
            )
        })?;

    let stop_after_units = crate::test_hooks::get().stop_after_units;
    progress.start(units.len(), units_resumed);
    let next = AtomicUsize::new(0);
    let written_units = AtomicUsize::new(0);
    let failure: Mutex<Option<PipelineError>> = Mutex::new(None);
    let shared = Mutex::new((checkpoint, stats));
    let todo: Vec<usize> = (0..units.len()).filter(|u| !done[*u]).collect();

    std::thread::scope(|s| {
        for _ in 0..wp.workers.min(todo.len().max(1)) {
            s.spawn(|| loop {
                if failure.lock().unwrap().is_some() || CANCEL.load(Ordering::SeqCst) {
                    return;
                }
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&u) = todo.get(k) else { return };
                if let Some(limit) = stop_after_units {
                    if written_units.load(Ordering::SeqCst) >= limit {
                        return;
                    }
                }
                match process_unit(&units[u], jobs, source, &writer, opts.validate) {
                    Ok(recs) => {
                        let mut g = shared.lock().unwrap();
                        let (cp, stats) = &mut *g;
                        let mut cp_recs = Vec::new();
                        for (j, stat, rec) in recs {
                            stats[j] = Some(stat);
                            cp_recs.push((jobs[j].name.clone(), rec));
                        }
                        if let Some(cp) = cp.as_mut() {
                            if let Err(e) = cp.mark_done(u, cp_recs) {
                                failure.lock().unwrap().get_or_insert(e);
                                return;
                            }
                        }
                        written_units.fetch_add(1, Ordering::SeqCst);
                        progress.unit_done(&units[u].label);
                        drop(g);
                        crate::test_hooks::after_unit();
                    }
                    Err(e) => {
                        failure.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    progress.finish();

    let (checkpoint, stats) = shared.into_inner().unwrap();
    if let Some(e) = failure.into_inner().unwrap() {
        // a failure of the input itself cannot be resumed: nothing is kept for it
        let resumable = !matches!(
            e.kind(),
            ErrorKind::Validation | ErrorKind::Unsupported | ErrorKind::InvalidArgument
        );
        match checkpoint {
            Some(cp) if !resumable => {
                cp.remove();
                let _ = std::fs::remove_file(temp_path(out));
            }
            Some(_) => {}
            None => {
                let _ = std::fs::remove_file(temp_path(out));
            }
        }
        return Err(e);
    }
    if CANCEL.load(Ordering::SeqCst) {
        let hint = if checkpoint.is_some() {
            "Run the same command with --resume to continue"
        } else {
            "Run again; use checkpoints (the default) to be able to resume"
        };
        if checkpoint.is_none() {
            let _ = std::fs::remove_file(temp_path(out));
        }
        return Err(PipelineError::cancelled(
            "cancelled by the user; no complete output was written",
            hint,
        ));
    }
    if stop_after_units.is_some() && stats.iter().any(Option::is_none) {
        // Simulated crash for tests: leave the .tmp and checkpoint as a kill would.
        return Err(PipelineError::cancelled(
            "stopped early (test hook)",
            "resume",
        ));
    }
    let stats: Vec<TensorReport> = stats
        .into_iter()
        .map(|s| s.expect("every job ran"))
        .collect();

    // Re-read the complete file and check it against the plan before naming it.
    if opts.validate {
        progress.message("Validating output...");
        writer.seal().map_err(|e| writer_error(out, e))?;
        if let Err(e) = verify_written(&temp_path(out), plan, jobs, &stats) {
            // a sealed file that failed its check is neither a model nor resumable
            let _ = std::fs::remove_file(temp_path(out));
            if let Some(cp) = checkpoint {
                cp.remove();
            }
            return Err(e);
        }
    }
    writer.finish().map_err(|e| writer_error(out, e))?;
    if let Some(cp) = checkpoint {
        cp.remove();
    }
    let file_size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(RunReport {
        output: out.clone(),
        file_size,
        tensors: stats,
        units: units.len(),
        units_resumed,
        workers: wp.workers,
        validated: opts.validate,
    })
}

fn writer_error(out: &Path, e: llmq_formats::gguf::GgufError) -> PipelineError {
    if let llmq_formats::gguf::GgufError::Io { source, .. } = &e {
        return PipelineError::io("cannot write", out, source);
    }
    PipelineError::general(
        format!("cannot write {}: {e}", out.display()),
        "Check the output directory",
    )
}

fn job_peak_bytes(j: &TensorJob) -> u64 {
    let n = j.numel() as u64;
    n * 4 * 2
        + j.ty.row_bytes(j.row_len()).unwrap_or(j.row_len() * 4) as u64
            * (n / j.row_len().max(1) as u64)
}

type UnitRecords = Vec<(usize, TensorReport, TensorRecord)>;

fn process_unit(
    unit: &WorkUnit,
    jobs: &[TensorJob],
    source: &dyn TensorSource,
    writer: &GgufStreamWriter,
    validate: bool,
) -> Result<UnitRecords> {
    let mut out = Vec::with_capacity(unit.jobs.len());
    for &j in &unit.jobs {
        let job = &jobs[j];
        if let Some(bytes) = source.passthrough(job) {
            writer
                .write_tensor(&job.name, &bytes)
                .map_err(|e| writer_error(&PathBuf::from(&job.name), e))?;
            let sha256 = sha256_hex(&bytes);
            let rmse = validate.then_some(0.0);
            let rec = TensorRecord {
                sha256: sha256.clone(),
                rmse,
                rel_rmse: rmse,
                method: "copy".into(),
            };
            let stat = tensor_report(job, "copy", rmse, rmse, sha256);
            out.push((j, stat, rec));
            source.release(job);
            continue;
        }
        let imatrix = source.importance(job);
        let (bytes, rmse, rel) = quantize_tensor(job, source, imatrix.as_deref(), validate)?;
        writer
            .write_tensor(&job.name, &bytes)
            .map_err(|e| writer_error(&PathBuf::from(&job.name), e))?;
        let method = quantized_method(job, imatrix.is_some());
        let rec = TensorRecord {
            sha256: sha256_hex(&bytes),
            rmse,
            rel_rmse: rel,
            method: method.into(),
        };
        let stat = tensor_report(job, method, rmse, rel, rec.sha256.clone());
        out.push((j, stat, rec));
        source.release(job);
    }
    Ok(out)
}

/// Elements per streamed chunk: large tensors (embeddings, heads) are loaded, checked
/// and quantized this many values at a time when the source can read row ranges.
const CHUNK_ELEMS: usize = 4 << 20;

/// Load, check, quantize and measure one tensor, in row chunks where the source
/// allows, so a tensor never needs to be resident in f32 as a whole.
fn quantize_tensor(
    job: &TensorJob,
    source: &dyn TensorSource,
    imatrix: Option<&[f32]>,
    validate: bool,
) -> Result<(Vec<u8>, Option<f64>, Option<f64>)> {
    let n = job.row_len();
    let rows = job.numel() / n.max(1);
    let chunk_rows = (CHUNK_ELEMS / n.max(1)).max(1);
    let mut bytes = Vec::new();
    let (mut se, mut ss) = (0.0f64, 0.0f64);
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + chunk_rows).min(rows);
        let values = match source.load_rows(job, r0, r1) {
            Some(v) => v?,
            None if r0 == 0 => {
                // The source reads whole tensors only.
                let v = source.load_f32(job)?;
                r0 = rows;
                v
            }
            None => unreachable!("load_rows answered for the first chunk"),
        };
        let first_elem = if r0 == rows { 0 } else { r0 * n };
        let expect = if r0 == rows {
            job.numel()
        } else {
            (r1 - r0) * n
        };
        if values.len() != expect {
            return Err(PipelineError::general(
                format!(
                    "tensor {} has {} values where {expect} were expected",
                    job.name,
                    values.len()
                ),
                "The source is inconsistent with its config; re-download it",
            ));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(PipelineError::validation(
                format!(
                    "tensor {} holds a non-finite value ({}) at element {}; refusing to write garbage",
                    source.describe(job),
                    values[i],
                    first_elem + i
                ),
                "The source weights are corrupt: re-download or fix the checkpoint",
            ));
        }
        let first_row = if r0 == rows { 0 } else { r0 };
        let q = quantize_rows_at(job, &values, imatrix, first_row)?;
        if validate {
            let (a, b) = error_sums(job, &values, &q)?;
            se += a;
            ss += b;
        }
        bytes.extend_from_slice(&q);
        if r0 == rows {
            break;
        }
        r0 = r1;
    }
    if !validate {
        return Ok((bytes, None, None));
    }
    let count = job.numel().max(1) as f64;
    let rmse = (se / count).sqrt();
    if !rmse.is_finite() {
        return Err(PipelineError::validation(
            format!("{}: quantization error is not finite", job.name),
            "Report this as a bug, with the model",
        ));
    }
    let rms = (ss / count).sqrt();
    Ok((
        bytes,
        Some(rmse),
        Some(if rms > 0.0 { rmse / rms } else { 0.0 }),
    ))
}

/// Quantize a tensor's rows in parallel (deterministic: rows are independent).
pub fn quantize_rows(job: &TensorJob, values: &[f32], imatrix: Option<&[f32]>) -> Result<Vec<u8>> {
    quantize_rows_at(job, values, imatrix, 0)
}

/// [`quantize_rows`] for rows starting at row `first_row` of the job (chunks): with
/// one importance vector per expert (`imatrix` of `n_mat` rows' widths), each row
/// uses its expert's.
pub fn quantize_rows_at(
    job: &TensorJob,
    values: &[f32],
    imatrix: Option<&[f32]>,
    first_row: usize,
) -> Result<Vec<u8>> {
    let n = job.row_len();
    let row_bytes = job.ty.row_bytes(n).ok_or_else(|| {
        PipelineError::unsupported(
            format!(
                "{}: rows of {n} are not a multiple of {}'s block",
                job.name, job.ty
            ),
            "Choose another level",
        )
    })?;
    let rows = values.len() / n;
    let mut bytes = vec![0u8; rows * row_bytes];
    // Stacked experts: one importance vector per expert, over its rows.
    let total_rows = job.numel() / n.max(1);
    let n_mat = imatrix.map_or(1, |w| (w.len() / n).max(1));
    if n_mat > 1 && total_rows.is_multiple_of(n_mat) {
        let per = total_rows / n_mat;
        let w = imatrix.expect("n_mat > 1 needs weights");
        let mut r = 0;
        while r < rows {
            let e = (first_row + r) / per;
            let end = ((e + 1) * per - first_row).min(rows);
            let sub = TensorJob {
                name: job.name.clone(),
                shape_ne: vec![n as u64, (end - r) as u64],
                ty: job.ty,
                unit: job.unit,
            };
            let q = quantize_rows_at(
                &sub,
                &values[r * n..end * n],
                Some(&w[e * n..(e + 1) * n]),
                0,
            )?;
            bytes[r * row_bytes..end * row_bytes].copy_from_slice(&q);
            r = end;
        }
        return Ok(bytes);
    }
    // Chunks of rows big enough to amortise scheduling.
    let rows_per_chunk = (64 * 1024 / n).max(1);
    bytes
        .par_chunks_mut(rows_per_chunk * row_bytes)
        .zip(values.par_chunks(rows_per_chunk * n))
        .try_for_each(|(dst, src)| llmq_quant::quantize(job.ty, src, n, imatrix, dst))
        .map_err(|e| {
            PipelineError::general(format!("{}: {e}", job.name), "Report this as a bug")
        })?;
    Ok(bytes)
}

/// Sums of squared error and squared value, from dequantizing what was written,
/// chunk by chunk (no full-size copy), added in order so that the figures do not
/// depend on the thread count.
fn error_sums(job: &TensorJob, values: &[f32], bytes: &[u8]) -> Result<(f64, f64)> {
    let n = job.row_len();
    let row_bytes = bytes.len() / (values.len() / n).max(1);
    let rows_per_chunk = (64 * 1024 / n).max(1);
    let sums: Vec<(f64, f64)> = values
        .par_chunks(rows_per_chunk * n)
        .zip(bytes.par_chunks(rows_per_chunk * row_bytes))
        .map(|(src, q)| {
            let mut deq = vec![0f32; src.len()];
            llmq_quant::dequantize(job.ty, q, &mut deq).map(|_| {
                src.iter().zip(&deq).fold((0.0, 0.0), |acc, (a, b)| {
                    let d = (*a as f64) - (*b as f64);
                    (acc.0 + d * d, acc.1 + (*a as f64) * (*a as f64))
                })
            })
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            PipelineError::general(format!("{}: {e}", job.name), "Report this as a bug")
        })?;
    Ok(sums.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1)))
}

/// Re-open the written file and check names, types, shapes and bytes against the plan.
fn verify_written(
    path: &Path,
    plan: &GgufPlan,
    jobs: &[TensorJob],
    stats: &[TensorReport],
) -> Result<()> {
    let bad = |m: String| {
        PipelineError::validation(
            m,
            "The output failed its check and was not kept under its final name; run again",
        )
    };
    let f = GgufFile::open(path).map_err(|e| bad(format!("written file does not parse: {e}")))?;
    if f.tensors().len() != plan.tensors.len() {
        return Err(bad(format!(
            "written file has {} tensors, plan has {}",
            f.tensors().len(),
            plan.tensors.len()
        )));
    }
    for (job, stat) in jobs.iter().zip(stats) {
        let t = f
            .tensor(&job.name)
            .ok_or_else(|| bad(format!("tensor {} missing from output", job.name)))?;
        if t.ggml_type != job.ty || t.shape_ne != job.shape_ne {
            return Err(bad(format!(
                "tensor {} has the wrong type or shape in the output",
                job.name
            )));
        }
        if stat.sha256.as_deref() != Some(sha256_hex(f.tensor_bytes(t)).as_str()) {
            return Err(bad(format!(
                "tensor {} bytes differ from what was written",
                job.name
            )));
        }
    }
    Ok(())
}
