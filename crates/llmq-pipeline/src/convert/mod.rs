//! `convert INPUT_MODEL OUTPUT_FORMAT`: a quantized checkpoint read into one
//! representation per tensor (`llmq_hfquant::read`), moved onto the target's grid
//! (exactly where the grid can hold it, requantized where not), written by the target's
//! writer under a temporary name, re-read and compared bit for bit, and renamed into
//! place only by [`PreparedConversion::commit`] (after the caller has accepted a lossy
//! result). Dropping a [`PreparedConversion`] removes the temporary output.
//!
//! Supported pairs: GPTQ (v1/v2), AWQ (GEMM) and compressed-tensors (pack-quantized,
//! int-quantized) folders, and quantized GGUF files ([`from_gguf`]: the metadata,
//! tokenizer and tensor layout reversed by `llmq_arch::gguf_to_hf`), → `gguf`, `gptq`,
//! `awq`, `compressed-tensors`. GGUF → GGUF is a requantization (`gguf_source`'s plan),
//! lossless for every tensor whose type stays.

mod from_gguf;
pub mod grid;
pub mod target;
mod to_gguf;
mod to_hf;

use crate::error::{PipelineError, Result};
use crate::source::{self, ModelSummary, ResolvedModel};
use crate::Progress;
use grid::IntGrid;
use llmq_arch::mix::Mix;
use llmq_hfquant::read::{HfCheckpoint, HfWeight};
use llmq_hfquant::IntQuantized;
use std::path::{Path, PathBuf};
pub use target::{Target, TargetFormat};

/// The pairs `convert` supports, for messages.
pub const SUPPORTED_PAIRS: &str = "gptq, awq or compressed-tensors (a quantized Hugging Face \
folder), or a quantized GGUF file (architectures llama, qwen2, qwen3, qwen3moe, gemma3, phi3; \
byte-level BPE tokenizer with pre-tokenizer gpt-2, qwen2 or llama-bpe) -> gguf, gptq, awq or \
compressed-tensors";

/// Everything `convert` needs.
#[derive(Debug, Clone)]
pub struct ConvertRequest {
    pub input: String,
    pub format: TargetFormat,
    pub level: Option<String>,
    pub group_size: Option<i64>,
    pub checkpoint_format: Option<String>,
    pub output_dir: PathBuf,
    pub output_name: Option<String>,
    pub token: Option<String>,
}

/// How one tensor was converted.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorConversion {
    pub name: String,
    /// source grid or dtype, e.g. `4bit g128 sym`, `BF16`
    pub from: String,
    /// target grid or type
    pub to: String,
    pub numel: usize,
    /// dequantized values identical to the source's, bit for bit
    pub lossless: bool,
    /// `‖w' − w‖ / ‖w‖` of the dequantized values (0 when lossless)
    pub rel_rmse: f64,
}

impl TensorConversion {
    fn unchanged(name: &str, dtype: &str, numel: usize) -> Self {
        TensorConversion {
            name: name.to_string(),
            from: dtype.to_string(),
            to: dtype.to_string(),
            numel,
            lossless: true,
            rel_rmse: 0.0,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub summary: ModelSummary,
    /// `gptq`, `awq`, `compressed-tensors`
    pub input_format: String,
    /// the source grid, e.g. `4bit g128 sym`
    pub input_grid: String,
    pub format: TargetFormat,
    /// the target's level (`Q4_0`, `4bit`, `W4A16`, ...)
    pub level: String,
    /// the target grid (integer targets)
    pub target_grid: Option<String>,
    pub tensors: Vec<TensorConversion>,
    /// bytes written
    pub file_size: u64,
}

impl ConvertReport {
    /// Every tensor bit-identical after dequantization.
    pub fn lossless(&self) -> bool {
        self.tensors.iter().all(|t| t.lossless)
    }

    /// Tensors whose values changed.
    pub fn lossy_tensors(&self) -> Vec<&TensorConversion> {
        let mut v: Vec<&TensorConversion> = self.tensors.iter().filter(|t| !t.lossless).collect();
        v.sort_by(|a, b| b.rel_rmse.total_cmp(&a.rel_rmse));
        v
    }

    /// Relative RMSE of all weights together, weighted by element count.
    pub fn mean_relative_rmse(&self) -> f64 {
        let n: usize = self.tensors.iter().map(|t| t.numel).sum();
        let s: f64 = self
            .tensors
            .iter()
            .map(|t| t.rel_rmse * t.numel as f64)
            .sum();
        if n == 0 {
            0.0
        } else {
            s / n as f64
        }
    }
}

/// A conversion written under its temporary name, verified, not yet in place.
pub struct PreparedConversion {
    pub report: ConvertReport,
    temp: PathBuf,
    output: PathBuf,
    committed: bool,
}

impl PreparedConversion {
    /// Where the output is now (a file for gguf, a folder otherwise).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Where [`PreparedConversion::commit`] puts it.
    pub fn output_path(&self) -> &Path {
        &self.output
    }

    /// Renames the output into place (replacing an earlier output of the same name).
    pub fn commit(mut self) -> Result<PathBuf> {
        let out = self.output.clone();
        if out.is_dir() {
            std::fs::remove_dir_all(&out)
                .map_err(|e| PipelineError::io("cannot replace", &out, &e))?;
        }
        std::fs::rename(&self.temp, &out)
            .map_err(|e| PipelineError::io("cannot rename the output to", &out, &e))?;
        self.committed = true;
        Ok(out)
    }
}

impl Drop for PreparedConversion {
    fn drop(&mut self) {
        if !self.committed {
            remove_path(&self.temp);
        }
    }
}

fn remove_path(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// `true` when both slices hold the same f32 bit patterns.
pub fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// `‖b − a‖ / ‖a‖` (the absolute RMSE ratio when `a` is all zero).
pub fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let (mut e, mut s) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let d = (*y as f64) - (*x as f64);
        e += d * d;
        s += (*x as f64) * (*x as f64);
    }
    if s > 0.0 {
        (e / s).sqrt()
    } else {
        (e / a.len().max(1) as f64).sqrt()
    }
}

/// The grid one module is on.
pub fn grid_of(q: &IntQuantized) -> IntGrid {
    IntGrid {
        bits: q.bits,
        group_size: q.group_size,
        symmetric: q.symmetric,
        allow_g_idx: !q.has_default_g_idx(),
    }
}

fn unsupported_pair(what: &str) -> PipelineError {
    PipelineError::unsupported(
        format!("cannot convert {what}"),
        format!("Supported conversions: {SUPPORTED_PAIRS}; use `quantize` for unquantized models"),
    )
}

/// The GGUF type that holds every module of this grid exactly, if any.
fn exact_gguf_mix(g: &IntGrid) -> Option<Mix> {
    match (g.bits, g.group_size, g.symmetric) {
        (4, Some(32), true) => Mix::from_name("Q4_0"),
        (8, Some(32), true) => Mix::from_name("Q8_0"),
        _ => None,
    }
}

/// The output path from `-o` / `-n` or the default name.
fn output_path(req: &ConvertRequest, name: &str, level: &str) -> Result<PathBuf> {
    let dir = &req.output_dir;
    if dir.exists() && !dir.is_dir() {
        return Err(PipelineError::invalid(
            format!(
                "output directory {} exists and is not a directory",
                dir.display()
            ),
            "Choose another --output-dir",
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| PipelineError::io("cannot create output directory", dir, &e))?;
    let file = match &req.output_name {
        Some(n) if n.is_empty() || n.contains('/') || n == "." || n == ".." => {
            return Err(PipelineError::invalid(
                format!("--output-name `{n}` must be a plain name"),
                "e.g. -n model-converted",
            ))
        }
        Some(n) => n.clone(),
        None if req.format == TargetFormat::Gguf => format!("{name}-{level}.gguf"),
        None => format!("{name}-{}-{level}", req.format.name()),
    };
    let out = dir.join(file);
    if out.is_dir() && req.format == TargetFormat::Gguf {
        return Err(PipelineError::invalid(
            format!("{} is a directory", out.display()),
            "Choose another --output-name",
        ));
    }
    if out.is_dir()
        && !out.join("config.json").is_file()
        && out.read_dir().is_ok_and(|mut d| d.next().is_some())
    {
        return Err(PipelineError::invalid(
            format!("{} exists and is not a model folder", out.display()),
            "Choose another --output-name or --output-dir",
        ));
    }
    if out.is_file() && req.format != TargetFormat::Gguf {
        return Err(PipelineError::invalid(
            format!("{} exists and is a file", out.display()),
            "Choose another --output-name",
        ));
    }
    Ok(out)
}

fn temp_for(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.convert-tmp"))
}

fn size_of(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p)
            .map(|r| {
                r.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

/// Reads, converts, writes under a temporary name and verifies.
pub fn prepare(req: &ConvertRequest, progress: &dyn Progress) -> Result<PreparedConversion> {
    let target = Target::parse(
        req.format,
        req.level.as_deref(),
        req.group_size,
        req.checkpoint_format.as_deref(),
    )?;
    progress.message(&format!("Loading model: {}", req.input));
    let dir = match source::resolve(&req.input, req.token.clone(), progress)? {
        ResolvedModel::GgufFile(p) => return prepare_from_gguf(req, &target, &p, progress),
        ResolvedModel::HfDir(d) => d,
    };
    let name = source::display_name(&req.input);
    let (cfg, st) = source::open_hf(&dir)?;
    let summary = source::summarize_hf(&name, &cfg, &st);
    let ck = HfCheckpoint::from_parts(&dir, st).map_err(to_hf::hf_err)?;
    let Some(scheme) = ck.scheme() else {
        return Err(unsupported_pair("an unquantized checkpoint"));
    };
    let input_format = scheme.format_name().to_string();
    // the source grid, from the decoded modules
    let mut modules: Vec<IntQuantized> = Vec::new();
    for (n, _) in ck.tensors() {
        if ck.is_quantized(&n) {
            if let HfWeight::Int(q) = ck.read(&n).map_err(to_hf::hf_err)? {
                modules.push(q);
            }
        }
    }
    let refs: Vec<&IntQuantized> = modules.iter().collect();
    let src_grid = target::source_grid(&refs).ok_or_else(|| {
        PipelineError::validation(
            "the checkpoint declares a quantization_config but has no quantized modules",
            "Check the checkpoint",
        )
    })?;
    drop(modules);
    let input_grid = target::describe_grid(&src_grid);
    progress.message(&format!("Source: {input_format} {input_grid}"));

    let (level, target_grid) = match &target {
        Target::Gguf(m) => {
            let mix = match m.or_else(|| exact_gguf_mix(&src_grid)) {
                Some(m) => m,
                None => {
                    return Err(PipelineError::invalid(
                        format!("no GGUF type holds {input_grid} exactly: give the level with -q"),
                        "e.g. -q Q4_K_M (lossy: the warning estimates the loss)",
                    ))
                }
            };
            (mix.name().to_string(), None)
        }
        t => {
            let g = target::resolve_grid(t, src_grid)?;
            (target::level_name(t, &g), Some(g))
        }
    };
    let output = output_path(req, &name, &level)?;
    let temp = temp_for(&output);
    remove_path(&temp);
    progress.message(&format!("Converting to {} {level}", req.format.name()));
    // from here the temporary output is removed on any error
    let mut prepared = PreparedConversion {
        report: ConvertReport {
            summary,
            input_format,
            input_grid,
            format: req.format,
            level: level.clone(),
            target_grid: target_grid.as_ref().map(target::describe_grid),
            tensors: Vec::new(),
            file_size: 0,
        },
        temp: temp.clone(),
        output,
        committed: false,
    };
    let tensors = match (&target, target_grid) {
        (Target::Gguf(_), _) => {
            let mix = Mix::from_name(&level).expect("level is a mix name");
            let (stats, written) = to_gguf::convert(&ck, &cfg, mix, &name, &temp, progress)?;
            progress.message("Validating output...");
            to_gguf::verify(&temp, &written)?;
            stats
        }
        (t, Some(g)) => {
            let (weights, stats) = to_hf::convert(&ck, &g, progress)?;
            to_hf::write(&weights, t, &g, &dir, &temp)?;
            progress.message("Validating output...");
            to_hf::verify(&temp, &weights)?;
            stats
        }
        (_, None) => unreachable!("integer targets have a grid"),
    };
    prepared.report.tensors = tensors;
    prepared.report.file_size = size_of(&temp);
    Ok(prepared)
}

/// `prepare` for a GGUF input.
fn prepare_from_gguf(
    req: &ConvertRequest,
    target: &Target,
    path: &Path,
    progress: &dyn Progress,
) -> Result<PreparedConversion> {
    let name = source::display_name(&req.input);
    if let Target::Gguf(m) = target {
        let f = llmq_formats::gguf::GgufFile::open(path).map_err(|e| {
            PipelineError::validation(
                format!("{} is not a readable GGUF file: {e}", path.display()),
                "Re-download or re-create the file",
            )
        })?;
        let dominant = crate::gguf_source::dominant_type(&f);
        let same = f
            .file_type()
            .and_then(|ft| Mix::all().find(|m| m.file_type() == ft));
        drop(f);
        let mix = m.or(same).ok_or_else(|| {
            PipelineError::invalid(
                "the GGUF's general.file_type names no level: give the level with -q",
                "e.g. -q Q4_K_M",
            )
        })?;
        let planned = crate::gguf_source::plan(path, &name, mix)?;
        let summary = planned.summary.clone();
        drop(planned);
        let level = mix.name().to_string();
        let output = output_path(req, &name, &level)?;
        let temp = temp_for(&output);
        remove_path(&temp);
        progress.message(&format!("Converting to gguf {level}"));
        let mut prepared = PreparedConversion {
            report: ConvertReport {
                summary,
                input_format: "gguf".into(),
                input_grid: dominant,
                format: req.format,
                level: level.clone(),
                target_grid: None,
                tensors: Vec::new(),
                file_size: 0,
            },
            temp: temp.clone(),
            output,
            committed: false,
        };
        let (stats, written) = to_gguf::requantize(path, mix, &name, &temp, progress)?;
        progress.message("Validating output...");
        to_gguf::verify(&temp, &written)?;
        prepared.report.tensors = stats;
        prepared.report.file_size = size_of(&temp);
        return Ok(prepared);
    }
    let input = from_gguf::open(path)?;
    let (src_ty, src_grid) = input.source_grid()?;
    let input_grid = format!("{} ({})", src_ty.name(), target::describe_grid(&src_grid));
    progress.message(&format!("Source: gguf {input_grid}"));
    let g = target::resolve_grid(target, src_grid)?;
    let level = target::level_name(target, &g);
    let output = output_path(req, &name, &level)?;
    let temp = temp_for(&output);
    remove_path(&temp);
    progress.message(&format!("Converting to {} {level}", req.format.name()));
    let mut prepared = PreparedConversion {
        report: ConvertReport {
            summary: input.summary(&name),
            input_format: "gguf".into(),
            input_grid,
            format: req.format,
            level,
            target_grid: Some(target::describe_grid(&g)),
            tensors: Vec::new(),
            file_size: 0,
        },
        temp: temp.clone(),
        output,
        committed: false,
    };
    let (weights, stats) = from_gguf::convert(&input, &g, progress)?;
    // config.json and the tokenizer files, staged beside the output for the writer
    let staged = temp.with_file_name(format!(
        "{}.model-files",
        temp.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    remove_path(&staged);
    let written = input
        .write_model_files(&staged)
        .and_then(|_| to_hf::write(&weights, target, &g, &staged, &temp));
    remove_path(&staged);
    written?;
    progress.message("Validating output...");
    to_hf::verify(&temp, &weights)?;
    prepared.report.tensors = stats;
    prepared.report.file_size = size_of(&temp);
    Ok(prepared)
}
