//! Where a model's tensors come from, always seen in GGUF terms (llama.cpp names,
//! ggml shapes, the converter's transforms applied): a GGUF file's tensors are mapped
//! without copying; a safetensors checkpoint is converted on load through the same
//! plan the GGUF exporter uses (`llmq_arch::gguf_plan` + `apply_transform`), so one
//! decoder serves both. BF16/F16 weights stay in their type (no rounding); only the
//! transformed-by-arithmetic tensors (Gemma's `1 + w` norms) become F32.
//!
//! Quantized checkpoints (GPTQ, AWQ, compressed-tensors pack-quantized; see
//! [`crate::hf_quant`]) keep their integer or floating-point (NVFP4 / MXFP4 / FP8)
//! codes: each quantized Linear is repacked into the kernels' block layout, with the
//! plan's row transforms (llama's q/k
//! row permutation, expert stacking) applied to the packed rows. Only transforms that
//! mix columns (MLA's `kv_b` split) dequantize, to f32, as the engine does for that
//! tensor anyway. EXL3 folders' trellis-coded Linears ([`crate::exl3`]) keep their
//! trellis codes (decoded inside the product), or are decoded to f32 at load where the
//! plan's transform mixes values or [`WeightSource::with_exl3_expanded`] asks for it.

use crate::error::{EngineError, Result};
use crate::exl3::Exl3Modules;
use crate::hf_quant::{HfQuantScheme, QuantizedModules};
use llmq_arch::{apply_transform, gguf_plan, ArchConfig, GgufTensorSpec, Transform};
use llmq_formats::gguf::{GgufFile, GgufValue};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_formats::GgmlType;
use llmq_kernels::{ByteOwner, Bytes, IntAct, WeightMatrix};
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
    /// the quantized Linears of a GPTQ / AWQ / compressed-tensors checkpoint
    quant: Option<QuantizedModules>,
    /// the trellis-coded Linears of an EXL3 folder
    exl3: Option<Exl3Modules>,
    /// activations the integer weights are multiplied with
    int_act: IntAct,
    /// EXL3 Linears decoded to f32 at load instead of kept as trellis codes
    exl3_expanded: bool,
}

struct U16Buf(Vec<u16>);

impl ByteOwner for U16Buf {
    fn owned_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl WeightSource {
    /// Bytes of tensor data in the source, as stored (what a backend uploads, give or
    /// take the f32 copies of norm vectors).
    pub fn tensor_bytes(&self) -> u64 {
        match self {
            WeightSource::Gguf(f) => f.tensors().iter().map(|t| t.n_bytes).sum(),
            WeightSource::Hf(h) => h.st.total_bytes(),
        }
    }

    /// Open a GGUF file.
    pub fn open_gguf(path: &Path) -> Result<WeightSource> {
        let f = GgufFile::open(path).map_err(|e| EngineError::Source(e.to_string()))?;
        Ok(WeightSource::Gguf(Arc::new(f)))
    }

    /// Open a Hugging Face folder (`config.json` + safetensors).
    pub fn open_hf(dir: &Path) -> Result<WeightSource> {
        let config = ArchConfig::from_path(&dir.join("config.json")).map_err(|e| match e {
            llmq_arch::config::ConfigError::Unsupported(arch) => EngineError::UnsupportedArch(arch),
            llmq_arch::config::ConfigError::UnsupportedValue { key, value } => {
                EngineError::UnsupportedValue { key, value }
            }
            e => EngineError::Source(e.to_string()),
        })?;
        let st = SafetensorsModel::open(dir).map_err(|e| EngineError::Source(e.to_string()))?;
        let exl3 = crate::exl3::is_exl3(dir).then(|| Exl3Modules::scan(&st));
        let quant = match exl3 {
            Some(_) => None,
            None => HfQuantScheme::detect(dir)?
                .map(|scheme| QuantizedModules::scan(scheme, &st))
                .transpose()?,
        };
        let list: Vec<(String, Vec<usize>)> = match (&quant, &exl3) {
            (Some(q), _) => q.plan_tensors(&st),
            (None, Some(e)) => e.plan_tensors(&st),
            (None, None) => st
                .tensors()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect(),
        };
        let plan = gguf_plan(&config, &list).map_err(|e| EngineError::Source(e.to_string()))?;
        let (meta, _) = llmq_arch::gguf_meta::arch_metadata(&config, "model", 1)
            .map_err(|e| EngineError::Source(e.to_string()))?;
        Ok(WeightSource::Hf(Box::new(HfWeights {
            metadata: meta.to_gguf().into_iter().collect(),
            plan: plan
                .tensors
                .into_iter()
                .map(|t| (t.gguf_name.clone(), t))
                .collect(),
            config,
            st,
            quant,
            exl3,
            int_act: IntAct::Q8_0,
            exl3_expanded: false,
        })))
    }

    /// Which activations integer (GPTQ / AWQ / compressed-tensors) weights are
    /// multiplied with: `Q8_0` (default, fast) or `F32` (exactly `x · dequant(W)ᵀ`).
    pub fn with_int_activations(mut self, act: IntAct) -> WeightSource {
        if let WeightSource::Hf(h) = &mut self {
            h.int_act = act;
        }
        self
    }

    /// EXL3 folders: decode every trellis-coded Linear to f32 at load (`true`) instead of
    /// keeping its codes for the fused product (the default). The reference the fused
    /// path is checked against.
    pub fn with_exl3_expanded(mut self, expanded: bool) -> WeightSource {
        if let WeightSource::Hf(h) = &mut self {
            h.exl3_expanded = expanded;
        }
        self
    }

    /// The quantization scheme of a quantized safetensors checkpoint.
    pub fn hf_quant_scheme(&self) -> Option<&HfQuantScheme> {
        match self {
            WeightSource::Hf(h) => h.quant.as_ref().map(|q| &q.scheme),
            WeightSource::Gguf(_) => None,
        }
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
        match self {
            WeightSource::Gguf(f) => {
                let info = f.tensor(name).expect("shape came from this tensor");
                // NaN / infinity in the stored values or block scales: refused at load,
                // as a safetensors checkpoint's are
                if let Some(bad) =
                    llmq_formats::finite::first_non_finite(info.ggml_type, f.tensor_bytes(info))
                {
                    return Err(EngineError::BadTensor {
                        name: name.into(),
                        why: format!("{} is not finite: {bad}", info.ggml_type),
                    });
                }
                let start = (f.data_offset() + info.offset) as usize;
                let owner: Arc<dyn ByteOwner> = f.clone();
                let bytes = Bytes::new(owner, start, info.n_bytes as usize);
                WeightMatrix::new(info.ggml_type, rows, cols, bytes)
                    .map(Some)
                    .map_err(|e| EngineError::tensor(name, e))
            }
            WeightSource::Hf(h) => h.matrix(name, rows, cols).map(Some),
        }
    }

    /// A tensor required by the architecture.
    pub fn require(&self, name: &str) -> Result<WeightMatrix> {
        self.matrix(name)?
            .ok_or_else(|| EngineError::MissingTensor(name.into()))
    }

    /// Drop the mapped pages of tensor `name` (GGUF name) from the resident set; they
    /// are re-read from the file if touched again.
    pub fn release(&self, name: &str) {
        match self {
            WeightSource::Gguf(f) => {
                if let Some(info) = f.tensor(name) {
                    f.release_tensor(info);
                }
            }
            WeightSource::Hf(h) => {
                if let Some(spec) = h.plan.get(name) {
                    for s in &spec.sources {
                        h.st.release(s);
                    }
                }
            }
        }
    }

    /// [`WeightSource::release`] every tensor of block `layer` (`blk.N.*`).
    pub fn release_block(&self, layer: usize) {
        let prefix = format!("blk.{layer}.");
        match self {
            WeightSource::Gguf(f) => {
                for info in f.tensors().iter().filter(|t| t.name.starts_with(&prefix)) {
                    f.release_tensor(info);
                }
            }
            WeightSource::Hf(h) => {
                for (_, spec) in h.plan.iter().filter(|(n, _)| n.starts_with(&prefix)) {
                    for s in &spec.sources {
                        h.st.release(s);
                    }
                }
            }
        }
    }

    /// A 1-D tensor (norm weight, bias) as f32 values.
    pub fn vector(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(self.matrix(name)?.map(|m| m.to_f32()))
    }
}

impl HfWeights {
    /// A plan tensor built from quantized modules without dequantizing, when its
    /// transform only moves rows.
    fn int_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Option<WeightMatrix>> {
        let Some(qm) = &self.quant else {
            return Ok(None);
        };
        let spec = &self.plan[name];
        let modules: Option<Vec<&str>> = spec.sources.iter().map(|s| qm.module_of(s)).collect();
        let Some(modules) = modules else {
            return Ok(None);
        };
        let bad = |why: String| EngineError::BadTensor {
            name: name.into(),
            why,
        };
        let w = match &spec.transform {
            Transform::None if modules.len() == 1 => {
                qm.matrix(&self.st, modules[0], self.int_act)?
            }
            Transform::Stack => {
                let parts = modules
                    .iter()
                    .map(|m| qm.matrix(&self.st, m, self.int_act))
                    .collect::<Result<Vec<_>>>()?;
                WeightMatrix::stack_rows(&parts).map_err(|e| EngineError::tensor(name, e))?
            }
            Transform::PermuteQK { n_head } => {
                let w = qm.matrix(&self.st, modules[0], self.int_act)?;
                permute_qk_rows(name, w, *n_head)?
            }
            _ => return Ok(None),
        };
        if w.rows != rows || w.cols != cols {
            return Err(bad(format!(
                "quantized weight is {}x{}, the plan wants {rows}x{cols}",
                w.rows, w.cols
            )));
        }
        Ok(Some(w))
    }

    /// A plan tensor that is one EXL3 Linear under a transform that keeps its values
    /// (none, or a row order), as a trellis matrix.
    fn exl3_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Option<WeightMatrix>> {
        let Some(e) = self.exl3.as_ref().filter(|_| !self.exl3_expanded) else {
            return Ok(None);
        };
        let spec = &self.plan[name];
        let [src] = spec.sources.as_slice() else {
            return Ok(None);
        };
        let Some(m) = e.module_of(src) else {
            return Ok(None);
        };
        let w = match &spec.transform {
            Transform::None => e.matrix(&self.st, m)?,
            Transform::PermuteQK { n_head } => {
                permute_qk_rows(name, e.matrix(&self.st, m)?, *n_head)?
            }
            _ => return Ok(None),
        };
        if w.rows != rows || w.cols != cols {
            return Err(EngineError::BadTensor {
                name: name.into(),
                why: format!(
                    "trellis weight is {}x{}, the plan wants {rows}x{cols}",
                    w.rows, w.cols
                ),
            });
        }
        Ok(Some(w))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<WeightMatrix> {
        if let Some(w) = self.exl3_matrix(name, rows, cols)? {
            return Ok(w);
        }
        if let Some(w) = self.int_matrix(name, rows, cols)? {
            return Ok(w);
        }
        let spec = &self.plan[name];
        let src_err = |e: llmq_formats::safetensors::SafetensorsError| EngineError::BadTensor {
            name: name.into(),
            why: e.to_string(),
        };
        if let Some(w) = self.half_matrix(name, rows, cols)? {
            return Ok(w);
        }
        let mut dtypes = Vec::new();
        let mut sources = Vec::with_capacity(spec.sources.len());
        for s in &spec.sources {
            if let Some((e, m)) = self.exl3.as_ref().and_then(|e| Some((e, e.module_of(s)?))) {
                // a trellis-coded Linear: decoded once, here
                dtypes.push(StDtype::F32);
                sources.push(e.dequantize(&self.st, m)?);
                continue;
            }
            if let Some(m) = self.quant.as_ref().and_then(|q| q.module_of(s)) {
                // a column-mixing transform of a quantized weight: dequantize
                let q = self.quant.as_ref().expect("quantized");
                dtypes.push(StDtype::F32);
                sources.push(q.dequantize(&self.st, m)?);
                continue;
            }
            let view = self.st.get(s).map_err(src_err)?;
            if spec.transform.reads_bytes() {
                dtypes.push(StDtype::F32);
                sources.push(view.u8_as_f32().map_err(src_err)?);
                continue;
            }
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
        WeightMatrix::new(ty, rows, cols, bytes).map_err(|e| EngineError::tensor(name, e))
    }

    /// A plan tensor that is one BF16 or F16 source as stored (no transform, not
    /// quantized): its values copied as they are, without the f32 round trip of
    /// [`HfWeights::matrix`] (which gives the same bits: both halves widen to f32
    /// exactly), so loading a large embedding takes its stored size, not three times
    /// that. `None` for every other tensor.
    fn half_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Option<WeightMatrix>> {
        let spec = &self.plan[name];
        let [src] = spec.sources.as_slice() else {
            return Ok(None);
        };
        let stored = self
            .exl3
            .as_ref()
            .is_some_and(|e| e.module_of(src).is_some())
            || self
                .quant
                .as_ref()
                .is_some_and(|q| q.module_of(src).is_some());
        if spec.transform != Transform::None || stored || rows <= 1 {
            return Ok(None);
        }
        let Ok(view) = self.st.get(src) else {
            return Ok(None);
        };
        let (ty, widen): (GgmlType, fn(u16) -> f32) = match view.info.dtype {
            StDtype::BF16 => (GgmlType::BF16, |b| half::bf16::from_bits(b).to_f32()),
            StDtype::F16 => (GgmlType::F16, |b| half::f16::from_bits(b).to_f32()),
            _ => return Ok(None),
        };
        let v: Vec<u16> = view
            .bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        if v.len() != rows * cols {
            return Ok(None);
        }
        // non-finite values are refused as the f32 path refuses them
        if let Some(i) = v.iter().position(|&b| !widen(b).is_finite()) {
            return Err(EngineError::BadTensor {
                name: name.into(),
                why: format!("element {i} is {} (from {src})", widen(v[i])),
            });
        }
        WeightMatrix::new(ty, rows, cols, Bytes::whole(Arc::new(U16Buf(v))))
            .map(Some)
            .map_err(|e| EngineError::tensor(name, e))
    }
}

/// A packed matrix with its rows in the q/k order of the f32 path (the same permutation
/// applied to the row indices), so a quantized q/k weight keeps its codes.
fn permute_qk_rows(name: &str, w: WeightMatrix, n_head: usize) -> Result<WeightMatrix> {
    let idx: Vec<f32> = (0..w.rows).map(|r| r as f32).collect();
    let order: Vec<usize> = llmq_arch::gguf_names::permute_qk(&idx, w.rows, 1, n_head)
        .into_iter()
        .map(|r| r as usize)
        .collect();
    w.permute_rows(&order)
        .map_err(|e| EngineError::tensor(name, e))
}
