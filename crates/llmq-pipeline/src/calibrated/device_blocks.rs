//! GPTQ (Frantar et al., arXiv 2210.17323) and AWQ (Lin et al., arXiv 2306.00978)
//! block by block on a CUDA device (`quantize … --method gptq|awq --device cuda`):
//! the same stages as
//! [`super::blocks::run_blocks`] — the engine streamed one block at a time, the
//! calibration activations kept in bf16 precision, on the device when they fit
//! ([`super::device_acts`]) — with the block forward on the CUDA backend, every Linear input's
//! Hessian accumulated on the device ([`super::device_observe`]) and every tensor
//! solved on the device ([`CalibGpu::gptq`]) — for AWQ the inputs' statistics
//! gathered on the device and the block quantized by the CPU's AWQ with its searches
//! on the device ([`super::device_awq`]), the scales folded into the device model's
//! norms —; then the dequantized weights go into
//! the device's block and it runs again to give the next block's inputs. The MoE
//! fallbacks are the CPU's ([`super::gptq_block`]): an expert with fewer than
//! [`MIN_EXPERT_TOKENS`] tokens (or none) takes the all-token Hessian of the MoE
//! input for gate/up, and rounding to nearest for down. Tensors are solved one after
//! another (the device is the parallelism). Checkpoints are written after every
//! block; resuming one is left to the CPU path.

use super::activations::{batches, ActStore};
use super::blocks::{quantize_one, rmse, BlockResult, Calib, QModule};
use super::device_acts::{fits_on_device, Acts};
use super::device_awq::DeviceAwq;
use super::device_observe::DeviceCollector;
use super::observe::SiteKey;
use super::{engine_err, module_of, Tensors, MIN_EXPERT_TOKENS};
use crate::allocate::Allocation;
use crate::checkpoint::block_codec::{encode_block, BlockState};
use crate::checkpoint::BlockCheckpoint;
use crate::error::{PipelineError, Result};
use crate::report::{CalibrationDetail, TensorReport};
use crate::request::{Method, QuantizeRequest};
use crate::run::Progress;
use llmq_arch::{apply_transform, GgufTensorSpec};
use llmq_calib::dataset::CalibrationSet;
use llmq_engine::backend::cuda::{CalibGpu, DeviceHessian, GptqFail, GptqOut, GptqParams};
use llmq_engine::backend::{Backend, Cuda};
use llmq_engine::{LinearStage, Model, WeightSource};
use llmq_hfquant::IntQuantized;
use llmq_kernels::WeightMatrix;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Tokens per batch through a block (as on the CPU).
const BATCH_TOKENS: usize = 4096;

/// Which Hessian a tensor uses.
enum HSel {
    Site(SiteKey),
    MoeAll,
    None,
}

struct Task {
    hf: String,
    calib: HSel,
    tokens: u64,
    label: String,
    note: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run_blocks_device(
    req: &QuantizeRequest,
    alloc: &Allocation,
    progress: &dyn Progress,
    tensors: &Tensors,
    src: &WeightSource,
    cuda: &Cuda,
    calib: &CalibrationSet,
    tmp_dir: &Path,
    cfg: &llmq_arch::ArchConfig,
    mut checkpoint: Option<&mut BlockCheckpoint>,
) -> Result<BlockResult> {
    if checkpoint.as_deref().is_some_and(|c| c.layers_done() > 0) {
        return Err(PipelineError::checkpoint(
            "resuming a checkpoint is not supported with --device cuda",
            "Run without --resume to start over, or resume with --device cpu",
        ));
    }
    let gpu = CalibGpu::new(cuda).map_err(engine_err)?;
    if std::env::var_os("LLMQ_CALIB_EXACT").is_some_and(|v| v == "1") {
        cuda.set_tensor_core_prompts(false);
    }
    // tensor-core prompt products take f16 weights: the block's float weights go in as
    // f16 (bf16 values are exact in f16 within its range)
    let f16 = cuda.tensor_core_prompts();
    progress.message(&format!(
        "calibration on {}; block products {}",
        cuda.describe(),
        if f16 {
            "on tensor cores (f16 weights and activations, f32 sums)"
        } else {
            "on the exact GEMV kernels"
        }
    ));
    let mut model = Model::load_streamed_on(cuda.clone(), src).map_err(engine_err)?;
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
    let groups = batches(&lens, BATCH_TOKENS);
    let on_device = fits_on_device(need * 2, cuda.free_memory());
    let spill = !on_device && (need > budget || crate::test_hooks::get().spill_activations);
    let mut acts = if on_device {
        progress.message(&format!(
            "activations ({:.1} GB in f32) kept on the device",
            (need * 2) as f64 / 1e9
        ));
        Acts::on_device(&model, &gpu, &calib.samples, &groups)?
    } else {
        if spill {
            progress.message(&format!(
                "activations ({:.1} MB in bf16) exceed half the RAM budget: spilling them to {}",
                need as f64 / 1e6,
                tmp_dir.display()
            ));
        }
        let mut store = ActStore::new(d, lens.clone(), spill.then_some(tmp_dir))?;
        for (i, s) in calib.samples.iter().enumerate() {
            let x = model.embed(s).map_err(engine_err)?;
            store.write(i, &x)?;
        }
        Acts::Host(store)
    };
    model.release_embeddings(src);
    let top_k = cfg.moe.as_ref().map(|m| m.top_k).unwrap_or(1).max(1);

    let awq = req.method == Method::Awq;
    let mut stats = Vec::new();
    let mut modules: BTreeMap<String, QModule> = BTreeMap::new();
    let mut ignored: BTreeSet<String> = BTreeSet::new();
    // norms AWQ folded its scales into (HF name → values as stored)
    let mut overrides: HashMap<String, Vec<f32>> = HashMap::new();
    progress.start(n_layer, 0);
    for layer in 0..n_layer {
        if crate::CANCEL.load(Ordering::SeqCst) {
            return Err(PipelineError::cancelled(
                "cancelled; nothing was written",
                "Run the command again",
            ));
        }
        let t0 = Instant::now();
        model.load_block(src, layer).map_err(engine_err)?;
        if f16 {
            let mut specs = block_specs(tensors, layer);
            specs.retain(|s| !s.gguf_name.contains("ffn_gate_inp"));
            for spec in specs {
                let srcs: Vec<Vec<f32>> = spec
                    .sources
                    .iter()
                    .map(|n| tensors.hf_f32(n))
                    .collect::<Result<_>>()?;
                put_weight(&mut model, spec, &srcs, true, true)?;
            }
        }
        let mut col = DeviceCollector::new(&gpu, awq);
        acts.run(&model, &gpu, layer, &groups, Some(&mut col), false)?;
        if let Some(e) = col.error.take() {
            return Err(engine_err(e));
        }
        let mut block_ignored: Vec<String> = Vec::new();
        if let Some(s) = tensors.spec(layer, "ffn_gate_inp.weight") {
            for src in &s.sources {
                block_ignored.push(module_of(src).to_string());
            }
        }
        ignored.extend(block_ignored.iter().cloned());
        let t1 = Instant::now();
        let mut block_overrides: Vec<(String, Vec<f32>)> = Vec::new();
        let block_q = if awq {
            let before = overrides.clone();
            let mut out = Vec::new();
            let check = std::env::var_os("LLMQ_CALIB_CHECK").is_some_and(|v| v == "1");
            let sites = DeviceAwq {
                col: &col,
                check: check.then_some(progress),
            };
            super::awq_block::awq_block(
                alloc,
                tensors,
                &mut model,
                layer,
                &sites,
                &mut overrides,
                &mut out,
            )?;
            block_overrides = overrides
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            block_overrides.sort_by(|a, b| a.0.cmp(&b.0));
            out
        } else {
            solve_block(req, alloc, tensors, &gpu, layer, &col, top_k, progress)?
        };
        let t2 = Instant::now();
        drop(col);
        let block = BlockState {
            modules: block_q,
            trellis: Vec::new(),
            fp: Vec::new(),
            overrides: block_overrides,
            ignored: block_ignored,
        };
        let block_bytes = checkpoint.is_some().then(|| encode_block(&block));
        let mut deq: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for (hf, q, st) in block.modules {
            deq.insert(hf.clone(), q.dequantize());
            stats.push(st);
            modules.insert(hf, QModule::Int(q));
        }
        let mut specs = block_specs(tensors, layer);
        specs.retain(|s| s.sources.iter().all(|n| deq.contains_key(n)));
        for spec in specs {
            let srcs: Vec<Vec<f32>> = spec.sources.iter().map(|n| deq[n].clone()).collect();
            put_weight(&mut model, spec, &srcs, f16, false)?;
        }
        drop(deq);
        acts.run(&model, &gpu, layer, &groups, None, true)?;
        progress.message(&format!(
            "layer {layer}: load, forward and {} {:.2} s, {} {:.2} s, forward {:.2} s",
            if awq { "statistics" } else { "Hessians" },
            (t1 - t0).as_secs_f64(),
            if awq { "AWQ" } else { "GPTQ" },
            (t2 - t1).as_secs_f64(),
            t2.elapsed().as_secs_f64()
        ));
        if let (Some(cp), Some(bytes)) = (checkpoint.as_deref_mut(), &block_bytes) {
            if layer + 1 < n_layer {
                cp.save_block(
                    layer,
                    bytes,
                    Some(&mut |w: &mut dyn Write| acts.save_to(&model, w)),
                )?;
            } else {
                cp.save_block(layer, bytes, None)?;
            }
        }
        model.unload_block(src, layer);
        tensors.release_block(layer);
        progress.unit_done(&format!("layer {layer}"));
    }
    progress.finish();
    Ok((
        stats,
        modules,
        overrides,
        spill,
        ignored.into_iter().collect(),
        0,
    ))
}

/// The engine tensors of block `layer` made from Hugging Face weights (matrices), by
/// name.
fn block_specs(tensors: &Tensors, layer: usize) -> Vec<&GgufTensorSpec> {
    let mut specs: Vec<&GgufTensorSpec> = tensors
        .specs
        .values()
        .filter(|s| s.layer == Some(layer) && !s.sources.is_empty() && s.shape_ne.len() >= 2)
        .collect();
    specs.sort_by(|a, b| a.gguf_name.cmp(&b.gguf_name));
    specs
}

/// Engine tensor `spec` from its HF sources' values into the device model, as f32 or
/// (`f16`) f16; with `keep_unknown` a tensor the engine does not replace (not a
/// product weight) stays as loaded.
fn put_weight(
    model: &mut Model<Cuda>,
    spec: &GgufTensorSpec,
    srcs: &[Vec<f32>],
    f16: bool,
    keep_unknown: bool,
) -> Result<()> {
    let vals = apply_transform(spec, srcs)
        .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?;
    let cols = spec.shape_ne.first().copied().unwrap_or(1);
    let rows: usize = spec.shape_ne.iter().skip(1).product();
    let w = if f16 {
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        WeightMatrix::new(
            llmq_formats::GgmlType::F16,
            rows,
            cols,
            llmq_kernels::Bytes::whole(std::sync::Arc::new(bytes)),
        )
        .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?
    } else {
        WeightMatrix::from_f32(rows, cols, vals)
    };
    match model.replace_weight(&spec.gguf_name, w) {
        Err(llmq_engine::EngineError::MissingTensor(_)) if keep_unknown => Ok(()),
        r => r.map_err(engine_err),
    }
}

/// Every Linear of block `layer` quantized: GPTQ on the device where the allocation
/// asks for it and a Hessian is there, round-to-nearest otherwise; in the CPU path's
/// order (sites by key, each HF weight at the first site naming it, then the experts
/// that never fired).
#[allow(clippy::too_many_arguments)]
fn solve_block(
    req: &QuantizeRequest,
    alloc: &Allocation,
    tensors: &Tensors,
    gpu: &CalibGpu,
    layer: usize,
    col: &DeviceCollector<'_>,
    top_k: usize,
    progress: &dyn Progress,
) -> Result<Vec<(String, IntQuantized, TensorReport)>> {
    let check = std::env::var_os("LLMQ_CALIB_CHECK").is_some_and(|v| v == "1");
    // all-token Hessian of the MoE input (fallback for starved experts)
    let experts: Vec<&DeviceHessian> = col
        .sites
        .iter()
        .filter(|((stage, e, _), _)| *stage == LinearStage::FfnInput && e.is_some())
        .filter_map(|(_, s)| s.hess.as_ref())
        .collect();
    let moe_all = gpu.hessian_sum(&experts).map_err(engine_err)?;
    let moe_n = moe_all.as_ref().map(|h| h.n_tokens() / top_k as u64);
    let moe_all = moe_all.filter(|h| h.n_tokens() > 0);
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut tasks: Vec<Task> = Vec::new();
    for (key, site) in &col.sites {
        let (stage, expert, _) = *key;
        let rows = site.hess.as_ref().map_or(0, |h| h.n_tokens());
        for gguf in &site.weights {
            for hf in tensors.hf_names(layer, gguf, expert) {
                if !done.insert(hf.clone()) {
                    continue;
                }
                let starved = expert.is_some() && rows < MIN_EXPERT_TOKENS;
                let (calib, label, note) = match alloc.spec(&hf)?.method {
                    Method::Gptq if !starved => (HSel::Site(*key), "gptq".to_string(), None),
                    Method::Gptq => match (&moe_all, stage) {
                        (Some(_), LinearStage::FfnInput) => (
                            HSel::MoeAll,
                            "gptq:all-tokens-hessian".to_string(),
                            Some(format!(
                                "expert got {rows} calibration tokens (< {MIN_EXPERT_TOKENS}): Hessian of all {} tokens at the MoE input",
                                moe_n.unwrap_or(0)
                            )),
                        ),
                        _ => (
                            HSel::None,
                            "rtn:few-tokens".to_string(),
                            Some(format!(
                                "expert got {rows} calibration tokens (< {MIN_EXPERT_TOKENS}): round-to-nearest"
                            )),
                        ),
                    },
                    _ => (HSel::None, "rtn".to_string(), None),
                };
                tasks.push(Task {
                    hf,
                    calib,
                    tokens: rows,
                    label,
                    note,
                });
            }
        }
    }
    for e in 0..col.expert_tokens.len() {
        for (stage, first, weights) in [
            (
                LinearStage::FfnInput,
                "ffn_gate_exps.weight",
                &["ffn_gate_exps.weight", "ffn_up_exps.weight"][..],
            ),
            (
                LinearStage::FfnDown,
                "ffn_down_exps.weight",
                &["ffn_down_exps.weight"][..],
            ),
        ] {
            if col.sites.contains_key(&(stage, Some(e), first)) {
                continue;
            }
            for gguf in weights {
                for hf in tensors.hf_names(layer, gguf, Some(e)) {
                    if !done.insert(hf.clone()) {
                        continue;
                    }
                    let method = alloc.spec(&hf)?.method;
                    let (calib, label, note) = match (&moe_all, stage, method) {
                        (Some(_), LinearStage::FfnInput, Method::Gptq) => (
                            HSel::MoeAll,
                            "gptq:all-tokens-hessian".to_string(),
                            Some(format!(
                                "expert {e} got no calibration tokens: Hessian of all {} tokens at the MoE input",
                                moe_n.unwrap_or(0)
                            )),
                        ),
                        (_, _, Method::Rtn) => (HSel::None, "rtn".to_string(), None),
                        _ => (
                            HSel::None,
                            "rtn:no-tokens".to_string(),
                            Some(format!(
                                "expert {e} got no calibration tokens: round-to-nearest"
                            )),
                        ),
                    };
                    tasks.push(Task {
                        hf,
                        calib,
                        tokens: 0,
                        label,
                        note,
                    });
                }
            }
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let shape = tensors.shape(&t.hf);
        let (o, i) = (shape[0], shape[1]);
        let w = tensors.hf_f32(&t.hf)?;
        let grid = alloc.int_grid(&t.hf)?;
        let h = match &t.calib {
            HSel::Site(k) => col.sites.get(k).and_then(|s| s.hess.as_ref()),
            HSel::MoeAll => moe_all.as_ref(),
            HSel::None => None,
        };
        let Some(h) = h else {
            let (q, st) = quantize_one(
                req,
                grid,
                &t.hf,
                &w,
                o,
                i,
                Calib::None,
                t.tokens,
                t.label,
                t.note,
            )?;
            out.push((t.hf, q, st));
            continue;
        };
        let params = GptqParams {
            bits: grid.bits,
            group_size: grid.group_size,
            sym: grid.symmetric,
            desc_act: grid.act_order,
            static_groups: false,
            damp_percent: req.damp_percent,
            max_damp_percent: 10.0,
        };
        let r = gpu
            .gptq(&w, o, i, h, &params)
            .map_err(|e| gptq_error(&t.hf, e))?;
        if check {
            let host = match &t.calib {
                HSel::Site(k) => col.sites.get(k).and_then(|s| s.host.as_ref()),
                _ => None,
            };
            progress.message(&check_against_cpu(
                gpu,
                h,
                host,
                &w,
                (o, i),
                &params,
                &t.hf,
                &r,
            )?);
        }
        let st = report(
            &t.hf,
            &w,
            &r.quantized,
            r.damp_percent,
            r.loss,
            t.tokens,
            t.label,
            t.note,
        )?;
        out.push((t.hf, r.quantized, st));
    }
    Ok(out)
}

/// `LLMQ_CALIB_CHECK=1`: the CPU solve (`llmq_calib::gptq_quantize`) on the device
/// Hessian brought to the host, against the device's codes: a line for the log.
#[allow(clippy::too_many_arguments)]
fn check_against_cpu(
    gpu: &CalibGpu,
    h: &DeviceHessian,
    host: Option<&llmq_calib::HessianAccumulator>,
    w: &[f32],
    (o, i): (usize, usize),
    p: &GptqParams,
    name: &str,
    r: &GptqOut,
) -> Result<String> {
    let q = &r.quantized;
    let hh = gpu.hessian_host(h).map_err(engine_err)?;
    // the device Hessian against the host's on the same rows: ‖ΔH‖ / ‖H‖
    let h_rel = host.map(|a| {
        let c = a.clone().finish();
        let (mut d, mut s) = (0.0f64, 0.0f64);
        for (x, y) in hh.iter().zip(&c) {
            d += (x - y) * (x - y);
            s += y * y;
        }
        (d / s.max(f64::MIN_POSITIVE)).sqrt()
    });
    let cfg = llmq_calib::GptqConfig {
        bits: p.bits,
        group_size: p.group_size,
        sym: p.sym,
        desc_act: p.desc_act,
        static_groups: p.static_groups,
        damp_percent: p.damp_percent,
        max_damp_percent: p.max_damp_percent,
        block_size: 128,
    };
    let cpu = llmq_calib::gptq_quantize(name, w, o, i, &hh, &cfg)
        .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?;
    let same =
        q.q.iter()
            .zip(&cpu.quantized.q)
            .filter(|(a, b)| a == b)
            .count();
    let scales = q
        .scales
        .iter()
        .zip(&cpu.quantized.scales)
        .filter(|(a, b)| a == b)
        .count();
    Ok(format!(
        "check {name}: codes equal to the CPU solve on the same Hessian {:.5}, scales {:.5}, loss {:.6e} (CPU {:.6e}); device Hessian vs host {}",
        same as f64 / q.q.len().max(1) as f64,
        scales as f64 / q.scales.len().max(1) as f64,
        r.loss,
        cpu.loss,
        h_rel.map_or("-".to_string(), |e| format!("rel. diff {e:.2e}"))
    ))
}

/// A failed device solve in the CPU path's words.
fn gptq_error(name: &str, e: GptqFail) -> PipelineError {
    match e {
        GptqFail::NotPositiveDefinite {
            damp_percent,
            column,
        } => PipelineError::general(
            format!("tensor '{name}': Hessian is not positive definite even with dampening {damp_percent} x mean(diag H) (pivot {column} failed); collect more calibration data or raise damp_percent"),
            "Give more (or more varied) --calibration-data, raise --damp-percent, or use --method rtn",
        ),
        GptqFail::NonFinite(what) => PipelineError::general(
            format!("tensor '{name}': the {what} holds NaN or infinite values"),
            "The model's activations on the calibration data are not finite: check the model weights",
        ),
        GptqFail::Invalid(why) => {
            PipelineError::general(format!("tensor '{name}': {why}"), "Report this as a bug")
        }
        GptqFail::Device(e) => engine_err(e),
    }
}

/// The tensor's report entry, as [`quantize_one`] makes it.
#[allow(clippy::too_many_arguments)]
fn report(
    name: &str,
    w: &[f32],
    q: &IntQuantized,
    damp: f64,
    loss: f64,
    tokens: u64,
    label: String,
    note: Option<String>,
) -> Result<TensorReport> {
    let (r, rel) = rmse(w, &q.dequantize());
    if !r.is_finite() {
        return Err(PipelineError::validation(
            format!("tensor {name}: quantization produced non-finite values"),
            "Report this as a bug",
        ));
    }
    Ok(TensorReport::integer(
        name,
        q,
        label,
        (r, rel),
        CalibrationDetail {
            tokens,
            damp_percent: Some(damp),
            loss: Some(loss),
            awq_ratio: None,
            note,
            proxy_err: None,
        },
    ))
}
