//! The block-sequential executor (GPTQ, AWQ, round-to-nearest into a Hugging Face
//! layout; GPTQ / MR-GPTQ on floating-point grids into compressed-tensors; trellis
//! into an EXL3 folder), stage by stage: source (a Hugging Face folder) → calibrate
//! ([`super::calibration`]) → allocate (one grid per Linear, routers kept) → measure
//! and quantize block by block ([`super::blocks`]) → write ([`super::write`]) →
//! validate ([`super::validate`]), into a staged folder ([`crate::staging`]) renamed to
//! its final name once everything is in place; per-block checkpoints
//! ([`crate::checkpoint::blocks`]) make the run resumable.

use super::blocks::run_blocks;
use super::calibration::calibration_set;
use super::validate::validate_output;
use super::write::write_rest;
use super::write_exl3::{validate_exl3, write_exl3};
use super::write_fp::{validate_fp, write_fp};
use super::{engine_err, Tensors};
use crate::allocate::{Allocation, QuantSpec, TensorSpec, TrellisTarget, EXL3_HEAD_BITS};
use crate::checkpoint::BlockCheckpoint;
use crate::error::{PipelineError, Result};
use crate::report::{CalibrationSummary, QuantizeOutcome};
use crate::request::{Method, QuantizeRequest};
use crate::run::Progress;
use crate::source::{self, ResolvedModel};
use crate::staging::{self, OutputKind, StagedFolder};
use crate::target_bpw::AllocationReport;
use llmq_arch::{gguf_plan, unfuse_gpt_oss_experts, TensorRole};
use llmq_calib::dataset::CalibrationSet;
use llmq_engine::{Model, WeightSource};
use std::path::Path;

/// Quantize with calibration into a Hugging Face checkpoint folder.
pub(crate) fn quantize_blocks(
    req: &QuantizeRequest,
    resolved: ResolvedModel,
    progress: &dyn Progress,
) -> Result<QuantizeOutcome> {
    let exl3 = req.format == crate::request::OutputFormat::Exl3;
    let fp = crate::fp_export::fp_scheme(req);
    // allocate: one grid (or one floating-point grid and rotation) for every Linear
    // (routers stay in full precision, see blocks); EXL3's per-tensor K once the
    // tensors are known (below)
    let alloc = if exl3 {
        Allocation::uniform_trellis(1)
    } else if let Some(scheme) = fp {
        let hadamard = (req.method == crate::request::Method::MrGptq).then(|| req.hadamard_block());
        Allocation::uniform_fp(req.method, scheme, hadamard)
    } else {
        Allocation::uniform(req.method, req.int_grid()?)
    };
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
    let mut plan = gguf_plan(&cfg, &list).map_err(|e| {
        PipelineError::unsupported(e.to_string(), "This architecture cannot be calibrated yet")
    })?;
    // GPT-OSS's fused experts (`[E, in, 2·ff]` interleaved, or MXFP4) become
    // per-expert Linear views, written as llm-compressor and vLLM name them
    let unfused = if cfg.family == llmq_arch::Family::GptOss {
        unfuse_gpt_oss_experts(&mut plan)
    } else {
        Default::default()
    };
    // GPTQ / AWQ / compressed-tensors quantize Linear modules (2-D weights); any other
    // fused parameter has no such layout
    if let Some(fused) = plan
        .tensors
        .iter()
        .flat_map(|t| t.sources.iter().zip(&t.source_shapes))
        .find(|(_, shape)| shape.len() > 2)
    {
        return Err(PipelineError::unsupported(
            format!(
                "{} stores {} as a fused {}-D parameter, which {} output (a layout of Linear modules) cannot hold",
                summary.architecture,
                fused.0,
                fused.1.len(),
                req.format.name()
            ),
            "Quantize this model to gguf instead",
        ));
    }
    let specs = plan
        .tensors
        .into_iter()
        .map(|t| (t.gguf_name.clone(), t))
        .collect();
    let tensors = Tensors::new(st, specs, unfused);
    // EXL3: exllamav3's per-tensor K for the level's bpw, and the head at its own K
    let (alloc, head, allocation) = if exl3 {
        exl3_allocation(req, &tensors, &dir, &name, progress)?
    } else if req.target_bpw.is_some() {
        int_allocation(req, &tensors, &dir, &name, progress)?
    } else {
        (alloc, None, None)
    };
    // layer-streamed: the engine loads one block at a time from `src` (see blocks)
    let src = WeightSource::open_hf(&dir).map_err(engine_err)?;
    let on_cpu = matches!(req.device, crate::request::CalibDevice::Cpu);
    if !on_cpu && (exl3 || fp.is_some() || !matches!(req.method, Method::Gptq | Method::Awq)) {
        return Err(PipelineError::unsupported(
            "calibration on the GPU covers --method gptq and --method awq into the integer layouts (gptq, awq, compressed-tensors integer levels)",
            "Run with --device cpu",
        ));
    }
    let mut model = if !on_cpu {
        None
    } else if crate::test_hooks::get().whole_model {
        Some(Model::load(&src).map_err(engine_err)?)
    } else {
        Some(Model::load_streamed(&src).map_err(engine_err)?)
    };

    // calibrate
    let tok = llmq_tokenizer::Tokenizer::from_hf_dir(&dir).map_err(|e| {
        PipelineError::invalid(
            format!("cannot load the tokenizer of {}: {e}", dir.display()),
            "Calibration needs tokenizer.json next to the model",
        )
    })?;
    let (calib, notes, seq_len) = calibration_set(
        &tok,
        req.calibration.data.as_deref(),
        req.calibration.samples,
        req.calibration.seq_len,
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
    staging::prepare_output_dir(&req.output_dir)?;
    let final_dir = staging::output_path(
        &req.output_dir,
        req.output_name.as_deref(),
        format!("{name}-{}-{}", req.format.name(), req.level),
        OutputKind::Folder,
    )?;
    staging::refuse_source_as_output(&final_dir, &dir)?;

    // checkpoint: fresh, or reopened for --resume (refused unless everything that
    // determines the output is the same)
    let fingerprint = calibrated_fingerprint(req, &dir, &calib, &final_dir, allocation.as_ref());
    let mut checkpoint = match &req.checkpoint {
        Some(c) if c.resume => Some(BlockCheckpoint::load(&c.dir, &final_dir, &fingerprint)?),
        Some(c) => Some(BlockCheckpoint::create(&c.dir, &final_dir, &fingerprint)?),
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
    let staged = StagedFolder::create(&final_dir)?;
    let result = match (&req.device, model.as_mut()) {
        (_, Some(model)) => run_blocks(
            req,
            &alloc,
            progress,
            &tensors,
            &src,
            model,
            &calib,
            &staged.tmp,
            &cfg,
            checkpoint.as_mut(),
            head.as_deref(),
        ),
        #[cfg(feature = "cuda")]
        (crate::request::CalibDevice::Cuda(c), None) => super::device_blocks::run_blocks_device(
            req,
            &alloc,
            progress,
            &tensors,
            &src,
            c,
            &calib,
            &staged.tmp,
            &cfg,
            checkpoint.as_mut(),
        ),
        _ => unreachable!("a model is loaded for the CPU"),
    };
    let units = model.as_ref().map_or(summary.layers, |m| m.hp.n_layer);
    drop(src);
    let (stats, quantized_modules, overrides, spilled, ignored, layers_resumed) = match result {
        Ok(r) => r,
        Err(e) => {
            staged.discard();
            return Err(e);
        }
    };
    let finish = || -> Result<bool> {
        if exl3 {
            write_exl3(
                &tensors,
                &quantized_modules,
                &staged.tmp,
                (calib.samples.len(), seq_len),
                &dir,
                head.as_deref(),
            )?;
        } else if let Some(scheme) = fp {
            write_fp(
                &tensors,
                &quantized_modules,
                &staged.tmp,
                scheme,
                &ignored,
                &dir,
            )?;
        } else {
            write_rest(
                &tensors,
                &quantized_modules,
                &overrides,
                &staged.tmp,
                req,
                &ignored,
                &dir,
            )?;
        }
        let validated = if req.validate {
            progress.message("Validating output...");
            if exl3 {
                validate_exl3(&staged.tmp, &tensors, &quantized_modules)?;
            } else if fp.is_some() {
                validate_fp(&staged.tmp, &quantized_modules)?;
            } else {
                validate_output(&staged.tmp, req, &quantized_modules)?;
            }
            true
        } else {
            false
        };
        Ok(validated)
    };
    let validated = match finish() {
        Ok(v) => v,
        Err(e) => {
            staged.discard();
            return Err(e);
        }
    };
    let final_dir = staged.commit()?;
    if let Some(cp) = checkpoint {
        cp.remove();
    }
    let file_size = StagedFolder::model_bytes(&final_dir);
    progress.message(&format!(
        "Complete: {} ({:.1} MB)",
        final_dir.display(),
        file_size as f64 / 1e6
    ));
    Ok(QuantizeOutcome {
        output: final_dir,
        format: req.format.name().to_string(),
        level: req.level.clone(),
        method: req.method.name().to_string(),
        file_size,
        params: summary.parameter_count,
        summary,
        tensors: stats,
        calibration: Some(CalibrationSummary {
            source: calib.source.clone(),
            samples: calib.samples.len(),
            tokens: calib.n_tokens(),
            seq_len,
            notes,
            activations_spilled_to_disk: spilled,
        }),
        units,
        units_resumed: layers_resumed,
        workers: None,
        validated,
        peak_memory_bytes: crate::memory::peak_rss_bytes().unwrap_or(0),
        allocation,
    })
}

/// Identifies everything the output depends on: the source files, the format and
/// quantizer options, the calibration tokens and the output folder.
fn calibrated_fingerprint(
    req: &QuantizeRequest,
    src_dir: &Path,
    calib: &CalibrationSet,
    final_dir: &Path,
    allocation: Option<&AllocationReport>,
) -> String {
    let mut tokens = Vec::new();
    for s in &calib.samples {
        tokens.extend_from_slice(&(s.len() as u64).to_le_bytes());
        for t in s {
            tokens.extend_from_slice(&t.to_le_bytes());
        }
    }
    // MR-GPTQ's block joins the fingerprint only when given, so other runs' stay as they were
    let hadamard = req
        .hadamard_size
        .map_or(String::new(), |b| format!("\nhadamard={b}"));
    // so does --calibrate-all-experts
    let all_experts = if req.calibration.all_experts {
        "\nall-experts"
    } else {
        ""
    };
    // and a measured allocation's choices
    let chosen = allocation.map_or(String::new(), |a| {
        let picks: Vec<String> = a
            .groups
            .iter()
            .map(|g| format!("{}={}", g.label, g.chosen))
            .collect();
        format!("\nallocation={}", picks.join(","))
    });
    let text = format!(
        "llm-quantize {} calibrated\n{}\nformat={:?}\nlevel={}\nmethod={:?}\ngrid={:?}\ndamp={:x}\ntokens={}\noutput={}{hadamard}{all_experts}{chosen}",
        env!("CARGO_PKG_VERSION"),
        crate::hf_source::files_identity(src_dir),
        req.format,
        req.level,
        req.method,
        req.grid,
        req.damp_percent.to_bits(),
        crate::checkpoint::sha256_hex(&tokens),
        final_dir.display()
    );
    crate::checkpoint::sha256_hex(text.as_bytes())
}

/// EXL3's allocation: exllamav3's rule for the level's bpw over every Linear of the
/// blocks (routers excepted), or with `--target-bpw` the measured allocation
/// ([`crate::target_bpw::trellis`]), and the head (when it is coded, see
/// [`super::trellis_head::head_weight`]) at [`EXL3_HEAD_BITS`].
fn exl3_allocation(
    req: &QuantizeRequest,
    tensors: &Tensors,
    dir: &Path,
    name: &str,
    progress: &dyn Progress,
) -> Result<(Allocation, Option<String>, Option<AllocationReport>)> {
    let mut targets = linear_targets(tensors);
    let (mut alloc, report) = match &req.target_bpw {
        None => (
            Allocation::trellis_for_bpw(req.trellis_bpw()?, &targets)?.0,
            None,
        ),
        Some(t) => {
            targets.sort_by(|a, b| a.name.cmp(&b.name));
            let inputs = crate::target_bpw::linears::LinearInputs {
                model_dir: dir,
                name,
                specs: &tensors.specs,
                targets: &targets,
            };
            let (ks, r) = crate::target_bpw::trellis::allocate_exl3(
                t.bpw,
                t.measurements.as_deref(),
                t.per_expert,
                &inputs,
                &crate::request::CalibrationRequest {
                    samples: t.windows,
                    ..req.calibration.clone()
                },
                progress,
            )?;
            let base = ks.values().copied().min().unwrap_or(1);
            let a = if t.per_expert {
                Allocation::trellis_from_map_per_expert(base, &ks)?
            } else {
                Allocation::trellis_from_map(base, &ks)?
            };
            (a, Some(r))
        }
    };
    let head = super::trellis_head::head_weight(tensors);
    if let Some(h) = &head {
        alloc.set(
            h,
            TensorSpec {
                method: Method::Trellis,
                quant: QuantSpec::Trellis { k: EXL3_HEAD_BITS },
            },
        );
    }
    Ok((alloc, head, report))
}

/// The Linears of the blocks a measured allocation covers (routers apart), by name.
fn linear_targets(tensors: &Tensors) -> Vec<TrellisTarget> {
    let mut targets = Vec::new();
    for spec in tensors.specs.values() {
        if spec.layer.is_none() || spec.role == TensorRole::FfnGateInp {
            continue;
        }
        for (name, shape) in spec.sources.iter().zip(&spec.source_shapes) {
            if shape.len() == 2 && name.ends_with(".weight") {
                targets.push(TrellisTarget {
                    name: name.clone(),
                    numel: shape.iter().product::<usize>() as u64,
                });
            }
        }
    }
    targets
}

/// GPTQ / compressed-tensors with `--target-bpw`: the measured width of every Linear
/// ([`crate::target_bpw::int`]) on the request's group size, symmetry and act-order.
fn int_allocation(
    req: &QuantizeRequest,
    tensors: &Tensors,
    dir: &Path,
    name: &str,
    progress: &dyn Progress,
) -> Result<(Allocation, Option<String>, Option<AllocationReport>)> {
    let (Some(t), crate::request::OutputFormat::Hf(layout)) = (&req.target_bpw, req.format) else {
        return Err(PipelineError::general(
            "no integer layout to allocate",
            "Report this as a bug",
        ));
    };
    let base = req.int_grid()?;
    let mut targets = linear_targets(tensors);
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    let inputs = crate::target_bpw::linears::LinearInputs {
        model_dir: dir,
        name,
        specs: &tensors.specs,
        targets: &targets,
    };
    let (bits, r) = crate::target_bpw::int::allocate_int(
        t.bpw,
        layout,
        base,
        t.measurements.as_deref(),
        t.per_expert,
        &inputs,
        &crate::request::CalibrationRequest {
            samples: t.windows,
            ..req.calibration.clone()
        },
        progress,
    )?;
    let alloc = crate::target_bpw::int::allocation(req.method, base, &bits);
    Ok((alloc, None, Some(r)))
}
