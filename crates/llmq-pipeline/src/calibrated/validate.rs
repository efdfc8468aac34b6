//! The validate stage of calibrated quantization: every quantized module is read back
//! from the written files through the format's unpacker and must dequantize to
//! exactly what was quantized.

use super::formats::{grid_of, int_writer};
use super::write::st_to_hf_dtype;
use super::{module_of, QModule};
use crate::error::{PipelineError, Result};
use crate::request::QuantizeRequest;
use crate::source;
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::{Dtype, HfTensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Re-reads every quantized module from the written files and checks it unpacks to
/// exactly the integers that were quantized.
pub(super) fn validate_output(
    dir: &Path,
    req: &QuantizeRequest,
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
        if let QModule::Packed(p) = m {
            let writer = int_writer(req, grid_of(&p.like))?;
            let back = writer.read(&get, prefix, &p.like).map_err(|e| {
                PipelineError::validation(
                    format!("output tensor {prefix} does not read back: {e}"),
                    "Report this as a bug",
                )
            })?;
            if !p.matches(&back) {
                return Err(PipelineError::validation(
                    format!("output tensor {prefix} reads back different values"),
                    "Report this as a bug",
                ));
            }
            continue;
        }
        let q = m.int()?;
        let writer = int_writer(req, grid_of(q))?;
        let back = writer.read(&get, prefix, q).map_err(|e| {
            PipelineError::validation(
                format!("output tensor {prefix} does not read back: {e}"),
                "Report this as a bug",
            )
        })?;
        if back.dequantize() != q.dequantize() {
            return Err(PipelineError::validation(
                format!("output tensor {prefix} reads back different values"),
                "Report this as a bug",
            ));
        }
    }
    Ok(())
}
