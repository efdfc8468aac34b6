//! The write and validate stages of calibrated quantization for an EXL3 folder
//! (exllamav3 1.x: `conversion/compile.py`, `modules/quant/exl3.py`): every trellis-coded
//! module's tensors (`llmq_trellis::exl3_format::linear_tensors`), every other tensor
//! copied as stored, `config.json` with the EXL3 `quantization_config`, the separate
//! `quantization_config.json` with each module's `tensor_storage`, and the tokenizer
//! files. `bits` is the realised average K over the decoder's Linears (the head apart,
//! as exllamav3 counts it); `head_bits` is the head's K when it is coded
//! ([`super::trellis_head`]), else 16 (kept in the source's precision). The embeddings
//! stay as stored.

use super::write::st_to_hf_dtype;
use super::{hf_err, module_of, QModule, Tensors};
use crate::error::{PipelineError, Result};
use crate::source;
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::{Dtype, HfTensor, ShardedWriter};
use llmq_trellis::exl3_format::{self, linear_tensors, StoredTensor};
use llmq_trellis::quantize::Exl3Linear;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// `head_bits` of an output whose head is not trellis-coded.
const HEAD_KEPT: u32 = 16;

fn trellis_of(m: &QModule) -> Result<&Exl3Linear> {
    match m {
        QModule::Trellis(q) => Ok(q),
        QModule::Int(_) | QModule::Fp(_) | QModule::Packed(_) => Err(PipelineError::general(
            "an integer-grid module reached the EXL3 writer",
            "Report this as a bug",
        )),
    }
}

fn hf_dtype(d: exl3_format::Dtype) -> Dtype {
    match d {
        exl3_format::Dtype::I16 => Dtype::I16,
        exl3_format::Dtype::I32 => Dtype::I32,
        exl3_format::Dtype::F16 => Dtype::F16,
    }
}

/// The stored tensors of module `hf` (with its bias, when the source has one).
fn module_tensors(tensors: &Tensors, hf: &str, q: &Exl3Linear) -> Result<Vec<StoredTensor>> {
    let module = module_of(hf);
    let bias_name = format!("{module}.bias");
    let bias = match tensors.st.info(&bias_name) {
        Some(_) => Some(tensors.hf_f32(&bias_name)?),
        None => None,
    };
    Ok(linear_tensors(module, q, bias.as_deref()))
}

fn torch_dtype(d: Dtype) -> &'static str {
    match d {
        Dtype::BF16 => "torch.bfloat16",
        Dtype::F16 => "torch.float16",
        _ => "torch.float32",
    }
}

/// Writes the EXL3 folder's tensors, `config.json`, `quantization_config.json` and the
/// tokenizer files into `tmp_dir`; `head` is the head's weight name when it is among
/// the coded `modules`.
pub(super) fn write_exl3(
    tensors: &Tensors,
    modules: &BTreeMap<String, QModule>,
    tmp_dir: &Path,
    calibration: (usize, usize),
    src_dir: &Path,
    head: Option<&str>,
) -> Result<()> {
    let mut w = ShardedWriter::new(tmp_dir, llmq_hfquant::writer::DEFAULT_MAX_SHARD_BYTES)
        .map_err(hf_err)?;
    let mut storage = Map::new();
    let mut written_bias = std::collections::BTreeSet::new();
    let (mut numel, mut bits) = (0f64, 0f64);
    let mut codebook = super::trellis_block::CODEBOOK;
    let mut head_bits = HEAD_KEPT;
    for (hf, m) in modules {
        let q = trellis_of(m)?;
        codebook = q.codebook;
        let stored = module_tensors(tensors, hf, q)?;
        storage.insert(
            module_of(hf).to_string(),
            exl3_format::storage_entry(&stored, Some(q)),
        );
        for t in stored {
            if t.name.ends_with(".bias") {
                written_bias.insert(t.name.clone());
            }
            w.add(
                t.name,
                HfTensor::from_raw(hf_dtype(t.dtype), &t.shape, t.data),
            )
            .map_err(hf_err)?;
        }
        if Some(hf.as_str()) == head {
            head_bits = q.k;
            continue;
        }
        let n = (q.in_features * q.out_features) as f64;
        numel += n;
        bits += n * q.k as f64;
    }
    let mut names: Vec<String> = tensors.st.tensors().map(|t| t.name.clone()).collect();
    names.sort();
    for n in names {
        if modules.contains_key(&n) || written_bias.contains(&n) {
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
        let module = n.rsplit_once('.').map_or(n.as_str(), |x| x.0).to_string();
        let entry = storage
            .entry(module)
            .or_insert_with(|| json!({"stored_tensors": {}}));
        entry["stored_tensors"][&n] = json!({
            "shape": shape,
            "n_bytes": view.bytes.len(),
            "dtype": torch_dtype(dt),
        });
        w.add(
            n.clone(),
            HfTensor::from_raw(dt, &shape, view.bytes.to_vec()),
        )
        .map_err(hf_err)?;
        tensors.st.release(&n);
    }
    w.finish().map_err(hf_err)?;
    let qc = exl3_format::quantization_config(
        env!("CARGO_PKG_VERSION"),
        bits / numel.max(1.0),
        head_bits,
        Some(calibration),
        true,
        codebook,
    );
    llmq_hfquant::writer::copy_model_files(src_dir, tmp_dir, &qc).map_err(hf_err)?;
    let mut full = qc;
    full["tensor_storage"] = Value::Object(storage);
    let text = serde_json::to_string_pretty(&full)
        .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?;
    let path = tmp_dir.join("quantization_config.json");
    std::fs::write(&path, text).map_err(|e| {
        PipelineError::general(
            format!("cannot write {}: {e}", path.display()),
            "Check free disk space and permissions",
        )
    })
}

/// Re-reads every trellis-coded module from the written files: its tensors must hold
/// exactly the bytes that were coded.
pub(super) fn validate_exl3(
    dir: &Path,
    tensors: &Tensors,
    modules: &BTreeMap<String, QModule>,
) -> Result<()> {
    let st = SafetensorsModel::open(dir).map_err(source::safetensors_error)?;
    for (hf, m) in modules {
        let q = trellis_of(m)?;
        for t in module_tensors(tensors, hf, q)? {
            let ok = st.get(&t.name).is_ok_and(|v| {
                v.bytes == t.data.as_slice()
                    && v.info.shape == t.shape
                    && matches!(
                        (v.info.dtype, t.dtype),
                        (StDtype::F16, exl3_format::Dtype::F16)
                            | (StDtype::Other("I16"), exl3_format::Dtype::I16)
                            | (StDtype::Other("I32"), exl3_format::Dtype::I32)
                    )
            });
            if !ok {
                return Err(PipelineError::validation(
                    format!("output tensor {} does not read back as written", t.name),
                    "Report this as a bug",
                ));
            }
        }
    }
    Ok(())
}
