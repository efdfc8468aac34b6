//! Memory-mapped safetensors checkpoints: one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Headers are parsed and checked by Hugging Face's
//! `safetensors` crate (offsets in bounds, contiguous, sizes matching shapes); tensor
//! bytes stay in the page cache until a caller converts them.

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Errors opening or reading a safetensors checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("no model.safetensors or model.safetensors.index.json in {0}")]
    NotFound(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {why}")]
    Invalid { path: String, why: String },
    #[error("index {path} is invalid: {why}")]
    BadIndex { path: String, why: String },
    #[error("tensor `{0}` is not in the checkpoint")]
    MissingTensor(String),
    #[error(
        "tensor `{name}` has dtype {dtype}, which this tool does not read (F32, F16, BF16 are)"
    )]
    UnsupportedDtype { name: String, dtype: String },
}

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    F32,
    F16,
    BF16,
    /// any other dtype, by its safetensors name (readable as bytes only)
    Other(&'static str),
}

impl StDtype {
    fn from(d: Dtype) -> StDtype {
        match d {
            Dtype::F32 => StDtype::F32,
            Dtype::F16 => StDtype::F16,
            Dtype::BF16 => StDtype::BF16,
            Dtype::I8 => StDtype::Other("I8"),
            Dtype::U8 => StDtype::Other("U8"),
            Dtype::I16 => StDtype::Other("I16"),
            Dtype::I32 => StDtype::Other("I32"),
            Dtype::I64 => StDtype::Other("I64"),
            Dtype::F64 => StDtype::Other("F64"),
            Dtype::BOOL => StDtype::Other("BOOL"),
            Dtype::F8_E4M3 => StDtype::Other("F8_E4M3"),
            _ => StDtype::Other("OTHER"),
        }
    }

    /// The dtype name as written in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
            StDtype::Other(n) => n,
        }
    }
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: StDtype,
    /// PyTorch order (outermost first)
    pub shape: Vec<usize>,
    shard: usize,
    start: usize,
    end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

/// A borrowed view of one tensor's bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    /// Convert to f32 (F32, F16 and BF16 sources).
    pub fn to_f32(&self) -> Result<Vec<f32>, SafetensorsError> {
        self.range_f32(0, self.info.numel())
    }

    /// A U8 tensor's bytes as f32 values 0…255 (packed codes such as MXFP4 blocks and
    /// scales, which a transform then decodes); any other dtype is refused.
    pub fn u8_as_f32(&self) -> Result<Vec<f32>, SafetensorsError> {
        match self.info.dtype {
            StDtype::Other("U8") => Ok(self.bytes.iter().map(|b| f32::from(*b)).collect()),
            d => Err(SafetensorsError::UnsupportedDtype {
                name: self.info.name.clone(),
                dtype: format!("{} (packed codes must be U8)", d.name()),
            }),
        }
    }

    /// Elements `[start, end)` (row-major) converted to f32.
    pub fn range_f32(&self, start: usize, end: usize) -> Result<Vec<f32>, SafetensorsError> {
        let width = match self.info.dtype {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::BF16 => 2,
            StDtype::Other(d) => {
                return Err(SafetensorsError::UnsupportedDtype {
                    name: self.info.name.clone(),
                    dtype: d.into(),
                })
            }
        };
        let b = &self.bytes[start * width..end * width];
        Ok(match self.info.dtype {
            StDtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StDtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StDtype::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StDtype::Other(d) => {
                return Err(SafetensorsError::UnsupportedDtype {
                    name: self.info.name.clone(),
                    dtype: d.into(),
                })
            }
        })
    }
}

/// A checkpoint of one or more memory-mapped safetensors shards.
pub struct SafetensorsModel {
    shards: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, TensorInfo>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SafetensorsError + '_ {
    move |source| SafetensorsError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl SafetensorsModel {
    /// Open a model folder (single file or sharded with an index) or one `.safetensors` file.
    pub fn open(path: &Path) -> Result<SafetensorsModel, SafetensorsError> {
        if path.is_file() {
            return Self::open_files(&[path.to_path_buf()]);
        }
        let index = path.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(io(&index))?;
            let bad = |why: String| SafetensorsError::BadIndex {
                path: index.display().to_string(),
                why,
            };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no weight_map object".into()))?;
            let mut files: Vec<String> = Vec::new();
            for f in map.values() {
                let f = f
                    .as_str()
                    .ok_or_else(|| bad("weight_map values must be file names".into()))?;
                if f.contains('/') || f.contains('\\') || f.starts_with("..") {
                    return Err(bad(format!("shard name `{f}` is not a plain file name")));
                }
                if !files.iter().any(|x| x == f) {
                    files.push(f.to_string());
                }
            }
            files.sort();
            let paths: Vec<PathBuf> = files.iter().map(|f| path.join(f)).collect();
            let model = Self::open_files(&paths)?;
            for name in map.keys() {
                if !model.tensors.contains_key(name) {
                    return Err(bad(format!("lists `{name}`, which no shard holds")));
                }
            }
            return Ok(model);
        }
        let single = path.join("model.safetensors");
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        Err(SafetensorsError::NotFound(path.display().to_string()))
    }

    fn open_files(paths: &[PathBuf]) -> Result<SafetensorsModel, SafetensorsError> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut tensors = BTreeMap::new();
        for (si, p) in paths.iter().enumerate() {
            let file = File::open(p).map_err(io(p))?;
            // SAFETY: the file is opened read-only; we never write through the map. A
            // concurrent writer truncating the file is outside what we can guard.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io(p))?;
            let invalid = |why: String| SafetensorsError::Invalid {
                path: p.display().to_string(),
                why,
            };
            let (header_len, meta) = SafeTensors::read_metadata(&mmap[..])
                .map_err(|e| invalid(name_the_tensor(&mmap[..], e.to_string())))?;
            // Full validation (offsets cover the buffer exactly, no overlaps, sizes match).
            SafeTensors::deserialize(&mmap[..]).map_err(|e| invalid(e.to_string()))?;
            let data_start = 8 + header_len;
            for (name, ti) in meta.tensors() {
                let (s, e) = ti.data_offsets;
                let info = TensorInfo {
                    name: name.clone(),
                    dtype: StDtype::from(ti.dtype),
                    shape: ti.shape.clone(),
                    shard: si,
                    start: data_start + s,
                    end: data_start + e,
                };
                if info.end > mmap.len() {
                    return Err(invalid(format!(
                        "tensor `{name}` ends past the end of the file"
                    )));
                }
                if tensors.insert(name.clone(), info).is_some() {
                    return Err(invalid(format!(
                        "tensor `{name}` appears in more than one shard"
                    )));
                }
            }
            shards.push((p.clone(), mmap));
        }
        Ok(SafetensorsModel { shards, tensors })
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    /// Tensor metadata by name.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// A view of a tensor's bytes.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>, SafetensorsError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| SafetensorsError::MissingTensor(name.into()))?;
        let mmap = &self.shards[info.shard].1;
        Ok(TensorView {
            info,
            bytes: &mmap[info.start..info.end],
        })
    }

    /// Drop a tensor's pages from the resident set once it has been read (they are
    /// re-read from the file if touched again).
    pub fn release(&self, name: &str) {
        if let Some(info) = self.tensors.get(name) {
            let mmap = &self.shards[info.shard].1;
            // SAFETY: read-only shared file mapping; see `GgufFile::release_tensor`.
            let _ = unsafe {
                mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    info.start,
                    info.end - info.start,
                )
            };
        }
    }

    /// The shard file holding a tensor and the offset of its bytes in it.
    pub fn location(&self, name: &str) -> Option<(&Path, u64)> {
        let info = self.tensors.get(name)?;
        Some((self.shards[info.shard].0.as_path(), info.start as u64))
    }

    /// A tensor converted to f32.
    pub fn f32(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        self.get(name)?.to_f32()
    }

    /// Total bytes of tensor data over all shards.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.nbytes() as u64).sum()
    }

    /// The shard files.
    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|(p, _)| p.as_path())
    }
}

/// The safetensors crate's "invalid shape, data type, or offset" names no tensor: find
/// the first whose shape and dtype disagree with its byte range and name it.
fn name_the_tensor(bytes: &[u8], why: String) -> String {
    let culprit = || -> Option<String> {
        let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let h: serde_json::Value =
            serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
        h.as_object()?.iter().find_map(|(name, t)| {
            if name == "__metadata__" {
                return None;
            }
            let width: u64 = match t.get("dtype")?.as_str()? {
                "F64" | "I64" | "U64" => 8,
                "F32" | "I32" | "U32" => 4,
                "F16" | "BF16" | "I16" | "U16" => 2,
                _ => 1,
            };
            let shape = t.get("shape")?.as_array()?;
            let numel = shape
                .iter()
                .try_fold(1u64, |a, d| d.as_u64().and_then(|d| a.checked_mul(d)));
            let off = t.get("data_offsets")?.as_array()?;
            let (s, e) = (off.first()?.as_u64()?, off.get(1)?.as_u64()?);
            let ok = numel.and_then(|n| n.checked_mul(width)) == e.checked_sub(s);
            (!ok).then(|| {
                format!(
                    "{why}: tensor `{name}` has shape {} of {} but {} bytes",
                    serde_json::Value::Array(shape.clone()),
                    t["dtype"],
                    e.saturating_sub(s)
                )
            })
        })
    };
    culprit().unwrap_or(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_st(path: &Path, header: &str, data: &[u8]) {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn reads_bf16_and_rejects_lying_offsets_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let vals = [1.0f32, -2.5, 0.0, 3.0];
        let data: Vec<u8> = vals
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        write_st(
            &p,
            r#"{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}"#,
            &data,
        );
        let m = SafetensorsModel::open(dir.path()).unwrap();
        assert_eq!(m.f32("w").unwrap(), vals);
        assert_eq!(m.info("w").unwrap().shape, vec![2, 2]);

        write_st(
            &p,
            r#"{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,80]}}"#,
            &data,
        );
        let e = SafetensorsModel::open(dir.path()).err().unwrap();
        assert!(matches!(e, SafetensorsError::Invalid { .. }), "{e}");

        write_st(
            &p,
            r#"{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}"#,
            &data[..5],
        );
        assert!(SafetensorsModel::open(dir.path()).is_err());

        std::fs::write(&p, [1u8, 2, 3]).unwrap();
        assert!(SafetensorsModel::open(dir.path()).is_err());
    }

    #[test]
    fn sharded_index_and_unknown_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = 1.5f32.to_le_bytes().to_vec();
        write_st(
            &dir.path().join("model-00001-of-00002.safetensors"),
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &a,
        );
        write_st(
            &dir.path().join("model-00002-of-00002.safetensors"),
            r#"{"b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}"#,
            &a,
        );
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let m = SafetensorsModel::open(dir.path()).unwrap();
        assert_eq!(m.f32("a").unwrap(), vec![1.5]);
        assert!(matches!(
            m.f32("b"),
            Err(SafetensorsError::UnsupportedDtype { .. })
        ));
        assert!(matches!(
            m.get("c"),
            Err(SafetensorsError::MissingTensor(_))
        ));
    }
}
