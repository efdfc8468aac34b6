//! A whole checkpoint folder as a list of weights: each quantized module `X` as
//! `X.weight` holding its [`IntQuantized`] groups, every other tensor dense with its
//! stored dtype (f32, f16, bf16), plus the `config.json` object.

use super::modules::QuantizedModules;
use super::scheme::HfQuantScheme;
use crate::{Dtype, Error, HfTensor, IntQuantized, Result};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One weight of a checkpoint, in the representation the writers take.
#[derive(Clone, Debug, PartialEq)]
pub enum HfWeight {
    /// a quantized linear layer, `[out, in]`
    Int(IntQuantized),
    /// any other tensor, as stored
    Dense(HfTensor),
}

impl HfWeight {
    /// The values this weight stands for, row-major f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            HfWeight::Int(q) => q.dequantize(),
            HfWeight::Dense(t) => dense_f32(t),
        }
    }

    /// PyTorch-order shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            HfWeight::Int(q) => vec![q.out_features, q.in_features],
            HfWeight::Dense(t) => t.shape.clone(),
        }
    }
}

/// f32 values of a float tensor (f32, f16, bf16; others give an empty vector).
pub fn dense_f32(t: &HfTensor) -> Vec<f32> {
    match t.dtype {
        Dtype::F32 => t.to_f32_vec().unwrap_or_default(),
        Dtype::F16 => t
            .to_f16_vec()
            .unwrap_or_default()
            .into_iter()
            .map(|x| x.to_f32())
            .collect(),
        Dtype::BF16 => t
            .to_bf16_vec()
            .unwrap_or_default()
            .into_iter()
            .map(|x| x.to_f32())
            .collect(),
        _ => Vec::new(),
    }
}

/// A checkpoint folder opened for reading.
pub struct HfCheckpoint {
    pub dir: PathBuf,
    /// `config.json`
    pub config: Value,
    pub st: SafetensorsModel,
    /// `None` for an unquantized checkpoint
    pub modules: Option<QuantizedModules>,
}

impl HfCheckpoint {
    /// Reads the scheme and finds the quantized modules of `dir`, whose weights `st`
    /// holds (opened by the caller, who maps its errors).
    pub fn from_parts(dir: &Path, st: SafetensorsModel) -> Result<HfCheckpoint> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(crate::error::io_err(&cfg_path))?;
        let config: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: cfg_path.clone(),
            source,
        })?;
        let modules = HfQuantScheme::detect(dir)?
            .map(|s| QuantizedModules::scan(s, &st))
            .transpose()?;
        Ok(HfCheckpoint {
            dir: dir.to_path_buf(),
            config,
            st,
            modules,
        })
    }

    /// The quantization scheme, if any.
    pub fn scheme(&self) -> Option<&HfQuantScheme> {
        self.modules.as_ref().map(|m| &m.scheme)
    }

    /// The weights, `(name, shape)`, in the checkpoint's order, quantized modules as
    /// `X.weight` of shape `[out, in]`.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        match &self.modules {
            Some(m) => m.plan_tensors(&self.st),
            None => self
                .st
                .tensors()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect(),
        }
    }

    /// Whether weight `name` (from [`HfCheckpoint::tensors`]) is quantized.
    pub fn is_quantized(&self, name: &str) -> bool {
        self.modules
            .as_ref()
            .is_some_and(|m| m.module_of(name).is_some())
    }

    /// Reads weight `name` (from [`HfCheckpoint::tensors`]).
    pub fn read(&self, name: &str) -> Result<HfWeight> {
        if let Some(m) = &self.modules {
            if let Some(prefix) = m.module_of(name) {
                if m.is_fp(prefix) {
                    // floating-point codes: dequantized at read (f32), rotation folded in
                    let shape = m.dims(prefix).unwrap_or_default();
                    let dense = m.fp_dense(&self.st, prefix)?;
                    return Ok(HfWeight::Dense(HfTensor::from_f32(&shape, &dense)));
                }
                return m.int_quantized(&self.st, prefix).map(HfWeight::Int);
            }
        }
        let bad = |why: String| Error::Tensor {
            name: name.to_string(),
            why,
        };
        let v = self.st.get(name).map_err(|e| bad(e.to_string()))?;
        let dt = match v.info.dtype {
            StDtype::F32 => Dtype::F32,
            StDtype::F16 => Dtype::F16,
            StDtype::BF16 => Dtype::BF16,
            StDtype::Other(d) => return Err(bad(format!("dtype {d} is not a float weight"))),
        };
        let t = HfTensor::from_raw(dt, &v.info.shape, v.bytes.to_vec());
        self.st.release(name);
        Ok(HfWeight::Dense(t))
    }
}
