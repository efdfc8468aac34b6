//! The write stage of calibrated quantization: the quantized modules packed by the
//! output format's writer ([`super::formats`]), every other tensor copied (AWQ's
//! folded norms in the source dtype), sharded safetensors, config.json with the
//! format's `quantization_config`, the format's extra files and the tokenizer files.
//! Modules packed as their block finished ([`super::write_stream`]) and the source
//! tensors are copied from their files when their shard is written, so the shards are
//! never held in memory.

use super::formats::{grid_of, int_writer};
use super::{hf_err, module_of, QModule, Tensors};
use crate::error::{PipelineError, Result};
use crate::request::{IntGrid, QuantizeRequest};
use crate::source;
use half::bf16;
use llmq_formats::safetensors::StDtype;
use llmq_hfquant::{Dtype, HfTensor, ShardedWriter};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

pub(super) fn round_to(v: f32, d: Option<StDtype>) -> f32 {
    match d {
        Some(StDtype::BF16) => bf16::from_f32(v).to_f32(),
        Some(StDtype::F16) => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

pub(super) fn st_to_hf_dtype(d: StDtype) -> Option<Dtype> {
    match d {
        StDtype::F32 => Some(Dtype::F32),
        StDtype::F16 => Some(Dtype::F16),
        StDtype::BF16 => Some(Dtype::BF16),
        StDtype::Other(_) => None,
    }
}

pub(super) fn f32_as(d: Dtype, v: &[f32]) -> Vec<u8> {
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

/// Packs the quantized modules, copies every other tensor (with AWQ's folded norms),
/// writes config.json, quantize_config.json and the tokenizer files.
pub(super) fn write_rest(
    tensors: &Tensors,
    modules: &BTreeMap<String, QModule>,
    overrides: &HashMap<String, Vec<f32>>,
    tmp_dir: &Path,
    req: &QuantizeRequest,
    ignored: &[String],
    src_dir: &Path,
) -> Result<()> {
    let mut w = ShardedWriter::new(tmp_dir, llmq_hfquant::writer::DEFAULT_MAX_SHARD_BYTES)
        .map_err(hf_err)?;
    let mut any_g_idx = false;
    let mut spills = BTreeSet::new();
    // every module's width (`--target-bpw` mixes them)
    let mut bits: BTreeMap<String, u8> = BTreeMap::new();
    for (hf, m) in modules {
        if let QModule::Packed(p) = m {
            // packed as its block finished (super::write_stream)
            any_g_idx |= !p.like.has_default_g_idx();
            bits.insert(module_of(hf).to_string(), p.like.bits);
            p.add_to(&mut w)?;
            spills.insert(p.file().to_path_buf());
            continue;
        }
        let q = m.int()?;
        any_g_idx |= !q.has_default_g_idx();
        bits.insert(module_of(hf).to_string(), q.bits);
        let writer = int_writer(req, grid_of(q))?;
        w.add_all(writer.pack(module_of(hf), q).map_err(hf_err)?)
            .map_err(hf_err)?;
    }
    write_unquantized(&mut w, tensors, modules, overrides)?;
    w.finish().map_err(hf_err)?;
    for f in &spills {
        super::write_stream::remove_spill(f)?;
    }
    // the checkpoint-wide config states the requested grid, or with modules of
    // several widths the most common one and each module's own
    let grid = req.int_grid()?;
    let qc = match mixed_base(&bits) {
        None => int_writer(req, grid)?.quantization_config(ignored, any_g_idx),
        Some(base) => int_writer(req, IntGrid { bits: base, ..grid })?
            .quantization_config_mixed(ignored, any_g_idx, &bits)
            .map_err(|e| PipelineError::unsupported(e, "Use one -q level for this format"))?,
    };
    let writer = int_writer(req, grid)?;
    llmq_hfquant::writer::copy_model_files(src_dir, tmp_dir, &qc).map_err(hf_err)?;
    writer.extra_files(tmp_dir, &qc).map_err(hf_err)
}

/// With modules of several widths, the most common one (the narrowest of equals);
/// `None` when they share one.
fn mixed_base(bits: &BTreeMap<String, u8>) -> Option<u8> {
    let mut count: BTreeMap<u8, usize> = BTreeMap::new();
    for &b in bits.values() {
        *count.entry(b).or_default() += 1;
    }
    if count.len() < 2 {
        return None;
    }
    let most = count.values().copied().max()?;
    count.into_iter().find(|&(_, n)| n == most).map(|(b, _)| b)
}

/// Every source tensor that is not a quantized module, as stored (or its `overrides`
/// value: AWQ's scaled norms), and GPT-OSS's per-expert biases; not the fused expert
/// tensors their per-expert views replace.
pub(super) fn write_unquantized(
    w: &mut ShardedWriter,
    tensors: &Tensors,
    modules: &BTreeMap<String, QModule>,
    overrides: &HashMap<String, Vec<f32>>,
) -> Result<()> {
    // (GPT-OSS: not the fused experts, whose per-expert views are written instead)
    let mut names: Vec<String> = tensors
        .st
        .tensors()
        .map(|t| t.name.clone())
        .filter(|n| !tensors.unfused.consumed.contains(n))
        .collect();
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
        match (overrides.get(&n), tensors.st.location(&n)) {
            (Some(v), _) => w.add(n.clone(), HfTensor::from_raw(dt, &shape, f32_as(dt, v))),
            // copied from the source file when its shard is written
            (None, Some((file, offset))) => w.add_file_range(n.clone(), dt, &shape, file, offset),
            (None, None) => w.add(
                n.clone(),
                HfTensor::from_raw(dt, &shape, view.bytes.to_vec()),
            ),
        }
        .map_err(hf_err)?;
        tensors.st.release(&n);
    }
    // GPT-OSS's per-expert biases, cut from the fused ones
    for view in tensors.unfused.views.values() {
        if modules.contains_key(&view.name) {
            continue;
        }
        let dt = st_to_hf_dtype(tensors.view_dtype(view)).unwrap_or(Dtype::BF16);
        let vals = tensors.hf_f32(&view.name)?;
        w.add(
            view.name.clone(),
            HfTensor::from_raw(dt, &view.shape, f32_as(dt, &vals)),
        )
        .map_err(hf_err)?;
    }
    Ok(())
}
