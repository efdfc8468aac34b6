//! The calibrated driver, stage by stage: source (a Hugging Face folder) → calibrate
//! ([`super::calibration`]) → measure and quantize block by block
//! ([`super::blocks`]) → write ([`super::write`]) → validate ([`super::validate`]),
//! into a `.NAME.partial` folder renamed to its final name once everything is in
//! place; per-block checkpoints make the run resumable.

use super::blocks::run_blocks;
use super::calibration::calibration_set;
use super::validate::validate_output;
use super::write::write_rest;
use super::{engine_err, CalibratedOutcome, CalibratedRequest, Tensors};
use crate::calib_checkpoint::CalibCheckpoint;
use crate::error::{PipelineError, Result};
use crate::run::Progress;
use crate::source::{self, ResolvedModel};
use llmq_arch::gguf_plan;
use llmq_calib::dataset::CalibrationSet;
use llmq_engine::{Model, WeightSource};
use std::path::Path;

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
    let (calib, notes, seq_len) = calibration_set(
        &tok,
        req.calibration_data.as_deref(),
        req.calibration_samples,
        req.seq_len,
        cfg.max_position_embeddings.max(2),
    )?;
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
