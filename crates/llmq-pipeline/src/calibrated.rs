//! `quantize MODEL gptq|awq|compressed-tensors -q LEVEL`: calibrated integer
//! quantization into Hugging Face checkpoints (GPTQModel / AutoAWQ GEMM /
//! compressed-tensors pack-quantized layouts, `llmq_hfquant`).
//!
//! The driver is block-sequential, as GPTQ (arXiv 2210.17323, §4 "Step 3") and AWQ
//! (arXiv 2306.00978) run it: calibration samples are embedded, then for each block
//! i: (1) block i runs on the stored outputs of block i−1 with a
//! [`LinearObserver`] that accumulates what the quantizers need per distinct Linear
//! input (`H = 2/n·XᵀX` for GPTQ — q/k/v share one, gate/up share one —, `mean|x|`
//! and a row sample for AWQ, and the tokens routed to every expert); (2) every Linear
//! of the block is quantized; (3) its dequantized weights (and, for AWQ, the norms
//! the scales were folded into) are put back into the engine and block i runs again,
//! so block i+1 is calibrated on the *quantized* model's activations.
//!
//! Activations are held in bf16, in memory up to half the RAM budget and in a
//! temporary file beyond it.
//!
//! Checkpoints (unless `--no-checkpoints`; [`crate::calib_checkpoint`]): after block
//! i is quantized and has run again with its quantized weights, the checkpoint
//! records (a) block i's quantized modules (the integers, scales, zero points and
//! g_idx the writers pack) with their report lines, the norms AWQ folded its scales
//! into and the modules kept in full precision (routers), and (b) the bf16
//! activations that feed block i+1 — only the latest snapshot is kept; round-to-
//! nearest needs none, its activations stay the embeddings. Nothing else carries
//! over between blocks (the engine's weights of block i are read only by block i;
//! observer statistics and expert token counts are per block). Files are written
//! under temporary names, fsynced and renamed, the state file last. `--resume`
//! checks the fingerprint (source files, format and quantizer options, calibration
//! tokens, output folder; a mismatch is a checkpoint error, exit 7), reloads blocks
//! 0..=i and the snapshot, and continues with block i+1. Every step is
//! deterministic (ordered maps, fixed batch order), so the output is byte-identical
//! to an uninterrupted run. The checkpoint is removed once the output is in place.
//!
//! Fallbacks, all reported per tensor:
//! * a routed expert that got fewer than [`MIN_EXPERT_TOKENS`] tokens is GPTQ'd with
//!   the Hessian of *all* tokens at the MoE input (`Σ_e X_eᵀX_e / (top_k·n)`: every
//!   token reaches exactly `top_k` experts), and its down projection, whose input
//!   never existed, falls back to round-to-nearest;
//! * AWQ: an expert with too few tokens gets no scale/clip search (RTN with AWQ's
//!   quantizer); the MoE input is not scaled (the router shares it), only clipped.
//! * a Hessian that is not positive definite gets dampening ×10 per retry up to
//!   `max_damp_percent`, then an error naming the tensor.

use crate::calib_checkpoint::{encode_block, BlockState, CalibCheckpoint};
use crate::error::{PipelineError, Result};
use crate::run::{CheckpointOptions, Progress};
use crate::source::{self, ModelSummary, ResolvedModel};
use half::bf16;
use llmq_arch::{apply_transform, gguf_plan, GgufTensorSpec, Transform};
use llmq_calib::awq::{self as awq_algo, AwqLayer};
use llmq_calib::dataset::{load_calibration, CalibrationSet, DatasetOptions};
use llmq_calib::{gptq_quantize, GptqConfig, HessianAccumulator};
use llmq_engine::{LinearObserver, LinearSite, LinearStage, Model, WeightSource};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::compressed_tensors::{self as ct, CtStrategy, CtWeightScheme};
use llmq_hfquant::gptq::GptqFormat;
use llmq_hfquant::{Dtype, HfTensor, IntQuantized, ShardedWriter};
use llmq_kernels::WeightMatrix;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// Experts with fewer routed calibration tokens than this use the fallback.
pub const MIN_EXPERT_TOKENS: u64 = 16;
/// Rows kept per Linear input for AWQ's searches (AutoAWQ's clip search uses 512
/// tokens; its scale search uses all, which costs too much on CPUs).
pub const AWQ_SAMPLE_ROWS: usize = 512;

/// The checkpoint layout written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfFormat {
    Gptq(GptqFormat),
    Awq,
    CompressedTensors,
}

impl HfFormat {
    pub fn name(self) -> &'static str {
        match self {
            HfFormat::Gptq(_) => "gptq",
            HfFormat::Awq => "awq",
            HfFormat::CompressedTensors => "compressed-tensors",
        }
    }
}

/// How weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Gptq,
    Awq,
    Rtn,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Gptq => "gptq",
            Method::Awq => "awq",
            Method::Rtn => "rtn",
        }
    }
}

/// Everything a calibrated run needs (validated by [`CalibratedRequest::check`]).
#[derive(Debug, Clone)]
pub struct CalibratedRequest {
    pub model: String,
    pub format: HfFormat,
    /// the level as given (`4bit`, `W4A16`, …)
    pub level: String,
    pub method: Method,
    pub bits: u8,
    /// `None` = per channel
    pub group_size: Option<usize>,
    pub symmetric: bool,
    pub act_order: bool,
    pub damp_percent: f64,
    pub calibration_data: Option<PathBuf>,
    pub calibration_samples: usize,
    pub seq_len: usize,
    pub output_dir: PathBuf,
    pub output_name: Option<String>,
    pub ram_budget_bytes: Option<u64>,
    pub token: Option<String>,
    pub validate: bool,
    /// per-block checkpoints (`None`: `--no-checkpoints`)
    pub checkpoint: Option<CheckpointOptions>,
}

/// One quantized tensor's report line.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibTensorStat {
    /// HF weight name
    pub name: String,
    pub out_features: usize,
    pub in_features: usize,
    /// `gptq`, `awq`, `rtn`, or a fallback (`gptq:all-tokens-hessian`, `rtn:no-tokens`)
    pub method: String,
    /// calibration rows that reached this Linear
    pub tokens: u64,
    pub rmse: f64,
    pub rel_rmse: f64,
    /// GPTQ: the dampening that made H positive definite
    pub damp_percent: Option<f64>,
    /// GPTQ: `Σ (w − q)² / (2·U_ii²)`; AWQ: output MSE on the sample rows
    pub loss: Option<f64>,
    /// AWQ: the chosen exponent α
    pub awq_ratio: Option<f32>,
    pub note: Option<String>,
}

/// What a calibrated run produced.
#[derive(Debug, Clone)]
pub struct CalibratedOutcome {
    pub output: PathBuf,
    pub format: HfFormat,
    pub level: String,
    pub method: Method,
    pub file_size: u64,
    pub summary: ModelSummary,
    pub tensors: Vec<CalibTensorStat>,
    pub calibration_source: String,
    pub calibration_samples: usize,
    pub calibration_tokens: usize,
    pub seq_len: usize,
    pub notes: Vec<String>,
    pub spilled_to_disk: bool,
    pub validated: bool,
    pub peak_memory_bytes: u64,
    /// parameters in the source (for bits per weight)
    pub params: u64,
    /// blocks taken from a checkpoint (`--resume`)
    pub layers_resumed: usize,
    pub layers: usize,
}

impl CalibratedOutcome {
    pub fn mean_relative_rmse(&self) -> Option<f64> {
        let (mut s, mut n) = (0.0, 0usize);
        for t in &self.tensors {
            let k = t.out_features * t.in_features;
            s += t.rel_rmse * k as f64;
            n += k;
        }
        (n > 0).then(|| s / n as f64)
    }
    pub fn mean_rmse(&self) -> Option<f64> {
        let (mut s, mut n) = (0.0, 0usize);
        for t in &self.tensors {
            let k = t.out_features * t.in_features;
            s += t.rmse * k as f64;
            n += k;
        }
        (n > 0).then(|| s / n as f64)
    }
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.file_size as f64 * 8.0 / self.params as f64
        }
    }
    /// The `n` tensors with the largest relative RMSE.
    pub fn worst_tensors(&self, n: usize) -> Vec<&CalibTensorStat> {
        let mut v: Vec<&CalibTensorStat> = self.tensors.iter().collect();
        v.sort_by(|a, b| {
            b.rel_rmse
                .partial_cmp(&a.rel_rmse)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        v.truncate(n);
        v
    }
}

impl CalibratedRequest {
    fn check(&self) -> Result<()> {
        let inv = |m: String, s: &str| Err(PipelineError::invalid(m, s));
        if !matches!(self.bits, 2 | 3 | 4 | 8) {
            return inv(format!("{} bits", self.bits), "Use 2, 3, 4 or 8 bits");
        }
        if let Some(g) = self.group_size {
            if ![32, 64, 128].contains(&g) {
                return inv(
                    format!("--group-size {g} is not supported"),
                    "Use --group-size 32, 64, 128 or -1 (per channel)",
                );
            }
        }
        if !(self.damp_percent.is_finite() && self.damp_percent > 0.0 && self.damp_percent < 1.0) {
            return inv(
                format!("--damp-percent {} must be in (0, 1)", self.damp_percent),
                "e.g. --damp-percent 0.01",
            );
        }
        if self.calibration_samples == 0 {
            return inv(
                "--calibration-samples must be at least 1".into(),
                "e.g. --calibration-samples 128",
            );
        }
        if self.seq_len < 2 {
            return inv(
                "--calibration-seq-len must be at least 2".into(),
                "e.g. --calibration-seq-len 512",
            );
        }
        match self.format {
            HfFormat::Awq => {
                if self.bits != 4 || self.symmetric || self.group_size.is_none() {
                    return inv(
                        format!(
                            "AWQ GEMM stores 4-bit asymmetric groups (got {} bits, {}, group {:?})",
                            self.bits,
                            if self.symmetric {
                                "symmetric"
                            } else {
                                "asymmetric"
                            },
                            self.group_size
                        ),
                        "Use `awq -q 4bit` with a group size of 32, 64 or 128",
                    );
                }
                if self.act_order {
                    return inv(
                        "AWQ checkpoints have no act-order (g_idx)".into(),
                        "Drop --act-order, or quantize to gptq",
                    );
                }
                if self.method == Method::Gptq {
                    return inv(
                        "--method gptq cannot write AWQ (AWQ zero points are not GPTQ's)".into(),
                        "Use --method awq or rtn",
                    );
                }
            }
            HfFormat::Gptq(_) | HfFormat::CompressedTensors => {
                // AWQ's zero points can be 0, which GPTQ v1 cannot store
                let v1 = self.format == HfFormat::Gptq(GptqFormat::V1);
                if self.method == Method::Awq && (self.symmetric || v1 || self.group_size.is_none())
                {
                    return inv(
                        "--method awq needs an asymmetric, grouped layout".into(),
                        "Use `awq -q 4bit`, `gptq --checkpoint-format gptq_v2 --symmetric false`, or compressed-tensors W4A16_ASYM",
                    );
                }
            }
        }
        if self.method == Method::Awq && self.act_order {
            return inv("AWQ has no act-order".into(), "Drop --act-order");
        }
        Ok(())
    }
}

fn engine_err(e: llmq_engine::EngineError) -> PipelineError {
    match e {
        llmq_engine::EngineError::UnsupportedArch(a) => PipelineError::unsupported(
            format!("architecture `{a}` is not supported by the calibration engine"),
            "Use gguf output, or one of the supported architectures",
        ),
        e @ llmq_engine::EngineError::UnsupportedType { .. } => PipelineError::unsupported(
            e.to_string(),
            "Calibrate from the original Hugging Face checkpoint instead",
        ),
        e => PipelineError::general(e.to_string(), "Check the model files"),
    }
}

fn hf_err(e: llmq_hfquant::Error) -> PipelineError {
    PipelineError::general(e.to_string(), "Report this as a bug")
}

// ---------------------------------------------------------------------------------
// activation store

/// Hidden states of all calibration samples in bf16: in memory, or in a file.
struct ActStore {
    d: usize,
    lens: Vec<usize>,
    /// offsets in values
    offs: Vec<usize>,
    mem: Option<Vec<u16>>,
    file: Option<(PathBuf, std::fs::File)>,
}

impl ActStore {
    fn new(d: usize, lens: Vec<usize>, spill_dir: Option<&Path>) -> Result<ActStore> {
        let mut offs = Vec::with_capacity(lens.len());
        let mut o = 0;
        for &l in &lens {
            offs.push(o);
            o += l * d;
        }
        let (mem, file) = match spill_dir {
            None => (Some(vec![0u16; o]), None),
            Some(dir) => {
                let p = dir.join(".activations.bf16");
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&p)
                    .map_err(|e| {
                        PipelineError::io("cannot create activation spill file", &p, &e)
                    })?;
                f.set_len(o as u64 * 2)
                    .map_err(|e| PipelineError::io("cannot size activation spill file", &p, &e))?;
                (None, Some((p, f)))
            }
        };
        Ok(ActStore {
            d,
            lens,
            offs,
            mem,
            file,
        })
    }

    fn read(&mut self, s: usize, out: &mut Vec<f32>) -> Result<()> {
        let n = self.lens[s] * self.d;
        let off = self.offs[s];
        out.clear();
        if let Some(m) = &self.mem {
            out.extend(m[off..off + n].iter().map(|&b| bf16::from_bits(b).to_f32()));
            return Ok(());
        }
        let (p, f) = self.file.as_mut().expect("store has memory or a file");
        let mut bytes = vec![0u8; n * 2];
        f.seek(SeekFrom::Start(off as u64 * 2))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| PipelineError::io("cannot read activations", p, &e))?;
        out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        );
        Ok(())
    }

    fn write(&mut self, s: usize, x: &[f32]) -> Result<()> {
        let n = self.lens[s] * self.d;
        assert_eq!(x.len(), n);
        let off = self.offs[s];
        if let Some(m) = &mut self.mem {
            for (d, v) in m[off..off + n].iter_mut().zip(x) {
                *d = bf16::from_f32(*v).to_bits();
            }
            return Ok(());
        }
        let (p, f) = self.file.as_mut().expect("store has memory or a file");
        let bytes: Vec<u8> = x
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        f.seek(SeekFrom::Start(off as u64 * 2))
            .and_then(|_| f.write_all(&bytes))
            .map_err(|e| PipelineError::io("cannot write activations", p, &e))
    }
}

impl ActStore {
    /// Total values held.
    fn len(&self) -> usize {
        self.lens.iter().sum::<usize>() * self.d
    }

    /// Every value as little-endian bf16, in sample order (a checkpoint snapshot).
    fn save_to(&mut self, w: &mut dyn Write) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let werr = |e: std::io::Error| {
            PipelineError::checkpoint(
                format!("cannot write the activation snapshot: {e}"),
                "Check free space in the checkpoint directory, or pass --no-checkpoints",
            )
        };
        if let Some(m) = &self.mem {
            let mut bytes = Vec::with_capacity(CHUNK * 2);
            for c in m.chunks(CHUNK) {
                bytes.clear();
                bytes.extend(c.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&bytes).map_err(werr)?;
            }
            return Ok(());
        }
        let total = self.len() as u64 * 2;
        let (p, f) = self.file.as_mut().expect("store has memory or a file");
        f.seek(SeekFrom::Start(0))
            .map_err(|e| PipelineError::io("cannot read activations", p, &e))?;
        let n = std::io::copy(&mut (&*f).take(total), w).map_err(werr)?;
        if n != total {
            return Err(PipelineError::general(
                format!("activation spill file {} is short", p.display()),
                "Check the output directory",
            ));
        }
        Ok(())
    }

    /// Replace every value with a snapshot written by [`ActStore::save_to`].
    fn load_from(&mut self, r: &mut dyn Read) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let rerr = |e: std::io::Error| {
            PipelineError::checkpoint(
                format!("cannot read the activation snapshot: {e}"),
                "Run without --resume to start over",
            )
        };
        let total = self.len();
        if let Some(m) = &mut self.mem {
            let mut bytes = vec![0u8; CHUNK * 2];
            for c in m.chunks_mut(CHUNK) {
                let b = &mut bytes[..c.len() * 2];
                r.read_exact(b).map_err(rerr)?;
                for (d, s) in c.iter_mut().zip(b.chunks_exact(2)) {
                    *d = u16::from_le_bytes([s[0], s[1]]);
                }
            }
            return Ok(());
        }
        let (p, f) = self.file.as_mut().expect("store has memory or a file");
        f.seek(SeekFrom::Start(0))
            .map_err(|e| PipelineError::io("cannot write activations", p, &e))?;
        let n = std::io::copy(&mut (&mut *r).take(total as u64 * 2), f).map_err(rerr)?;
        if n != total as u64 * 2 {
            return Err(PipelineError::checkpoint(
                "the activation snapshot is short",
                "Run without --resume to start over",
            ));
        }
        Ok(())
    }
}

impl Drop for ActStore {
    fn drop(&mut self) {
        if let Some((p, _)) = &self.file {
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------------
// observer

type SiteKey = (LinearStage, Option<usize>, &'static str);

struct SiteAcc {
    weights: Vec<&'static str>,
    cols: usize,
    rows: u64,
    hess: Option<HessianAccumulator>,
    abs_sum: Vec<f64>,
    sample: Vec<f32>,
    /// keep every `stride`-th row
    stride: u64,
}

struct Collector {
    want_hessian: bool,
    want_awq: bool,
    sites: BTreeMap<SiteKey, SiteAcc>,
    expert_tokens: Vec<u64>,
}

impl LinearObserver for Collector {
    fn observe(&mut self, site: &LinearSite<'_>, x: &[f32], rows: usize) {
        if rows == 0 {
            return;
        }
        let cols = x.len() / rows;
        let key = (site.stage, site.expert, site.weights[0]);
        let acc = self.sites.entry(key).or_insert_with(|| SiteAcc {
            weights: site.weights.to_vec(),
            cols,
            rows: 0,
            hess: self.want_hessian.then(|| HessianAccumulator::new(cols)),
            abs_sum: if self.want_awq {
                vec![0.0; cols]
            } else {
                Vec::new()
            },
            sample: Vec::new(),
            stride: 1,
        });
        if let Some(h) = &mut acc.hess {
            h.add(x, rows);
        }
        if self.want_awq {
            for r in 0..rows {
                let row = &x[r * cols..(r + 1) * cols];
                acc.abs_sum
                    .iter_mut()
                    .zip(row)
                    .for_each(|(s, v)| *s += v.abs() as f64);
                let idx = acc.rows + r as u64;
                if idx.is_multiple_of(acc.stride) {
                    acc.sample.extend_from_slice(row);
                    if acc.sample.len() / cols >= AWQ_SAMPLE_ROWS {
                        // keep every other kept row, double the stride
                        let kept: Vec<f32> = acc
                            .sample
                            .chunks(cols)
                            .step_by(2)
                            .flatten()
                            .copied()
                            .collect();
                        acc.sample = kept;
                        acc.stride *= 2;
                    }
                }
            }
        }
        acc.rows += rows as u64;
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

// ---------------------------------------------------------------------------------
// the model's tensors

/// HF-side view of the model: the GGUF plan (engine names) and the safetensors.
struct Tensors {
    st: SafetensorsModel,
    /// GGUF name → spec
    specs: HashMap<String, GgufTensorSpec>,
}

impl Tensors {
    fn hf_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.st.f32(name).map_err(|e| {
            PipelineError::general(format!("tensor {name}: {e}"), "Check the model files")
        })
    }
    fn shape(&self, name: &str) -> Vec<usize> {
        self.st
            .info(name)
            .map(|i| i.shape.clone())
            .unwrap_or_default()
    }
    /// HF weight names behind an engine site weight (`attn_q.weight`, expert e).
    fn hf_names(&self, layer: usize, gguf: &str, expert: Option<usize>) -> Vec<String> {
        let Some(spec) = self.specs.get(&format!("blk.{layer}.{gguf}")) else {
            return Vec::new();
        };
        match (&spec.transform, expert) {
            (Transform::Stack, Some(e)) => spec.sources.get(e).cloned().into_iter().collect(),
            _ => spec.sources.clone(),
        }
    }
    fn spec(&self, layer: usize, gguf: &str) -> Option<&GgufTensorSpec> {
        self.specs.get(&format!("blk.{layer}.{gguf}"))
    }
}

fn module_of(weight: &str) -> &str {
    weight.strip_suffix(".weight").unwrap_or(weight)
}

// ---------------------------------------------------------------------------------
// the run

/// Quantize with calibration into a Hugging Face checkpoint folder.
pub fn quantize_calibrated(
    req: &CalibratedRequest,
    progress: &dyn Progress,
) -> Result<CalibratedOutcome> {
    req.check()?;
    progress.message(&format!("Loading model: {}", req.model));
    let resolved = source::resolve(&req.model, req.token.clone(), progress)?;
    let dir = match resolved {
        ResolvedModel::HfDir(d) => d,
        ResolvedModel::GgufFile(f) => {
            return Err(PipelineError::unsupported(
                format!(
                    "{} is a GGUF file; {} output needs a Hugging Face safetensors source",
                    f.display(),
                    req.format.name()
                ),
                "Pass the original Hugging Face model (folder or hub id)",
            ))
        }
    };
    let name = source::display_name(&req.model);
    let (cfg, st) = source::open_hf(&dir)?;
    let summary = source::summarize_hf(&name, &cfg, &st);
    progress.message(&format!(
        "Architecture: {} ({} layers)",
        summary.architecture, summary.layers
    ));
    let list: Vec<(String, Vec<usize>)> = st
        .tensors()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let plan = gguf_plan(&cfg, &list).map_err(|e| {
        PipelineError::unsupported(e.to_string(), "This architecture cannot be calibrated yet")
    })?;
    let tensors = Tensors {
        st,
        specs: plan
            .tensors
            .into_iter()
            .map(|t| (t.gguf_name.clone(), t))
            .collect(),
    };
    let src = WeightSource::open_hf(&dir).map_err(engine_err)?;
    let mut model = Model::load(&src).map_err(engine_err)?;
    drop(src);

    // calibration data
    let tok = llmq_tokenizer::Tokenizer::from_hf_dir(&dir).map_err(|e| {
        PipelineError::invalid(
            format!("cannot load the tokenizer of {}: {e}", dir.display()),
            "Calibration needs tokenizer.json next to the model",
        )
    })?;
    let mut notes = Vec::new();
    let ctx = cfg.max_position_embeddings.max(2);
    let mut seq_len = req.seq_len;
    if seq_len > ctx {
        notes.push(format!(
            "--calibration-seq-len {seq_len} exceeds the model's context of {ctx} tokens: samples are cut to {ctx}"
        ));
        seq_len = ctx;
    }
    let encode = |t: &str| tok.encode(t, false, false).map_err(|e| e.to_string());
    let calib: CalibrationSet = load_calibration(
        req.calibration_data.as_deref(),
        &encode,
        &DatasetOptions {
            n_samples: req.calibration_samples,
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
    for n in &notes {
        progress.message(&format!("note: {n}"));
    }
    progress.message(&format!(
        "Calibration: {} samples, {} tokens from {}",
        calib.samples.len(),
        calib.n_tokens(),
        calib.source
    ));

    // output folder
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
    let folder = match &req.output_name {
        Some(n) if n.contains('/') || n.is_empty() || n.starts_with('.') => {
            return Err(PipelineError::invalid(
                format!("--output-name `{n}` must be a plain folder name"),
                "e.g. -n model-gptq-4bit",
            ))
        }
        Some(n) => n.clone(),
        None => format!("{name}-{}-{}", req.format.name(), req.level),
    };
    let final_dir = out_dir.join(&folder);
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if same(&final_dir, &dir) {
        return Err(PipelineError::invalid(
            format!(
                "the output folder {} is the source model folder",
                final_dir.display()
            ),
            "Choose another --output-dir or --output-name",
        ));
    }
    let tmp_dir = out_dir.join(format!(".{folder}.partial"));

    // checkpoint: fresh, or reopened for --resume (refused unless everything that
    // determines the output is the same)
    let fingerprint = calibrated_fingerprint(req, &dir, &calib, &final_dir);
    let mut checkpoint = match &req.checkpoint {
        Some(c) if c.resume => Some(CalibCheckpoint::load(&c.dir, &final_dir, &fingerprint)?),
        Some(c) => Some(CalibCheckpoint::create(&c.dir, &final_dir, &fingerprint)?),
        None => None,
    };
    if let Some(cp) = &checkpoint {
        if cp.layers_done() > 0 {
            progress.message(&format!(
                "Resuming: {} of {} layers done in the checkpoint",
                cp.layers_done(),
                summary.layers
            ));
        }
    }
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir)
            .map_err(|e| PipelineError::io("cannot remove stale partial output", &tmp_dir, &e))?;
    }
    std::fs::create_dir_all(&tmp_dir)
        .map_err(|e| PipelineError::io("cannot create output folder", &tmp_dir, &e))?;
    let result = run_blocks(
        req,
        progress,
        &tensors,
        &mut model,
        &calib,
        &tmp_dir,
        &cfg,
        checkpoint.as_mut(),
    );
    let (stats, quantized_modules, overrides, spilled, ignored, layers_resumed) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
    };
    let finish = || -> Result<bool> {
        write_rest(
            &tensors,
            &quantized_modules,
            &overrides,
            &tmp_dir,
            req,
            &ignored,
            &dir,
        )?;
        let validated = if req.validate {
            progress.message("Validating output...");
            validate_output(&tmp_dir, req, &quantized_modules)?;
            true
        } else {
            false
        };
        Ok(validated)
    };
    let validated = match finish() {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
    };
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)
            .map_err(|e| PipelineError::io("cannot replace earlier output", &final_dir, &e))?;
    }
    std::fs::rename(&tmp_dir, &final_dir)
        .map_err(|e| PipelineError::io("cannot rename the finished output to", &final_dir, &e))?;
    if let Some(cp) = checkpoint {
        cp.remove();
    }
    let file_size = std::fs::read_dir(&final_dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    progress.message(&format!(
        "Complete: {} ({:.1} MB)",
        final_dir.display(),
        file_size as f64 / 1e6
    ));
    Ok(CalibratedOutcome {
        output: final_dir,
        format: req.format,
        level: req.level.clone(),
        method: req.method,
        file_size,
        params: summary.parameter_count,
        summary,
        tensors: stats,
        calibration_source: calib.source.clone(),
        calibration_samples: calib.samples.len(),
        calibration_tokens: calib.n_tokens(),
        seq_len,
        notes,
        spilled_to_disk: spilled,
        validated,
        peak_memory_bytes: crate::memory::peak_rss_bytes().unwrap_or(0),
        layers_resumed,
        layers: model.hp.n_layer,
    })
}

/// Identifies everything the output depends on: the source files, the format and
/// quantizer options, the calibration tokens and the output folder.
fn calibrated_fingerprint(
    req: &CalibratedRequest,
    src_dir: &Path,
    calib: &CalibrationSet,
    final_dir: &Path,
) -> String {
    let mut tokens = Vec::new();
    for s in &calib.samples {
        tokens.extend_from_slice(&(s.len() as u64).to_le_bytes());
        for t in s {
            tokens.extend_from_slice(&t.to_le_bytes());
        }
    }
    crate::checkpoint::sha256_hex(
        format!(
            "llm-quantize {} calibrated\n{}\nformat={:?}\nlevel={}\nmethod={:?}\nbits={}\ngroup={:?}\nsym={}\nact_order={}\ndamp={:x}\ntokens={}\noutput={}",
            env!("CARGO_PKG_VERSION"),
            crate::hf_source::files_identity(src_dir),
            req.format,
            req.level,
            req.method,
            req.bits,
            req.group_size,
            req.symmetric,
            req.act_order,
            req.damp_percent.to_bits(),
            crate::checkpoint::sha256_hex(&tokens),
            final_dir.display()
        )
        .as_bytes(),
    )
}

/// Quantized module: the HF module name and its packed tensors' source.
struct QModule {
    q: IntQuantized,
}

type BlockResult = (
    Vec<CalibTensorStat>,
    BTreeMap<String, QModule>,
    HashMap<String, Vec<f32>>,
    bool,
    Vec<String>,
    usize,
);

/// Batches of sample indices with at most `max_tokens` tokens each.
fn batches(lens: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur = Vec::new();
    let mut t = 0;
    for (i, &l) in lens.iter().enumerate() {
        if !cur.is_empty() && t + l > max_tokens {
            out.push(std::mem::take(&mut cur));
            t = 0;
        }
        cur.push(i);
        t += l;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn run_batches(
    model: &Model,
    layer: usize,
    store: &mut ActStore,
    groups: &[Vec<usize>],
    mut obs: Option<&mut Collector>,
    write_back: bool,
) -> Result<()> {
    let d = store.d;
    let mut buf = Vec::new();
    let mut one = Vec::new();
    for g in groups {
        buf.clear();
        for &s in g {
            store.read(s, &mut one)?;
            buf.extend_from_slice(&one);
        }
        let lens: Vec<usize> = g.iter().map(|&s| store.lens[s]).collect();
        let o: Option<&mut dyn LinearObserver> = match obs.as_deref_mut() {
            Some(c) => Some(c),
            None => None,
        };
        model
            .forward_block(layer, &mut buf, &lens, o)
            .map_err(engine_err)?;
        if write_back {
            let mut off = 0;
            for &s in g {
                let n = store.lens[s] * d;
                store.write(s, &buf[off..off + n])?;
                off += n;
            }
        }
    }
    Ok(())
}

fn rmse(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut e = 0.0f64;
    let mut s = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        e += ((x - y) as f64).powi(2);
        s += (*x as f64).powi(2);
    }
    let n = a.len().max(1) as f64;
    let r = (e / n).sqrt();
    (r, if s > 0.0 { r / (s / n).sqrt() } else { 0.0 })
}

/// What quantizing one weight needs besides the weight.
enum Calib<'a> {
    Hessian(&'a [f64]),
    None,
}

#[allow(clippy::too_many_arguments)]
fn quantize_one(
    req: &CalibratedRequest,
    name: &str,
    w: &[f32],
    out: usize,
    inp: usize,
    calib: Calib<'_>,
    tokens: u64,
    method_label: String,
    note: Option<String>,
) -> Result<(IntQuantized, CalibTensorStat)> {
    let (q, damp, loss, label) = match calib {
        Calib::Hessian(h) => {
            let cfg = GptqConfig {
                bits: req.bits,
                group_size: req.group_size,
                sym: req.symmetric,
                desc_act: req.act_order,
                static_groups: false,
                damp_percent: req.damp_percent,
                max_damp_percent: 10.0,
                block_size: 128,
            };
            let r = gptq_quantize(name, w, out, inp, h, &cfg).map_err(|e| match e {
                llmq_calib::GptqError::NotPositiveDefinite { .. } => PipelineError::general(
                    e.to_string(),
                    "Give more (or more varied) --calibration-data, raise --damp-percent, or use --method rtn",
                ),
                llmq_calib::GptqError::NonFinite { .. } => PipelineError::general(
                    e.to_string(),
                    "The model's activations on the calibration data are not finite: check the model weights",
                ),
                e => PipelineError::general(e.to_string(), "Report this as a bug"),
            })?;
            (
                r.quantized,
                Some(r.damp_percent),
                Some(r.loss),
                method_label,
            )
        }
        Calib::None => (
            llmq_calib::rtn_quantize(w, out, inp, req.bits, req.group_size, req.symmetric),
            None,
            None,
            method_label,
        ),
    };
    let deq = q.dequantize();
    let (r, rel) = rmse(w, &deq);
    if !r.is_finite() {
        return Err(PipelineError::validation(
            format!("tensor {name}: quantization produced non-finite values"),
            "Report this as a bug",
        ));
    }
    Ok((
        q,
        CalibTensorStat {
            name: name.to_string(),
            out_features: out,
            in_features: inp,
            method: label,
            tokens,
            rmse: r,
            rel_rmse: rel,
            damp_percent: damp,
            loss,
            awq_ratio: None,
            note,
        },
    ))
}

#[allow(clippy::too_many_arguments)]
fn run_blocks(
    req: &CalibratedRequest,
    progress: &dyn Progress,
    tensors: &Tensors,
    model: &mut Model,
    calib: &CalibrationSet,
    tmp_dir: &Path,
    cfg: &llmq_arch::ArchConfig,
    mut checkpoint: Option<&mut CalibCheckpoint>,
) -> Result<BlockResult> {
    let d = model.hp.n_embd;
    let n_layer = model.hp.n_layer;
    let lens: Vec<usize> = calib.samples.iter().map(|s| s.len()).collect();
    let total_tokens: usize = lens.iter().sum();
    let need = total_tokens as u64 * d as u64 * 2;
    let budget = req
        .ram_budget_bytes
        .or_else(crate::memory::available_bytes)
        .unwrap_or(u64::MAX)
        / 2;
    let spill = need > budget;
    if spill {
        progress.message(&format!(
            "activations ({:.1} MB in bf16) exceed half the RAM budget: spilling them to {}",
            need as f64 / 1e6,
            tmp_dir.display()
        ));
    }
    // Round-to-nearest needs no statistics: one batch finds the Linear inputs
    // (experts it misses are added below), and no block outputs are needed, so its
    // activations stay the embeddings and are never snapshotted.
    let rtn = req.method == Method::Rtn;
    let mut store = ActStore::new(d, lens.clone(), spill.then_some(tmp_dir))?;

    let mut stats = Vec::new();
    let mut modules: BTreeMap<String, QModule> = BTreeMap::new();
    let mut overrides: HashMap<String, Vec<f32>> = HashMap::new();
    let mut ignored: BTreeSet<String> = BTreeSet::new();

    // blocks finished by an earlier run: their results, and the activations after them
    let resumed = checkpoint
        .as_deref()
        .map_or(0, |c| c.layers_done())
        .min(n_layer);
    if let Some(cp) = checkpoint.as_deref() {
        for layer in 0..resumed {
            let b = cp.load_block(layer)?;
            for (hf, q, st) in b.modules {
                stats.push(st);
                modules.insert(hf, QModule { q });
            }
            overrides.extend(b.overrides);
            ignored.extend(b.ignored);
        }
    }
    let restore = resumed > 0 && resumed < n_layer && !rtn;
    match checkpoint.as_deref() {
        Some(cp) if restore => {
            if !cp.has_activations() {
                return Err(PipelineError::checkpoint(
                    "the checkpoint has no activation snapshot to continue from",
                    "Run without --resume to start over",
                ));
            }
            cp.read_activations(&mut |r: &mut dyn Read| store.load_from(r))?;
        }
        _ => {
            for (i, s) in calib.samples.iter().enumerate() {
                let x = model.embed(s).map_err(engine_err)?;
                store.write(i, &x)?;
            }
        }
    }
    let groups = batches(&lens, 4096);
    let top_k = cfg.moe.as_ref().map(|m| m.top_k).unwrap_or(1).max(1);

    progress.start(n_layer, resumed);
    let mut written_now = 0usize;
    for layer in resumed..n_layer {
        if crate::CANCEL.load(Ordering::SeqCst) {
            return Err(match checkpoint {
                Some(_) => PipelineError::cancelled(
                    format!("cancelled after {layer} of {n_layer} layers; no complete output was written"),
                    "Run the same command with --resume to continue",
                ),
                None => PipelineError::cancelled(
                    "cancelled; nothing was written",
                    "Run the command again; use checkpoints (the default) to be able to resume",
                ),
            });
        }
        let mut col = Collector {
            want_hessian: req.method == Method::Gptq,
            want_awq: req.method == Method::Awq,
            sites: BTreeMap::new(),
            expert_tokens: Vec::new(),
        };
        let collect_groups = if rtn { &groups[..1] } else { &groups[..] };
        run_batches(
            model,
            layer,
            &mut store,
            collect_groups,
            Some(&mut col),
            false,
        )?;
        // routers are kept in full precision
        let mut block_ignored: Vec<String> = Vec::new();
        if let Some(s) = tensors.spec(layer, "ffn_gate_inp.weight") {
            for src in &s.sources {
                block_ignored.push(module_of(src).to_string());
            }
        }
        ignored.extend(block_ignored.iter().cloned());
        // norms AWQ folds scales into in this block: compared against this copy
        let overrides_before =
            (checkpoint.is_some() && req.method == Method::Awq).then(|| overrides.clone());
        // dequantized HF weights of this block
        let mut deq: HashMap<String, Vec<f32>> = HashMap::new();
        let mut block_q: Vec<(String, IntQuantized, CalibTensorStat)> = Vec::new();
        match req.method {
            Method::Gptq | Method::Rtn => {
                quantize_block_gptq(req, tensors, layer, &col, top_k, &mut block_q)?
            }
            Method::Awq => quantize_block_awq(
                req,
                tensors,
                model,
                layer,
                &col,
                &mut block_q,
                &mut overrides,
            )?,
        }
        let mut block = BlockState {
            modules: block_q,
            overrides: Vec::new(),
            ignored: block_ignored,
        };
        let block_bytes = checkpoint.is_some().then(|| {
            if let Some(before) = &overrides_before {
                let mut changed: Vec<(String, Vec<f32>)> = overrides
                    .iter()
                    .filter(|(k, v)| before.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                changed.sort_by(|a, b| a.0.cmp(&b.0));
                block.overrides = changed;
            }
            encode_block(&block)
        });
        for (hf, q, st) in block.modules {
            deq.insert(hf.clone(), q.dequantize());
            stats.push(st);
            modules.insert(hf, QModule { q });
        }
        // put the quantized weights into the engine
        let mut specs: Vec<&GgufTensorSpec> = tensors
            .specs
            .values()
            .filter(|s| s.layer == Some(layer))
            .filter(|s| !s.sources.is_empty() && s.sources.iter().all(|n| deq.contains_key(n)))
            .collect();
        specs.sort_by(|a, b| a.gguf_name.cmp(&b.gguf_name));
        for spec in specs {
            let srcs: Vec<Vec<f32>> = spec.sources.iter().map(|n| deq[n].clone()).collect();
            let vals = apply_transform(spec, &srcs)
                .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?;
            let cols = spec.shape_ne.first().copied().unwrap_or(1);
            let rows: usize = spec.shape_ne.iter().skip(1).product();
            model
                .replace_weight(&spec.gguf_name, WeightMatrix::from_f32(rows, cols, vals))
                .map_err(engine_err)?;
        }
        if !rtn {
            run_batches(model, layer, &mut store, &groups, None, true)?;
        }
        if let (Some(cp), Some(bytes)) = (checkpoint.as_deref_mut(), &block_bytes) {
            // the activations feeding the next block, unless there is none or they
            // are still the embeddings (round-to-nearest)
            if layer + 1 < n_layer && !rtn {
                cp.save_block(
                    layer,
                    bytes,
                    Some(&mut |w: &mut dyn Write| store.save_to(w)),
                )?;
            } else {
                cp.save_block(layer, bytes, None)?;
            }
        }
        written_now += 1;
        progress.unit_done(&format!("layer {layer}"));
        crate::test_hooks::after_unit();
        if let Some(limit) = crate::test_hooks::get().stop_after_units {
            if written_now >= limit && layer + 1 < n_layer {
                // Simulated crash for tests: leave the checkpoint as a kill would.
                progress.finish();
                return Err(PipelineError::cancelled(
                    "stopped early (test hook)",
                    "resume",
                ));
            }
        }
    }
    progress.finish();
    Ok((
        stats,
        modules,
        overrides,
        spill,
        ignored.into_iter().collect(),
        resumed,
    ))
}

/// GPTQ (or RTN) of every Linear of one block.
fn quantize_block_gptq(
    req: &CalibratedRequest,
    tensors: &Tensors,
    layer: usize,
    col: &Collector,
    top_k: usize,
    out: &mut Vec<(String, IntQuantized, CalibTensorStat)>,
) -> Result<()> {
    // all-token Hessian of the MoE input (fallback for starved experts)
    let mut moe_all: Option<(Vec<f64>, u64)> = None;
    if req.method == Method::Gptq {
        let mut sum: Option<Vec<f64>> = None;
        let mut n = 0u64;
        for ((stage, e, _), acc) in &col.sites {
            if *stage == LinearStage::FfnInput && e.is_some() {
                if let Some(h) = &acc.hess {
                    // h.finish() = 2/rows · XᵀX; re-weight by rows
                    let hv = h.clone().finish();
                    let s = sum.get_or_insert_with(|| vec![0.0; hv.len()]);
                    s.iter_mut()
                        .zip(&hv)
                        .for_each(|(a, b)| *a += b * acc.rows as f64);
                    n += acc.rows;
                }
            }
        }
        if let Some(mut s) = sum {
            if n > 0 {
                // Σ rows_e·H_e = 2·Σ X_eᵀX_e = 2·top_k·XᵀX over n/top_k tokens → mean over tokens
                s.iter_mut().for_each(|v| *v /= n as f64);
                moe_all = Some((s, n / top_k as u64));
            }
        }
    }
    let mut done: BTreeSet<String> = BTreeSet::new();
    // sites that were seen
    let mut jobs: Vec<(SiteKey, &SiteAcc)> = col.sites.iter().map(|(k, v)| (*k, v)).collect();
    // experts that never fired are not reported as sites: add them
    let n_exp = col.expert_tokens.len();
    let mut missing: Vec<(usize, &'static str, LinearStage)> = Vec::new();
    for e in 0..n_exp {
        for (stage, first) in [
            (LinearStage::FfnInput, "ffn_gate_exps.weight"),
            (LinearStage::FfnDown, "ffn_down_exps.weight"),
        ] {
            if !col.sites.contains_key(&(stage, Some(e), first)) {
                missing.push((e, first, stage));
            }
        }
    }
    jobs.sort_by_key(|(k, _)| *k);
    for (key, acc) in jobs {
        let (stage, expert, _) = key;
        let h_site = acc.hess.as_ref().map(|h| h.clone().finish());
        for gguf in &acc.weights {
            for hf in tensors.hf_names(layer, gguf, expert) {
                if !done.insert(hf.clone()) {
                    continue;
                }
                let shape = tensors.shape(&hf);
                let (o, i) = (shape[0], shape[1]);
                let w = tensors.hf_f32(&hf)?;
                let starved = expert.is_some() && acc.rows < MIN_EXPERT_TOKENS;
                let (calib, label, note) = match (&h_site, req.method) {
                    (_, Method::Rtn) => (Calib::None, "rtn".to_string(), None),
                    (Some(h), Method::Gptq) if !starved => {
                        (Calib::Hessian(h), "gptq".to_string(), None)
                    }
                    (_, Method::Gptq) => match (&moe_all, stage) {
                        (Some((h, n)), LinearStage::FfnInput) => (
                            Calib::Hessian(h),
                            "gptq:all-tokens-hessian".to_string(),
                            Some(format!(
                                "expert got {} calibration tokens (< {MIN_EXPERT_TOKENS}): Hessian of all {n} tokens at the MoE input",
                                acc.rows
                            )),
                        ),
                        _ => (
                            Calib::None,
                            "rtn:few-tokens".to_string(),
                            Some(format!(
                                "expert got {} calibration tokens (< {MIN_EXPERT_TOKENS}): round-to-nearest",
                                acc.rows
                            )),
                        ),
                    },
                    _ => (Calib::None, "rtn".to_string(), None),
                };
                let (q, st) = quantize_one(req, &hf, &w, o, i, calib, acc.rows, label, note)?;
                out.push((hf, q, st));
            }
        }
    }
    for (e, first, stage) in missing {
        let weights: &[&str] = if stage == LinearStage::FfnInput {
            &["ffn_gate_exps.weight", "ffn_up_exps.weight"]
        } else {
            &[first]
        };
        for gguf in weights {
            for hf in tensors.hf_names(layer, gguf, Some(e)) {
                if !done.insert(hf.clone()) {
                    continue;
                }
                let shape = tensors.shape(&hf);
                let (o, i) = (shape[0], shape[1]);
                let w = tensors.hf_f32(&hf)?;
                let (calib, label, note) = match (&moe_all, stage, req.method) {
                    (Some((h, n)), LinearStage::FfnInput, Method::Gptq) => (
                        Calib::Hessian(h),
                        "gptq:all-tokens-hessian".to_string(),
                        Some(format!(
                            "expert {e} got no calibration tokens: Hessian of all {n} tokens at the MoE input"
                        )),
                    ),
                    (_, _, Method::Rtn) => (Calib::None, "rtn".to_string(), None),
                    _ => (
                        Calib::None,
                        "rtn:no-tokens".to_string(),
                        Some(format!(
                            "expert {e} got no calibration tokens: round-to-nearest"
                        )),
                    ),
                };
                let (q, st) = quantize_one(req, &hf, &w, o, i, calib, 0, label, note)?;
                out.push((hf, q, st));
            }
        }
    }
    Ok(())
}

/// The norm (engine name, HF name) whose weight produces a site's input, when the
/// AWQ scales can be folded into it.
fn fold_norm(
    tensors: &Tensors,
    layer: usize,
    stage: LinearStage,
    weights: &[&'static str],
    moe_layer: bool,
) -> Option<(String, String, bool)> {
    let gguf = match stage {
        LinearStage::AttnInput => "attn_norm.weight",
        LinearStage::AttnLatent if weights[0] == "attn_q_b.weight" => "attn_q_a_norm.weight",
        LinearStage::AttnLatent => "attn_kv_a_norm.weight",
        LinearStage::FfnInput if !moe_layer => "ffn_norm.weight",
        _ => return None,
    };
    let spec = tensors.spec(layer, gguf)?;
    if spec.sources.len() != 1 {
        return None;
    }
    let add_one = matches!(spec.transform, Transform::AddOne);
    Some((spec.gguf_name.clone(), spec.sources[0].clone(), add_one))
}

/// AWQ of every Linear of one block, folding the scales into the norms (and the up
/// projections into the down projections' inputs).
fn quantize_block_awq(
    req: &CalibratedRequest,
    tensors: &Tensors,
    model: &mut Model,
    layer: usize,
    col: &Collector,
    out: &mut Vec<(String, IntQuantized, CalibTensorStat)>,
    overrides: &mut HashMap<String, Vec<f32>>,
) -> Result<()> {
    let gs = req.group_size.expect("checked: AWQ has groups");
    let bits = req.bits;
    let moe_layer = tensors.spec(layer, "ffn_gate_inp.weight").is_some();
    // weights (HF name → current f32 values, with scales applied) and the per-input
    // scales each one's input is divided by
    let mut w_cur: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut info: BTreeMap<String, (SiteKey, Option<f32>, Option<String>)> = BTreeMap::new();
    let mut site_scales: HashMap<SiteKey, Vec<f32>> = HashMap::new();
    let mut keys: Vec<&SiteKey> = col.sites.keys().collect();
    keys.sort();
    // 1. scale search, stage by stage (FfnDown after FfnInput, so up is final)
    for key in keys.iter().copied() {
        let acc = &col.sites[key];
        let (stage, expert, _) = *key;
        let mut hf: Vec<String> = Vec::new();
        for g in &acc.weights {
            for n in tensors.hf_names(layer, g, expert) {
                if !hf.contains(&n) {
                    hf.push(n);
                }
            }
        }
        for n in &hf {
            if !w_cur.contains_key(n) {
                w_cur.insert(n.clone(), tensors.hf_f32(n)?);
            }
        }
        let inp = acc.cols;
        let n_rows = acc.sample.len() / inp.max(1);
        if expert.is_some() && acc.rows < MIN_EXPERT_TOKENS {
            for n in &hf {
                info.insert(
                    n.clone(),
                    (
                        *key,
                        None,
                        Some(format!(
                            "expert got {} calibration tokens (< {MIN_EXPERT_TOKENS}): no AWQ search, round-to-nearest",
                            acc.rows
                        )),
                    ),
                );
            }
            continue;
        }
        // where can 1/s go?
        let target: Option<(String, String, bool)> =
            fold_norm(tensors, layer, stage, &acc.weights, moe_layer);
        let prev_up: Option<String> = if stage == LinearStage::FfnDown {
            let up = match expert {
                Some(_) => "ffn_up_exps.weight",
                None if acc.weights[0] == "ffn_down_shexp.weight" => "ffn_up_shexp.weight",
                None => "ffn_up.weight",
            };
            // a fused gate|up (Phi-3) cannot take a scale on the up half alone here
            let fused = expert.is_none()
                && up == "ffn_up.weight"
                && tensors.spec(layer, "ffn_gate.weight").is_none();
            if fused {
                None
            } else {
                tensors.hf_names(layer, up, expert).into_iter().next()
            }
        } else {
            None
        };
        let can_scale = target.is_some() || prev_up.is_some();
        let mut ratio = None;
        let mut note = None;
        if can_scale && n_rows > 0 {
            let mean: Vec<f32> = acc
                .abs_sum
                .iter()
                .map(|s| (*s / acc.rows as f64) as f32)
                .collect();
            let shapes: Vec<usize> = hf.iter().map(|n| tensors.shape(n)[0]).collect();
            let layers: Vec<AwqLayer<'_>> = hf
                .iter()
                .zip(&shapes)
                .map(|(n, &o)| AwqLayer {
                    w: &w_cur[n],
                    out: o,
                })
                .collect();
            let found = awq_algo::search_scale(&layers, inp, &mean, &acc.sample, n_rows, bits, gs);
            let s = found.scales;
            ratio = Some(found.ratio);
            // weights' columns × s
            for n in &hf {
                let w = w_cur.get_mut(n).unwrap();
                for row in w.chunks_mut(inp) {
                    row.iter_mut().zip(&s).for_each(|(v, s)| *v *= s);
                }
            }
            if let Some((gguf, hfn, add_one)) = &target {
                // effective norm weight / s, rounded to what the file stores
                let cur: Vec<f32> = match overrides.get(hfn) {
                    Some(v) => v.clone(),
                    None => tensors.hf_f32(hfn)?,
                };
                let st_dtype = tensors.st.info(hfn).map(|i| i.dtype);
                let new_hf: Vec<f32> = cur
                    .iter()
                    .zip(&s)
                    .map(|(&w, &s)| {
                        let eff = if *add_one { w + 1.0 } else { w };
                        let v = eff / s - if *add_one { 1.0 } else { 0.0 };
                        round_to(v, st_dtype)
                    })
                    .collect();
                let eff: Vec<f32> = new_hf
                    .iter()
                    .map(|&v| if *add_one { v + 1.0 } else { v })
                    .collect();
                model.replace_vector(gguf, eff).map_err(engine_err)?;
                overrides.insert(hfn.clone(), new_hf);
            } else if let Some(up) = &prev_up {
                // rows of up / s (up is quantized afterwards, with this folded in)
                if !w_cur.contains_key(up) {
                    w_cur.insert(up.clone(), tensors.hf_f32(up)?);
                }
                let upw = w_cur.get_mut(up).unwrap();
                let up_in = upw.len() / s.len();
                for (r, row) in upw.chunks_mut(up_in).enumerate() {
                    row.iter_mut().for_each(|v| *v /= s[r]);
                }
            }
            site_scales.insert(*key, s);
        } else if !can_scale {
            note = Some("input cannot take AWQ scales here (shared with the router, GQA v→o, or fused): clip search only".to_string());
        }
        for n in &hf {
            info.insert(n.clone(), (*key, ratio, note.clone()));
        }
    }
    // 2. clip search and quantization, with inputs divided by the scales
    for (n, (key, ratio, note)) in &info {
        let acc = &col.sites[key];
        let (stage, expert, _) = *key;
        let inp = acc.cols;
        let shape = tensors.shape(n);
        let o = shape[0];
        let w = &w_cur[n];
        let starved = expert.is_some() && acc.rows < MIN_EXPERT_TOKENS;
        let n_rows = acc.sample.len() / inp.max(1);
        let no_clip = starved
            || n_rows == 0
            || (stage == LinearStage::AttnInput
                && (n.contains("q_proj") || n.contains("k_proj") || n.contains("qkv")));
        let clip = if no_clip {
            None
        } else {
            let mut x = acc.sample.clone();
            if let Some(s) = site_scales.get(key) {
                for row in x.chunks_mut(inp) {
                    row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
                }
            }
            Some(awq_algo::search_clip(w, o, inp, &x, n_rows, bits, gs))
        };
        let q = awq_algo::awq_quantize(w, o, inp, bits, gs, clip.as_deref());
        // error against the original weight, in the original basis
        let mut deq = q.dequantize();
        if let Some(s) = site_scales.get(key) {
            for row in deq.chunks_mut(inp) {
                row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
            }
        }
        let orig = tensors.hf_f32(n)?;
        let (r, rel) = rmse(&orig, &deq);
        let label = if starved {
            "rtn:few-tokens".to_string()
        } else {
            "awq".to_string()
        };
        out.push((
            n.clone(),
            q,
            CalibTensorStat {
                name: n.clone(),
                out_features: o,
                in_features: inp,
                method: label,
                tokens: acc.rows,
                rmse: r,
                rel_rmse: rel,
                damp_percent: None,
                loss: None,
                awq_ratio: *ratio,
                note: note.clone(),
            },
        ));
    }
    // experts that never fired: RTN with AWQ's quantizer
    for e in 0..col.expert_tokens.len() {
        for g in [
            "ffn_gate_exps.weight",
            "ffn_up_exps.weight",
            "ffn_down_exps.weight",
        ] {
            for n in tensors.hf_names(layer, g, Some(e)) {
                if info.contains_key(&n) {
                    continue;
                }
                // its up may have been scaled? no: a missing expert has no sites at all
                let shape = tensors.shape(&n);
                let (o, i) = (shape[0], shape[1]);
                let w = tensors.hf_f32(&n)?;
                let q = awq_algo::awq_quantize(&w, o, i, bits, gs, None);
                let (r, rel) = rmse(&w, &q.dequantize());
                out.push((
                    n.clone(),
                    q,
                    CalibTensorStat {
                        name: n.clone(),
                        out_features: o,
                        in_features: i,
                        method: "rtn:no-tokens".into(),
                        tokens: 0,
                        rmse: r,
                        rel_rmse: rel,
                        damp_percent: None,
                        loss: None,
                        awq_ratio: None,
                        note: Some(format!(
                            "expert {e} got no calibration tokens: round-to-nearest"
                        )),
                    },
                ));
            }
        }
    }
    Ok(())
}

fn round_to(v: f32, d: Option<StDtype>) -> f32 {
    match d {
        Some(StDtype::BF16) => bf16::from_f32(v).to_f32(),
        Some(StDtype::F16) => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

fn st_to_hf_dtype(d: StDtype) -> Option<Dtype> {
    match d {
        StDtype::F32 => Some(Dtype::F32),
        StDtype::F16 => Some(Dtype::F16),
        StDtype::BF16 => Some(Dtype::BF16),
        StDtype::Other(_) => None,
    }
}

fn f32_as(d: Dtype, v: &[f32]) -> Vec<u8> {
    match d {
        Dtype::BF16 => v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        Dtype::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The format's `quantization_config`.
fn quantization_config(req: &CalibratedRequest, ignored: &[String], any_g_idx: bool) -> Value {
    match req.format {
        HfFormat::Gptq(fmt) => {
            let c = llmq_hfquant::gptq::GptqConfig {
                bits: req.bits,
                group_size: req.group_size,
                desc_act: req.act_order,
                sym: req.symmetric,
                format: fmt,
                damp_percent: req.damp_percent,
                true_sequential: false,
                static_groups: false,
                lm_head: false,
                quantizer: format!("llm-quantize:{}", env!("CARGO_PKG_VERSION")),
            };
            let mut v = c.quantization_config();
            if !ignored.is_empty() {
                // GPTQModel's per-module override: "-:" = not quantized
                let dynamic: serde_json::Map<String, Value> = ignored
                    .iter()
                    .map(|m| (format!("-:^{}$", m.replace('.', "\\.")), json!({})))
                    .collect();
                v["dynamic"] = Value::Object(dynamic);
            }
            v["meta"]["calibration_method"] = json!(req.method.name());
            v
        }
        HfFormat::Awq => {
            let ig: Option<Vec<String>> = (!ignored.is_empty()).then(|| ignored.to_vec());
            llmq_hfquant::awq::quantization_config(req.group_size.unwrap_or(128), ig.as_deref())
        }
        HfFormat::CompressedTensors => {
            let scheme = ct_scheme(req);
            let mut ig = vec!["lm_head".to_string()];
            ig.extend(ignored.iter().cloned());
            ct::quantization_config(&scheme, &ig, any_g_idx)
        }
    }
}

fn ct_scheme(req: &CalibratedRequest) -> CtWeightScheme {
    CtWeightScheme {
        num_bits: req.bits,
        symmetric: req.symmetric,
        strategy: match req.group_size {
            Some(g) => CtStrategy::Group(g),
            None => CtStrategy::Channel,
        },
    }
}

fn pack_module(
    req: &CalibratedRequest,
    prefix: &str,
    q: &IntQuantized,
) -> Result<Vec<(String, HfTensor)>> {
    Ok(match req.format {
        HfFormat::Gptq(fmt) => llmq_hfquant::gptq::pack(q, fmt)
            .map_err(hf_err)?
            .to_hf_tensors(prefix),
        HfFormat::Awq => llmq_hfquant::awq::pack(q)
            .map_err(hf_err)?
            .to_hf_tensors(prefix),
        HfFormat::CompressedTensors => ct::pack(q, !q.has_default_g_idx())
            .map_err(hf_err)?
            .to_hf_tensors(prefix),
    })
}

/// Packs the quantized modules, copies every other tensor (with AWQ's folded norms),
/// writes config.json, quantize_config.json and the tokenizer files.
fn write_rest(
    tensors: &Tensors,
    modules: &BTreeMap<String, QModule>,
    overrides: &HashMap<String, Vec<f32>>,
    tmp_dir: &Path,
    req: &CalibratedRequest,
    ignored: &[String],
    src_dir: &Path,
) -> Result<()> {
    let mut w = ShardedWriter::new(tmp_dir, llmq_hfquant::writer::DEFAULT_MAX_SHARD_BYTES)
        .map_err(hf_err)?;
    let mut any_g_idx = false;
    for (hf, m) in modules {
        any_g_idx |= !m.q.has_default_g_idx();
        w.add_all(pack_module(req, module_of(hf), &m.q)?)
            .map_err(hf_err)?;
    }
    let mut names: Vec<String> = tensors.st.tensors().map(|t| t.name.clone()).collect();
    names.sort();
    for n in names {
        if modules.contains_key(&n) {
            continue;
        }
        let view = tensors.st.get(&n).map_err(source::safetensors_error)?;
        let dt = st_to_hf_dtype(view.info.dtype).ok_or_else(|| {
            PipelineError::unsupported(
                format!("tensor {n} has dtype {}", view.info.dtype.name()),
                "Only F32/F16/BF16 sources are supported",
            )
        })?;
        let shape = view.info.shape.clone();
        let bytes = match overrides.get(&n) {
            Some(v) => f32_as(dt, v),
            None => view.bytes.to_vec(),
        };
        w.add(n.clone(), HfTensor::from_raw(dt, &shape, bytes))
            .map_err(hf_err)?;
        tensors.st.release(&n);
    }
    w.finish().map_err(hf_err)?;
    let qc = quantization_config(req, ignored, any_g_idx);
    llmq_hfquant::writer::copy_model_files(src_dir, tmp_dir, &qc).map_err(hf_err)?;
    if let HfFormat::Gptq(_) = req.format {
        let mut v = qc.clone();
        if let Some(m) = v.as_object_mut() {
            m.insert("model_name_or_path".into(), Value::Null);
            m.insert("model_file_base_name".into(), json!("model"));
        }
        llmq_hfquant::writer::write_json(&tmp_dir.join("quantize_config.json"), &v)
            .map_err(hf_err)?;
    }
    Ok(())
}

/// Re-reads every quantized module from the written files and checks it unpacks to
/// exactly the integers that were quantized.
fn validate_output(
    dir: &Path,
    req: &CalibratedRequest,
    modules: &BTreeMap<String, QModule>,
) -> Result<()> {
    let st = SafetensorsModel::open(dir).map_err(source::safetensors_error)?;
    let get = |name: &str| -> Option<HfTensor> {
        let v = st.get(name).ok()?;
        let dt = match v.info.dtype {
            StDtype::Other("I32") => Dtype::I32,
            StDtype::Other("I64") => Dtype::I64,
            d => st_to_hf_dtype(d)?,
        };
        Some(HfTensor::from_raw(dt, &v.info.shape, v.bytes.to_vec()))
    };
    for (hf, m) in modules {
        let prefix = module_of(hf);
        let back = read_module(req, &get, prefix, &m.q).map_err(|e| {
            PipelineError::validation(
                format!("output tensor {prefix} does not read back: {e}"),
                "Report this as a bug",
            )
        })?;
        if back.dequantize() != m.q.dequantize() {
            return Err(PipelineError::validation(
                format!("output tensor {prefix} reads back different values"),
                "Report this as a bug",
            ));
        }
    }
    Ok(())
}

/// Reads one quantized module back through llmq-hfquant's unpackers.
pub fn read_module(
    req: &CalibratedRequest,
    get: &dyn Fn(&str) -> Option<HfTensor>,
    prefix: &str,
    like: &IntQuantized,
) -> std::result::Result<IntQuantized, String> {
    let fetch =
        |n: &str| get(&format!("{prefix}.{n}")).ok_or_else(|| format!("missing {prefix}.{n}"));
    match req.format {
        HfFormat::Gptq(fmt) => {
            let t = llmq_hfquant::gptq::GptqTensors::from_hf_tensors(req.bits, get, prefix)
                .map_err(|e| e.to_string())?;
            llmq_hfquant::gptq::unpack(&t, req.group_size, req.symmetric, fmt)
                .map_err(|e| e.to_string())
        }
        HfFormat::Awq => {
            let qw = fetch("qweight")?;
            let qz = fetch("qzeros")?;
            let sc = fetch("scales")?;
            let t = llmq_hfquant::awq::AwqTensors {
                in_features: like.in_features,
                out_features: like.out_features,
                group_size: req.group_size.unwrap_or(128),
                qweight: qw.to_u32_words().ok_or("qweight dtype")?,
                qzeros: qz.to_u32_words().ok_or("qzeros dtype")?,
                scales: sc.to_f16_vec().ok_or("scales dtype")?,
            };
            llmq_hfquant::awq::unpack(&t).map_err(|e| e.to_string())
        }
        HfFormat::CompressedTensors => {
            let p = fetch("weight_packed")?;
            let s = fetch("weight_scale")?;
            let t = ct::CtTensors {
                num_bits: req.bits,
                out_features: like.out_features,
                in_features: like.in_features,
                n_groups: like.n_groups(),
                weight_packed: p.to_u32_words().ok_or("weight_packed dtype")?,
                weight_scale: s.to_f16_vec().ok_or("weight_scale dtype")?,
                weight_zero_point: match get(&format!("{prefix}.weight_zero_point")) {
                    Some(z) => Some(z.to_u32_words().ok_or("zero point dtype")?),
                    None => None,
                },
                weight_g_idx: match get(&format!("{prefix}.weight_g_idx")) {
                    Some(g) => Some(g.to_i32_vec().ok_or("g_idx dtype")?),
                    None => None,
                },
            };
            ct::unpack(&t, &ct_scheme(req)).map_err(|e| e.to_string())
        }
    }
}

// ---------------------------------------------------------------------------------
// importance matrix for GGUF k-quants

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

/// What [`collect_imatrix`] needs.
#[derive(Debug, Clone)]
pub struct ImatrixRequest {
    pub calibration_data: Option<PathBuf>,
    pub calibration_samples: usize,
    pub seq_len: usize,
    pub ram_budget_bytes: Option<u64>,
}

/// Runs the calibration samples through the model (a Hugging Face folder or a GGUF
/// file), block by block with bounded activations, and returns the importance matrix
/// of every Linear (GGUF tensor names), as llama-imatrix computes it over the same
/// text. Also returns the notes about the data.
pub fn collect_imatrix(
    model_path: &Path,
    req: &ImatrixRequest,
    progress: &dyn Progress,
) -> Result<(llmq_calib::ImatrixData, Vec<String>)> {
    let src = WeightSource::open(model_path).map_err(engine_err)?;
    let model = Model::load(&src).map_err(engine_err)?;
    let tok = match &src {
        WeightSource::Gguf(f) => llmq_tokenizer::Tokenizer::from_gguf(f),
        WeightSource::Hf(_) => llmq_tokenizer::Tokenizer::from_hf_dir(model_path),
    }
    .map_err(|e| {
        PipelineError::invalid(
            format!("cannot load the tokenizer of {}: {e}", model_path.display()),
            "Computing an imatrix needs the model's tokenizer",
        )
    })?;
    drop(src);
    let mut notes = Vec::new();
    let ctx = model.hp.n_ctx_train.max(2);
    let mut seq_len = req.seq_len;
    if seq_len > ctx {
        notes.push(format!(
            "--calibration-seq-len {seq_len} exceeds the model's context of {ctx} tokens: samples are cut to {ctx}"
        ));
        seq_len = ctx;
    }
    let encode = |t: &str| tok.encode(t, false, false).map_err(|e| e.to_string());
    let calib = load_calibration(
        req.calibration_data.as_deref(),
        &encode,
        &DatasetOptions {
            n_samples: req.calibration_samples,
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
    progress.message(&format!(
        "Computing the importance matrix: {} samples, {} tokens from {}",
        calib.samples.len(),
        calib.n_tokens(),
        calib.source
    ));
    let d = model.hp.n_embd;
    let lens: Vec<usize> = calib.samples.iter().map(|s| s.len()).collect();
    let need = lens.iter().sum::<usize>() as u64 * d as u64 * 2;
    let budget = req
        .ram_budget_bytes
        .or_else(crate::memory::available_bytes)
        .unwrap_or(u64::MAX)
        / 2;
    let spill_dir =
        std::env::temp_dir().join(format!("llm-quantize-imatrix-{}", std::process::id()));
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
            let mut buf = Vec::new();
            let mut one = Vec::new();
            for g in &groups {
                buf.clear();
                for &s in g {
                    store.read(s, &mut one)?;
                    buf.extend_from_slice(&one);
                }
                let l: Vec<usize> = g.iter().map(|&s| store.lens[s]).collect();
                model
                    .forward_block(layer, &mut buf, &l, Some(&mut obs))
                    .map_err(engine_err)?;
                let mut off = 0;
                for &s in g {
                    let n = store.lens[s] * d;
                    store.write(s, &buf[off..off + n])?;
                    off += n;
                }
            }
        }
        Ok(obs.entries)
    })();
    if spill {
        let _ = std::fs::remove_dir_all(&spill_dir);
    }
    let entries = res?;
    Ok((
        llmq_calib::ImatrixData {
            entries,
            datasets: vec![calib.source.clone()],
            chunk_count: calib.samples.len() as u32,
            chunk_size: seq_len as u32,
            legacy: false,
        },
        notes,
    ))
}
