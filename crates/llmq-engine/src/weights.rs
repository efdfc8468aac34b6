//! Where a model's tensors come from, always seen in GGUF terms (llama.cpp names,
//! ggml shapes, the converter's transforms applied): a GGUF file's tensors are mapped
//! without copying; a safetensors checkpoint is converted on load through the same
//! plan the GGUF exporter uses (`llmq_arch::gguf_plan` + `apply_transform`), so one
//! decoder serves both. BF16/F16 weights stay in their type (no rounding); only the
//! transformed-by-arithmetic tensors (Gemma's `1 + w` norms) become F32.

use crate::error::{EngineError, Result};
use llmq_arch::{
    apply_transform, gguf_plan, ArchConfig, GgufTensorSpec, MetaList, MetaValue, Transform,
};
use llmq_formats::gguf::{GgufArray, GgufFile, GgufValue};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_formats::GgmlType;
use llmq_kernels::{ByteOwner, Bytes, WeightMatrix};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A model's tensors and metadata.
pub enum WeightSource {
    Gguf(Arc<GgufFile>),
    Hf(Box<HfWeights>),
}

/// A safetensors checkpoint presented as GGUF tensors.
pub struct HfWeights {
    pub config: ArchConfig,
    st: SafetensorsModel,
    plan: HashMap<String, GgufTensorSpec>,
    metadata: HashMap<String, GgufValue>,
}

struct U16Buf(Vec<u16>);

impl ByteOwner for U16Buf {
    fn owned_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

fn meta_to_map(meta: &MetaList) -> HashMap<String, GgufValue> {
    meta.0
        .iter()
        .map(|(k, v)| {
            let g = match v {
                MetaValue::U32(x) => GgufValue::U32(*x),
                MetaValue::I32(x) => GgufValue::I32(*x),
                MetaValue::F32(x) => GgufValue::F32(*x),
                MetaValue::Bool(x) => GgufValue::Bool(*x),
                MetaValue::Str(x) => GgufValue::String(x.clone()),
                MetaValue::ArrU32(x) => GgufValue::Array(GgufArray::U32(x.clone())),
                MetaValue::ArrI32(x) => GgufValue::Array(GgufArray::I32(x.clone())),
                MetaValue::ArrF32(x) => GgufValue::Array(GgufArray::F32(x.clone())),
                MetaValue::ArrBool(x) => GgufValue::Array(GgufArray::Bool(x.clone())),
                MetaValue::ArrStr(x) => GgufValue::Array(GgufArray::String(x.clone())),
            };
            (k.clone(), g)
        })
        .collect()
}

impl WeightSource {
    /// Open a GGUF file.
    pub fn open_gguf(path: &Path) -> Result<WeightSource> {
        let f = GgufFile::open(path).map_err(|e| EngineError::Source(e.to_string()))?;
        Ok(WeightSource::Gguf(Arc::new(f)))
    }

    /// Open a Hugging Face folder (`config.json` + safetensors).
    pub fn open_hf(dir: &Path) -> Result<WeightSource> {
        let config = ArchConfig::from_path(&dir.join("config.json"))
            .map_err(|e| EngineError::Source(e.to_string()))?;
        let st = SafetensorsModel::open(dir).map_err(|e| EngineError::Source(e.to_string()))?;
        let list: Vec<(String, Vec<usize>)> = st
            .tensors()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let plan = gguf_plan(&config, &list).map_err(|e| EngineError::Source(e.to_string()))?;
        let (meta, _) = llmq_arch::gguf_meta::arch_metadata(&config, "model", 1)
            .map_err(|e| EngineError::Source(e.to_string()))?;
        Ok(WeightSource::Hf(Box::new(HfWeights {
            metadata: meta_to_map(&meta),
            plan: plan
                .tensors
                .into_iter()
                .map(|t| (t.gguf_name.clone(), t))
                .collect(),
            config,
            st,
        })))
    }

    /// Open a GGUF file or a Hugging Face folder.
    pub fn open(path: &Path) -> Result<WeightSource> {
        if path.is_dir() {
            Self::open_hf(path)
        } else {
            Self::open_gguf(path)
        }
    }

    /// GGUF-style metadata (for a safetensors model: what our exporter would write).
    pub fn metadata(&self) -> HashMap<String, GgufValue> {
        match self {
            WeightSource::Gguf(f) => f.metadata().iter().cloned().collect(),
            WeightSource::Hf(h) => h.metadata.clone(),
        }
    }

    /// The HF config, for a safetensors model.
    pub fn hf_config(&self) -> Option<&ArchConfig> {
        match self {
            WeightSource::Gguf(_) => None,
            WeightSource::Hf(h) => Some(&h.config),
        }
    }

    /// The GGML shape (`ne`, innermost first) of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            WeightSource::Gguf(f) => f
                .tensor(name)
                .map(|t| t.shape_ne.iter().map(|x| *x as usize).collect()),
            WeightSource::Hf(h) => h.plan.get(name).map(|s| s.shape_ne.clone()),
        }
    }

    /// A tensor as a matrix of `ne[0]` columns and `ne[1] * ne[2] * …` rows.
    pub fn matrix(&self, name: &str) -> Result<Option<WeightMatrix>> {
        let Some(shape) = self.shape(name) else {
            return Ok(None);
        };
        let cols = shape.first().copied().unwrap_or(1);
        let rows: usize = shape.iter().skip(1).product();
        let bad = |why: String| EngineError::BadTensor {
            name: name.into(),
            why,
        };
        match self {
            WeightSource::Gguf(f) => {
                let info = f.tensor(name).expect("shape came from this tensor");
                let start = (f.data_offset() + info.offset) as usize;
                let owner: Arc<dyn ByteOwner> = f.clone();
                let bytes = Bytes::new(owner, start, info.n_bytes as usize);
                WeightMatrix::new(info.ggml_type, rows, cols, bytes)
                    .map(Some)
                    .map_err(bad)
            }
            WeightSource::Hf(h) => h.matrix(name, rows, cols).map(Some),
        }
    }

    /// A tensor required by the architecture.
    pub fn require(&self, name: &str) -> Result<WeightMatrix> {
        self.matrix(name)?
            .ok_or_else(|| EngineError::MissingTensor(name.into()))
    }

    /// A 1-D tensor (norm weight, bias) as f32 values.
    pub fn vector(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(self.matrix(name)?.map(|m| m.to_f32()))
    }
}

impl HfWeights {
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<WeightMatrix> {
        let spec = &self.plan[name];
        let src_err = |e: llmq_formats::safetensors::SafetensorsError| EngineError::BadTensor {
            name: name.into(),
            why: e.to_string(),
        };
        let mut dtypes = Vec::new();
        let mut sources = Vec::with_capacity(spec.sources.len());
        for s in &spec.sources {
            let view = self.st.get(s).map_err(src_err)?;
            dtypes.push(view.info.dtype);
            sources.push(view.to_f32().map_err(src_err)?);
        }
        let values = apply_transform(spec, &sources).map_err(|e| EngineError::BadTensor {
            name: name.into(),
            why: e.to_string(),
        })?;
        drop(sources);
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::BadTensor {
                name: name.into(),
                why: format!(
                    "element {i} is {} (from {})",
                    values[i],
                    spec.sources.join(", ")
                ),
            });
        }
        // Transforms that only move values keep the source type exactly.
        let moves_only = !matches!(spec.transform, Transform::AddOne);
        let all = |d: StDtype| dtypes.iter().all(|x| *x == d);
        let (ty, bytes) = if moves_only && rows > 1 && all(StDtype::BF16) {
            let v: Vec<u16> = values
                .iter()
                .map(|x| half::bf16::from_f32(*x).to_bits())
                .collect();
            (GgmlType::BF16, Bytes::whole(Arc::new(U16Buf(v))))
        } else if moves_only && rows > 1 && all(StDtype::F16) {
            let v: Vec<u16> = values
                .iter()
                .map(|x| half::f16::from_f32(*x).to_bits())
                .collect();
            (GgmlType::F16, Bytes::whole(Arc::new(U16Buf(v))))
        } else {
            (GgmlType::F32, Bytes::whole(Arc::new(values)))
        };
        WeightMatrix::new(ty, rows, cols, bytes).map_err(|why| EngineError::BadTensor {
            name: name.into(),
            why,
        })
    }
}
