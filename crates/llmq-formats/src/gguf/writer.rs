//! GGUF v3 streaming writer (`ggml/docs/gguf.md`; layout as `gguf_write_to_buf` in
//! `ggml/src/gguf.cpp` produces it: tensors in plan order, each padded to the alignment).
//!
//! The whole layout is computed from a [`GgufPlan`] before any tensor exists, so a
//! pipeline can quantize tensors in parallel and hand them to
//! [`GgufStreamWriter::write_tensor`] in any order. Data goes to `<final>.tmp` and is
//! renamed to the final name only by [`GgufStreamWriter::finish`], after an fsync.

use super::value::{encode_string, GgufValue};
use super::{
    align_up, io_error, tensor_nbytes, GgufError, GGML_MAX_NAME, GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC, GGUF_PARTIAL_MAGIC, GGUF_VERSION, KEY_ALIGNMENT,
};
use crate::GgmlType;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// Longest metadata key the spec allows.
pub const MAX_KEY_LEN: usize = 65535;

/// A tensor to be written: its name, shape and type, but not yet its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    pub name: String,
    /// ggml `ne` order: `shape_ne[0]` is the row length (PyTorch's last dimension).
    pub shape_ne: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl PlannedTensor {
    pub fn new(name: impl Into<String>, shape_ne: Vec<u64>, ggml_type: GgmlType) -> Self {
        PlannedTensor {
            name: name.into(),
            shape_ne,
            ggml_type,
        }
    }

    /// A tensor from its PyTorch / NumPy shape (outermost first), which is `ne` reversed:
    /// a `[rows, cols]` weight becomes `ne = [cols, rows]`.
    pub fn from_torch_shape(
        name: impl Into<String>,
        torch_shape: &[u64],
        ggml_type: GgmlType,
    ) -> Self {
        Self::new(name, torch_shape.iter().rev().copied().collect(), ggml_type)
    }
}

/// Everything that decides the bytes of a GGUF file except the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufPlan {
    /// KV pairs, written in this order.
    pub metadata: Vec<(String, GgufValue)>,
    /// Tensors, laid out in this order.
    pub tensors: Vec<PlannedTensor>,
    /// Data alignment: a power of two and a multiple of 8. If it is not the default 32,
    /// `metadata` must also hold `general.alignment` = this value as a `u32`.
    pub alignment: u32,
}

impl Default for GgufPlan {
    fn default() -> Self {
        GgufPlan {
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: GGUF_DEFAULT_ALIGNMENT,
        }
    }
}

/// Where everything goes, computed by [`GgufPlan::layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufLayout {
    header: Vec<u8>,
    data_offset: u64,
    tensor_offsets: Vec<u64>,
    tensor_sizes: Vec<u64>,
    total_size: u64,
}

impl GgufLayout {
    /// The bytes before the data section: header, KVs, tensor infos and zero padding.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header
    }

    /// File offset of the data section (= `header_bytes().len()`).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Offset of tensor `i` relative to the data section (as stored in its info).
    pub fn tensor_offset(&self, i: usize) -> u64 {
        self.tensor_offsets[i]
    }

    /// File offset of tensor `i`.
    pub fn tensor_file_offset(&self, i: usize) -> u64 {
        self.data_offset + self.tensor_offsets[i]
    }

    /// Bytes tensor `i` must have.
    pub fn tensor_size(&self, i: usize) -> u64 {
        self.tensor_sizes[i]
    }

    /// Size of the finished file, padding after the last tensor included.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }
}

impl GgufPlan {
    /// An empty plan with the default alignment (32).
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a KV pair (builder style).
    pub fn with_kv(mut self, key: impl Into<String>, value: impl Into<GgufValue>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Add a tensor (builder style).
    pub fn with_tensor(mut self, tensor: PlannedTensor) -> Self {
        self.tensors.push(tensor);
        self
    }

    /// Validate the plan and compute every offset and the header bytes. The same plan
    /// always gives the same bytes.
    pub fn layout(&self) -> Result<GgufLayout, GgufError> {
        fn bad<T>(why: String) -> Result<T, GgufError> {
            Err(GgufError::InvalidPlan(why))
        }
        let alignment = self.alignment;
        // A power of two is a multiple of 8 exactly when it is at least 8.
        if !alignment.is_power_of_two() || alignment < 8 {
            return bad(format!(
                "alignment {alignment} must be a power of two and a multiple of 8"
            ));
        }

        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());

        let mut keys = HashSet::new();
        let mut alignment_key_seen = false;
        for (key, value) in &self.metadata {
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return bad(format!(
                    "metadata key '{key}' must be 1 to {MAX_KEY_LEN} bytes long"
                ));
            }
            if !keys.insert(key.as_str()) {
                return bad(format!("duplicate metadata key '{key}'"));
            }
            if key == KEY_ALIGNMENT {
                alignment_key_seen = true;
                if value.as_u32() != Some(alignment) {
                    return bad(format!(
                        "{KEY_ALIGNMENT} is {value:?} but the plan's alignment is {alignment} (it must be U32({alignment}))"
                    ));
                }
            }
            encode_string(key, &mut header);
            value.encode(&mut header);
        }
        if !alignment_key_seen && alignment != GGUF_DEFAULT_ALIGNMENT {
            return bad(format!(
                "alignment {alignment} is not the default {GGUF_DEFAULT_ALIGNMENT}: add {KEY_ALIGNMENT} = U32({alignment}) to the metadata so readers find the data"
            ));
        }

        let align = u64::from(alignment);
        let mut names = HashSet::new();
        let mut tensor_offsets = Vec::with_capacity(self.tensors.len());
        let mut tensor_sizes = Vec::with_capacity(self.tensors.len());
        let mut data_size: u64 = 0;
        for t in &self.tensors {
            if t.name.is_empty() || t.name.len() >= GGML_MAX_NAME {
                return bad(format!(
                    "tensor name '{}' is {} bytes; it must be 1 to {} bytes (ggml's GGML_MAX_NAME = {GGML_MAX_NAME} includes the NUL)",
                    t.name,
                    t.name.len(),
                    GGML_MAX_NAME - 1
                ));
            }
            if !names.insert(t.name.as_str()) {
                return bad(format!("duplicate tensor name '{}'", t.name));
            }
            let n_bytes = tensor_nbytes(&t.shape_ne, t.ggml_type)
                .or_else(|why| bad(format!("tensor '{}': {why}", t.name)))?;
            tensor_offsets.push(data_size);
            tensor_sizes.push(n_bytes);
            data_size = data_size
                .checked_add(n_bytes)
                .and_then(|end| align_up(end, align))
                .map_or_else(|| bad("total tensor data size overflows u64".into()), Ok)?;

            encode_string(&t.name, &mut header);
            header.extend_from_slice(&(t.shape_ne.len() as u32).to_le_bytes());
            for d in &t.shape_ne {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&tensor_offsets.last().unwrap().to_le_bytes());
        }
        let data_offset = align_up(header.len() as u64, align).expect("header fits in memory");
        header.resize(data_offset as usize, 0);
        let total_size = data_offset
            .checked_add(data_size)
            .map_or_else(|| bad("file size overflows u64".into()), Ok)?;
        Ok(GgufLayout {
            header,
            data_offset,
            tensor_offsets,
            tensor_sizes,
            total_size,
        })
    }
}

/// Names a planned tensor by its index in [`GgufPlan::tensors`] or by its name.
#[derive(Debug, Clone, Copy)]
pub enum TensorRef<'a> {
    Index(usize),
    Name(&'a str),
}

impl From<usize> for TensorRef<'_> {
    fn from(i: usize) -> Self {
        TensorRef::Index(i)
    }
}

impl<'a> From<&'a str> for TensorRef<'a> {
    fn from(name: &'a str) -> Self {
        TensorRef::Name(name)
    }
}

impl<'a> From<&'a String> for TensorRef<'a> {
    fn from(name: &'a String) -> Self {
        TensorRef::Name(name)
    }
}

impl fmt::Display for TensorRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorRef::Index(i) => write!(f, "#{i}"),
            TensorRef::Name(n) => write!(f, "'{n}'"),
        }
    }
}

/// The temporary file a [`GgufStreamWriter`] writes to: the final path with `.tmp`
/// appended to its file name (`model.Q4_K_M.gguf` → `model.Q4_K_M.gguf.tmp`).
pub fn temp_path_for(final_path: &Path) -> PathBuf {
    let mut name: OsString = final_path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

const NOT_WRITTEN: u8 = 0;
const WRITING: u8 = 1;
const WRITTEN: u8 = 2;

/// Writes one GGUF file whose layout was fixed by a [`GgufPlan`]. `write_tensor` takes
/// `&self` and the type is `Sync`, so worker threads can share it (e.g. by reference
/// inside `std::thread::scope` or a rayon pool).
///
/// Dropping the writer without [`finish`](Self::finish) leaves `<final>.tmp` in place
/// (so a later run can [`open_existing`](Self::open_existing) it) and never creates the
/// final file.
#[derive(Debug)]
pub struct GgufStreamWriter {
    file: File,
    final_path: PathBuf,
    temp_path: PathBuf,
    layout: GgufLayout,
    names: Vec<String>,
    index_by_name: HashMap<String, usize>,
    state: Vec<AtomicU8>,
}

impl GgufStreamWriter {
    /// Start a fresh file: create (or truncate) `<final_path>.tmp`, size it to the
    /// planned total (unwritten tensor bytes and all padding read as zeros) and write
    /// the header, KVs, tensor infos and padding.
    pub fn create(final_path: impl AsRef<Path>, plan: &GgufPlan) -> Result<Self, GgufError> {
        let final_path = final_path.as_ref().to_path_buf();
        let layout = plan.layout()?;
        let temp_path = temp_path_for(&final_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp_path)
            .map_err(io_error(&temp_path, "creating"))?;
        file.set_len(layout.total_size())
            .map_err(io_error(&temp_path, "sizing"))?;
        file.write_all_at(layout.header_bytes(), 0)
            .map_err(io_error(&temp_path, "writing the header of"))?;
        // unfinished until `seal`: no reader takes the `.tmp` for a model
        file.write_all_at(&GGUF_PARTIAL_MAGIC, 0)
            .map_err(io_error(&temp_path, "writing the header of"))?;
        Ok(Self::new(file, final_path, temp_path, layout, plan))
    }

    /// Reopen `<final_path>.tmp` left by an interrupted run, without truncating it.
    /// Fails with [`GgufError::ResumeMismatch`] unless its size and header bytes are
    /// exactly what `plan` gives. Every tensor starts out as not written: declare the
    /// ones the caller knows are complete with [`mark_written`](Self::mark_written)
    /// (after checking them with [`read_tensor`](Self::read_tensor) if it wants).
    pub fn open_existing(final_path: impl AsRef<Path>, plan: &GgufPlan) -> Result<Self, GgufError> {
        let final_path = final_path.as_ref().to_path_buf();
        let layout = plan.layout()?;
        let temp_path = temp_path_for(&final_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&temp_path)
            .map_err(io_error(&temp_path, "reopening"))?;
        let mismatch = |why: String| GgufError::ResumeMismatch {
            path: temp_path.clone(),
            why,
        };
        let len = file
            .metadata()
            .map_err(io_error(&temp_path, "reading metadata of"))?
            .len();
        if len != layout.total_size() {
            return Err(mismatch(format!(
                "it is {len} bytes but the plan makes a {} byte file",
                layout.total_size()
            )));
        }
        let mut on_disk = vec![0u8; layout.header_bytes().len()];
        file.read_exact_at(&mut on_disk, 0)
            .map_err(io_error(&temp_path, "reading the header of"))?;
        // the magic is the partial one until the file is sealed
        let m = GGUF_MAGIC.len();
        if let Some(at) = on_disk[m..]
            .iter()
            .zip(&layout.header_bytes()[m..])
            .position(|(a, b)| a != b)
            .map(|at| at + m)
        {
            return Err(mismatch(format!(
                "its header differs from the plan's at byte {at} (different metadata or tensors)"
            )));
        }
        Ok(Self::new(file, final_path, temp_path, layout, plan))
    }

    fn new(
        file: File,
        final_path: PathBuf,
        temp_path: PathBuf,
        layout: GgufLayout,
        plan: &GgufPlan,
    ) -> Self {
        let names: Vec<String> = plan.tensors.iter().map(|t| t.name.clone()).collect();
        let index_by_name = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let state = names.iter().map(|_| AtomicU8::new(NOT_WRITTEN)).collect();
        GgufStreamWriter {
            file,
            final_path,
            temp_path,
            layout,
            names,
            index_by_name,
            state,
        }
    }

    /// The layout being written.
    pub fn layout(&self) -> &GgufLayout {
        &self.layout
    }

    /// The `.tmp` file being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Where `finish` puts the file.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Index of a planned tensor.
    pub fn index_of<'a>(&self, tensor: impl Into<TensorRef<'a>>) -> Result<usize, GgufError> {
        match tensor.into() {
            TensorRef::Index(i) if i < self.names.len() => Ok(i),
            TensorRef::Name(n) if self.index_by_name.contains_key(n) => Ok(self.index_by_name[n]),
            other => Err(GgufError::UnknownTensor(other.to_string())),
        }
    }

    /// Write a tensor's bytes at its planned offset. Any order, any thread; each tensor
    /// exactly once, with exactly the planned number of bytes. A failed write may be
    /// retried.
    pub fn write_tensor<'a>(
        &self,
        tensor: impl Into<TensorRef<'a>>,
        bytes: &[u8],
    ) -> Result<(), GgufError> {
        let i = self.index_of(tensor)?;
        let expected = self.layout.tensor_size(i);
        if bytes.len() as u64 != expected {
            return Err(GgufError::TensorSizeMismatch {
                name: self.names[i].clone(),
                expected,
                got: bytes.len() as u64,
            });
        }
        if self.state[i]
            .compare_exchange(NOT_WRITTEN, WRITING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(GgufError::TensorWrittenTwice {
                name: self.names[i].clone(),
            });
        }
        let result = self
            .file
            .write_all_at(bytes, self.layout.tensor_file_offset(i))
            .map_err(io_error(
                &self.temp_path,
                format!("writing tensor '{}' to", self.names[i]),
            ));
        let next = if result.is_ok() { WRITTEN } else { NOT_WRITTEN };
        self.state[i].store(next, Ordering::Release);
        result
    }

    /// Declare a tensor complete from an earlier run (after `open_existing`).
    pub fn mark_written<'a>(&self, tensor: impl Into<TensorRef<'a>>) -> Result<(), GgufError> {
        let i = self.index_of(tensor)?;
        self.state[i]
            .compare_exchange(NOT_WRITTEN, WRITTEN, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|_| GgufError::TensorWrittenTwice {
                name: self.names[i].clone(),
            })
    }

    /// Whether a tensor has been written (or marked written).
    pub fn is_written<'a>(&self, tensor: impl Into<TensorRef<'a>>) -> Result<bool, GgufError> {
        let i = self.index_of(tensor)?;
        Ok(self.state[i].load(Ordering::Acquire) == WRITTEN)
    }

    /// Read back a tensor's bytes from the `.tmp` file (zeros where nothing was written).
    pub fn read_tensor<'a>(&self, tensor: impl Into<TensorRef<'a>>) -> Result<Vec<u8>, GgufError> {
        let i = self.index_of(tensor)?;
        let mut out = vec![0u8; self.layout.tensor_size(i) as usize];
        self.file
            .read_exact_at(&mut out, self.layout.tensor_file_offset(i))
            .map_err(io_error(
                &self.temp_path,
                format!("reading tensor '{}' from", self.names[i]),
            ))?;
        Ok(out)
    }

    /// Flush written data to disk (e.g. before journaling tensors as done).
    pub fn sync(&self) -> Result<(), GgufError> {
        self.file
            .sync_data()
            .map_err(io_error(&self.temp_path, "syncing"))
    }

    /// Check every tensor was written and put the GGUF magic in place (the `.tmp` is
    /// then a complete file that readers accept, e.g. to verify it before `finish`).
    pub fn seal(&self) -> Result<(), GgufError> {
        self.check_complete()?;
        self.file
            .write_all_at(&GGUF_MAGIC, 0)
            .map_err(io_error(&self.temp_path, "sealing"))
    }

    fn check_complete(&self) -> Result<(), GgufError> {
        let missing: Vec<String> = self
            .state
            .iter()
            .zip(&self.names)
            .filter(|(s, _)| s.load(Ordering::Acquire) != WRITTEN)
            .map(|(_, n)| n.clone())
            .collect();
        if !missing.is_empty() {
            return Err(GgufError::MissingTensors {
                path: self.temp_path.clone(),
                missing,
            });
        }
        Ok(())
    }

    /// Check every tensor was written, seal, fsync, rename `.tmp` to the final path and
    /// fsync the directory so the rename survives a crash.
    pub fn finish(self) -> Result<PathBuf, GgufError> {
        self.seal()?;
        self.file
            .sync_all()
            .map_err(io_error(&self.temp_path, "syncing"))?;
        std::fs::rename(&self.temp_path, &self.final_path).map_err(io_error(
            &self.temp_path,
            format!("renaming to {} from", self.final_path.display()),
        ))?;
        let dir = match self.final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&dir, "syncing directory"))?;
        Ok(self.final_path)
    }
}
