//! The quantize stage of calibrated quantization, block-sequential: for each block,
//! measure its Linear inputs on the stored activations, quantize every Linear with the
//! method (GPTQ / RTN in [`super::gptq_block`], AWQ in [`super::awq_block`], trellis in
//! [`super::trellis_block`], GPTQ / MR-GPTQ on floating-point grids in
//! [`super::fp_block`]), put the
//! dequantized weights back into the engine, run the block again so the next one is
//! calibrated on the quantized model, and checkpoint the block.

use super::activations::{batches, run_batches, ActStore};
use super::methods::{block_method, BlockCx};
use super::observe::Collector;
use super::write_stream::{ModuleSpill, PackedModule};
use super::{engine_err, module_of, Tensors};
use crate::allocate::Allocation;
use crate::checkpoint::block_codec::{encode_block, BlockState, FpModule};
use crate::checkpoint::BlockCheckpoint;
use crate::error::{PipelineError, Result};
use crate::report::{CalibrationDetail, TensorReport};
use crate::request::{IntGrid, QuantizeRequest};
use crate::run::Progress;
use llmq_arch::{apply_transform, GgufTensorSpec};
use llmq_calib::dataset::CalibrationSet;
use llmq_calib::{gptq_quantize, GptqConfig};
use llmq_engine::{Model, WeightSource};
use llmq_hfquant::IntQuantized;
use llmq_kernels::WeightMatrix;
use llmq_trellis::quantize::Exl3Linear;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

/// A quantized module's values, as its writer packs them.
pub(super) enum QModule {
    /// on an integer grid (GPTQ, AWQ, RTN)
    Int(IntQuantized),
    /// trellis codes (EXL3)
    Trellis(Box<Exl3Linear>),
    /// floating-point codes, optionally rotated (GPTQ / MR-GPTQ into compressed-tensors)
    Fp(Box<FpModule>),
    /// on an integer grid, already packed into the spill file ([`super::write_stream`])
    Packed(Box<PackedModule>),
}

impl QModule {
    /// The integer values, for the integer layouts' writers.
    pub(super) fn int(&self) -> Result<&IntQuantized> {
        match self {
            QModule::Int(q) => Ok(q),
            QModule::Trellis(_) | QModule::Fp(_) | QModule::Packed(_) => Err(PipelineError::general(
                "a trellis-, floating-point-coded or packed module reached an integer-layout writer",
                "Report this as a bug",
            )),
        }
    }
}

/// Tokens per batch through a block.
const BATCH_TOKENS: usize = 4096;

pub(super) type BlockResult = (
    Vec<TensorReport>,
    BTreeMap<String, QModule>,
    HashMap<String, Vec<f32>>,
    bool,
    Vec<String>,
    usize,
);

pub(super) fn rmse(a: &[f32], b: &[f32]) -> (f64, f64) {
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
pub(super) enum Calib<'a> {
    Hessian(&'a [f64]),
    None,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn quantize_one(
    req: &QuantizeRequest,
    grid: IntGrid,
    name: &str,
    w: &[f32],
    out: usize,
    inp: usize,
    calib: Calib<'_>,
    tokens: u64,
    method_label: String,
    note: Option<String>,
) -> Result<(IntQuantized, TensorReport)> {
    let (q, damp, loss, label) = match calib {
        Calib::Hessian(h) => {
            let cfg = GptqConfig {
                bits: grid.bits,
                group_size: grid.group_size,
                sym: grid.symmetric,
                desc_act: grid.act_order,
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
            llmq_calib::rtn_quantize(w, out, inp, grid.bits, grid.group_size, grid.symmetric),
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
    let report = TensorReport::integer(
        name,
        &q,
        label,
        (r, rel),
        CalibrationDetail {
            tokens,
            damp_percent: damp,
            loss,
            awq_ratio: None,
            note,
            proxy_err: None,
        },
    );
    Ok((q, report))
}

/// Whether the run's modules are packed to disk as their block finishes: the Hugging
/// Face integer layouts.
fn streams_modules(req: &QuantizeRequest) -> bool {
    matches!(req.format, crate::request::OutputFormat::Hf(_))
        && crate::fp_export::fp_scheme(req).is_none()
}

/// An integer-grid module as the write stage will take it: packed into the spill
/// (created in `dir` on first use) for the Hugging Face integer layouts, else as is.
fn keep_int(
    spill: &mut Option<ModuleSpill>,
    req: &QuantizeRequest,
    dir: &Path,
    hf: &str,
    q: IntQuantized,
    deq: Option<&[f32]>,
) -> Result<QModule> {
    if !streams_modules(req) {
        return Ok(QModule::Int(q));
    }
    let s = match spill {
        Some(s) => s,
        None => spill.insert(ModuleSpill::create(dir)?),
    };
    let d = match deq {
        Some(d) => std::borrow::Cow::Borrowed(d),
        None => std::borrow::Cow::Owned(q.dequantize()),
    };
    Ok(QModule::Packed(Box::new(s.spill(req, hf, q, &d)?)))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run_blocks(
    req: &QuantizeRequest,
    alloc: &Allocation,
    progress: &dyn Progress,
    tensors: &Tensors,
    src: &WeightSource,
    model: &mut Model,
    calib: &CalibrationSet,
    tmp_dir: &Path,
    cfg: &llmq_arch::ArchConfig,
    mut checkpoint: Option<&mut BlockCheckpoint>,
    head: Option<&str>,
) -> Result<BlockResult> {
    let fp = crate::fp_export::fp_scheme(req).is_some();
    let method = block_method(req.method, fp).ok_or_else(|| {
        PipelineError::general(
            format!("{} is not a block-sequential method", req.method.name()),
            "Report this as a bug",
        )
    })?;
    let needs = method.needs();
    let d = model.hp.n_embd;
    let n_layer = model.hp.n_layer;
    let lens: Vec<usize> = calib.samples.iter().map(|s| s.len()).collect();
    let total_tokens: usize = lens.iter().sum();
    let need = total_tokens as u64 * d as u64 * 2;
    let full_budget = req
        .ram_budget_bytes
        .or_else(crate::memory::available_bytes)
        .unwrap_or(u64::MAX);
    let budget = full_budget / 2;
    let spill = need > budget || crate::test_hooks::get().spill_activations;
    // layer-streamed: the largest block, its Hessians and the activations must fit
    let run_need = super::memory_need::run_need(
        tensors,
        needs,
        &lens,
        BATCH_TOKENS,
        d,
        rayon::current_num_threads(),
        spill,
        streams_modules(req),
    );
    progress.message(&format!(
        "memory: about {:.2} GB at the peak (largest block {}: {:.2} GB)",
        run_need.total() as f64 / 1e9,
        run_need.layer,
        (run_need.block.weights + run_need.block.hessians + run_need.block.work) as f64 / 1e9
    ));
    super::memory_need::check_fits(&run_need, full_budget, req.ram_budget_bytes.is_some())?;
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
    let rtn = !needs.block_outputs;
    let mut store = ActStore::new(d, lens.clone(), spill.then_some(tmp_dir))?;

    let mut stats = Vec::new();
    let mut modules: BTreeMap<String, QModule> = BTreeMap::new();
    let mut overrides: HashMap<String, Vec<f32>> = HashMap::new();
    let mut ignored: BTreeSet<String> = BTreeSet::new();
    // the integer layouts' modules go to disk as their block finishes
    let mut module_spill: Option<ModuleSpill> = None;

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
                let m = keep_int(&mut module_spill, req, tmp_dir, &hf, q, None)?;
                modules.insert(hf, m);
            }
            for (hf, q, st) in b.trellis {
                stats.push(st);
                modules.insert(hf, QModule::Trellis(Box::new(q)));
            }
            for (hf, q, st) in b.fp {
                stats.push(st);
                modules.insert(hf, QModule::Fp(Box::new(q)));
            }
            overrides.extend(b.overrides);
            ignored.extend(b.ignored);
        }
    }
    // a trellis-coded head (EXL3) needs the last block's output too
    let restore = resumed > 0 && (resumed < n_layer || head.is_some()) && !rtn;
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
    // layer-streamed (unless a test asks for the whole model at once): the embeddings
    // are not needed past this point
    let streamed = !crate::test_hooks::get().whole_model;
    if streamed {
        model.release_embeddings(src);
    }
    let groups = batches(&lens, BATCH_TOKENS);
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
            want_hessian: needs.hessian,
            want_awq: needs.awq_stats,
            sites: BTreeMap::new(),
            expert_tokens: Vec::new(),
            all_experts: req.calibration.all_experts,
        };
        // layer-streamed: only this block's weights are in the engine
        if streamed {
            model.load_block(src, layer).map_err(engine_err)?;
        }
        let collect_groups = if rtn { &groups[..1] } else { &groups[..] };
        run_batches(
            model,
            layer,
            &mut store,
            collect_groups,
            Some(&mut col),
            false,
        )?;
        col.finish_hessians();
        // routers are kept in full precision
        let mut block_ignored: Vec<String> = Vec::new();
        if let Some(s) = tensors.spec(layer, "ffn_gate_inp.weight") {
            for src in &s.sources {
                block_ignored.push(module_of(src).to_string());
            }
        }
        ignored.extend(block_ignored.iter().cloned());
        // norms AWQ folds scales into in this block: compared against this copy
        let overrides_before = checkpoint.is_some().then(|| overrides.clone());
        // dequantized HF weights of this block
        let mut deq: HashMap<String, Vec<f32>> = HashMap::new();
        let mut block_q: Vec<(String, IntQuantized, TensorReport)> = Vec::new();
        let mut block_t: Vec<(String, Exl3Linear, TensorReport)> = Vec::new();
        let mut block_f: Vec<(String, FpModule, TensorReport)> = Vec::new();
        method.quantize_block(BlockCx {
            req,
            alloc,
            tensors,
            model,
            layer,
            col: &col,
            top_k,
            out: &mut block_q,
            trellis_out: &mut block_t,
            fp_out: &mut block_f,
            overrides: &mut overrides,
        })?;
        let mut block = BlockState {
            modules: block_q,
            trellis: block_t,
            fp: block_f,
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
            let d = q.dequantize();
            stats.push(st);
            let m = keep_int(&mut module_spill, req, tmp_dir, &hf, q, Some(&d))?;
            deq.insert(hf.clone(), d);
            modules.insert(hf, m);
        }
        for (hf, q, st) in block.trellis {
            deq.insert(hf.clone(), super::trellis_block::dequantize(&q));
            stats.push(st);
            modules.insert(hf, QModule::Trellis(Box::new(q)));
        }
        for (hf, q, st) in block.fp {
            deq.insert(hf.clone(), q.dense());
            stats.push(st);
            modules.insert(hf, QModule::Fp(Box::new(q)));
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
            run_batches::<_, Collector>(model, layer, &mut store, &groups, None, true)?;
        }
        if let (Some(cp), Some(bytes)) = (checkpoint.as_deref_mut(), &block_bytes) {
            // the activations feeding the next block, unless there is none or they
            // are still the embeddings (round-to-nearest)
            if (layer + 1 < n_layer || head.is_some()) && !rtn {
                cp.save_block(
                    layer,
                    bytes,
                    Some(&mut |w: &mut dyn Write| store.save_to(w)),
                )?;
            } else {
                cp.save_block(layer, bytes, None)?;
            }
        }
        if streamed {
            model.unload_block(src, layer);
            tensors.release_block(layer);
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
    if let Some(name) = head {
        progress.message(&format!("Coding the output head {name}..."));
        let (q, st) = super::trellis_head::code_head(model, &mut store, alloc, tensors, name)?;
        stats.push(st);
        modules.insert(name.to_string(), QModule::Trellis(Box::new(q)));
    }
    Ok((
        stats,
        modules,
        overrides,
        spill,
        ignored.into_iter().collect(),
        resumed,
    ))
}
