//! GGUF v2/v3 reader (`ggml/docs/gguf.md`; checks modelled on `gguf_init_from_file_impl`
//! in `ggml/src/gguf.cpp`). Every length read from the file is checked against the bytes
//! that remain before anything is allocated or sliced, so truncated or lying files give
//! a [`GgufError`] naming the offset instead of a panic or an oversized allocation.

use super::value::{GgufArray, GgufValue, GgufValueType};
use super::{
    align_up, io_error, tensor_nbytes, GgufError, GGML_MAX_DIMS, GGML_MAX_NAME,
    GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, KEY_ALIGNMENT, KEY_ARCHITECTURE, KEY_FILE_TYPE,
    MAX_ARRAY_DEPTH,
};
use crate::GgmlType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

/// One tensor's entry in the tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions in ggml `ne` order: `shape_ne[0]` is the contiguous row length.
    pub shape_ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Start of the tensor's bytes, relative to the data section.
    pub offset: u64,
    /// Size of the tensor's bytes (without padding).
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// The shape in PyTorch / NumPy order (outermost dimension first): `shape_ne` reversed.
    pub fn shape_torch(&self) -> Vec<u64> {
        self.shape_ne.iter().rev().copied().collect()
    }

    /// Number of elements (1 for a tensor with no dimensions).
    pub fn n_elements(&self) -> u64 {
        self.shape_ne.iter().product()
    }
}

enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file whose tensor data stays in the mapped (or owned) bytes.
pub struct GgufFile {
    backing: Backing,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u32,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// Files smaller than this are read into memory instead of mapped.
const READ_INSTEAD_OF_MAP_BELOW: u64 = 4096;

impl GgufFile {
    /// Map and parse `path`. The mapping assumes nobody truncates the file while it is
    /// open (the usual contract of memory-mapped model files).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(io_error(path, "opening"))?;
        let len = file
            .metadata()
            .map_err(io_error(path, "reading metadata of"))?
            .len();
        let backing = if len < READ_INSTEAD_OF_MAP_BELOW {
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes)
                .map_err(io_error(path, "reading"))?;
            Backing::Owned(bytes)
        } else {
            // SAFETY: the map is read-only and private to this value; like every mmap
            // reader we rely on the file not being truncated underneath us.
            let map = unsafe { Mmap::map(&file) }.map_err(io_error(path, "memory-mapping"))?;
            Backing::Mapped(map)
        };
        Self::parse(backing)
    }

    /// Parse a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<GgufFile, GgufError> {
        let parsed = parse(backing.bytes())?;
        Ok(GgufFile {
            backing,
            version: parsed.version,
            key_index: index_by_name(parsed.metadata.iter().map(|(k, _)| k)),
            tensor_index: index_by_name(parsed.tensors.iter().map(|t| &t.name)),
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }

    /// Format version from the header (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every KV pair, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every tensor info, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get(KEY_ARCHITECTURE)?.as_str()
    }

    /// `general.file_type` (a `llama_ftype`, e.g. 15 = MOSTLY_Q4_K_M), if present and an
    /// integer that fits in `u32` (gguf-py writes it as `u32`).
    pub fn file_type(&self) -> Option<u32> {
        self.get(KEY_FILE_TYPE)?
            .to_u64()
            .and_then(|v| u32::try_from(v).ok())
    }

    /// Data alignment: `general.alignment`, or 32.
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// File offset where the data section starts (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// The bytes of a tensor of this file (bounds were checked when it was opened).
    ///
    /// # Panics
    /// If `info` describes a range outside this file, i.e. it came from another file.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        let range = self
            .tensor_range(info)
            .expect("GgufTensorInfo does not belong to this GgufFile");
        &self.backing.bytes()[range]
    }

    /// Tell the kernel this tensor's pages of a memory-mapped file are no longer
    /// needed, so they stop counting in the resident set (they are re-read from the
    /// file if touched again). A no-op for in-memory files.
    pub fn release_tensor(&self, info: &GgufTensorInfo) {
        if let (Backing::Mapped(m), Some(r)) = (&self.backing, self.tensor_range(info)) {
            // SAFETY: the map is a read-only shared mapping of a file; dropping its
            // pages only makes later reads fault them back in from the file.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, r.start, r.len())
            };
        }
    }

    /// The bytes of the tensor named `name`.
    pub fn tensor_data(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_bytes(t))
    }

    fn tensor_range(&self, info: &GgufTensorInfo) -> Option<Range<usize>> {
        let start = self.data_offset.checked_add(info.offset)?;
        let end = start.checked_add(info.n_bytes)?;
        let len = self.backing.bytes().len() as u64;
        (end <= len).then_some(start as usize..end as usize)
    }
}

fn index_by_name<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<String, usize> {
    names.enumerate().map(|(i, n)| (n.clone(), i)).collect()
}

struct Parsed {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u32,
    data_offset: u64,
}

/// Position in the input plus a description of what is being read, for errors.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    context: String,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn truncated(&self, what: &str, needed: u64) -> GgufError {
        GgufError::Truncated {
            offset: self.offset(),
            what: format!("{what} of {}", self.context),
            needed,
            available: self.remaining() as u64,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() as u64 {
            return Err(self.truncated(what, n));
        }
        let out = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let start = self.offset();
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| GgufError::InvalidUtf8 {
                offset: start + e.valid_up_to() as u64,
                what: format!("{what} of {}", self.context),
            })
    }

    fn value_type(&mut self, what: &str) -> Result<GgufValueType, GgufError> {
        let offset = self.offset();
        let id = self.u32(what)?;
        GgufValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            offset,
            type_id: id,
            context: format!("{what} of {}", self.context),
        })
    }

    fn bool(&mut self) -> Result<bool, GgufError> {
        let offset = self.offset();
        match self.take(1, "bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(GgufError::Invalid {
                offset,
                why: format!("bool byte is {b}, expected 0 or 1, in {}", self.context),
            }),
        }
    }

    fn value(&mut self, t: GgufValueType) -> Result<GgufValue, GgufError> {
        use GgufValueType as T;
        Ok(match t {
            T::U8 => GgufValue::U8(u8::from_le_bytes(self.array("u8")?)),
            T::I8 => GgufValue::I8(i8::from_le_bytes(self.array("i8")?)),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.array("u16")?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.array("i16")?)),
            T::U32 => GgufValue::U32(u32::from_le_bytes(self.array("u32")?)),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.array("i32")?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.array("f32")?)),
            T::Bool => GgufValue::Bool(self.bool()?),
            T::String => GgufValue::String(self.string("string")?),
            T::Array => GgufValue::Array(self.array_value(1)?),
            T::U64 => GgufValue::U64(u64::from_le_bytes(self.array("u64")?)),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.array("i64")?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.array("f64")?)),
        })
    }

    /// `u32 element type`, `u64 count`, elements. `depth` is 1 for a top-level array.
    fn array_value(&mut self, depth: usize) -> Result<GgufArray, GgufError> {
        use GgufValueType as T;
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::Invalid {
                offset: self.offset(),
                why: format!(
                    "arrays nested more than {MAX_ARRAY_DEPTH} deep in {}",
                    self.context
                ),
            });
        }
        let elem = self.value_type("array element type")?;
        let count = self.u64("array count")?;
        // Each element takes at least `min` bytes: a count the remaining bytes cannot
        // hold is rejected before anything is allocated.
        let min = elem.min_encoded_len() as u64;
        match count.checked_mul(min) {
            Some(need) if need <= self.remaining() as u64 => {}
            other => {
                return Err(self.truncated(
                    &format!("array of {count} {elem} elements"),
                    other.unwrap_or(u64::MAX),
                ))
            }
        }
        let n = count as usize;
        macro_rules! fixed {
            ($variant:ident, $ty:ty) => {{
                const W: usize = std::mem::size_of::<$ty>();
                let raw = self.take((n * W) as u64, stringify!($ty))?;
                GgufArray::$variant(
                    raw.chunks_exact(W)
                        .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk of W bytes")))
                        .collect(),
                )
            }};
        }
        Ok(match elem {
            T::U8 => GgufArray::U8(self.take(count, "u8 array")?.to_vec()),
            T::I8 => fixed!(I8, i8),
            T::U16 => fixed!(U16, u16),
            T::I16 => fixed!(I16, i16),
            T::U32 => fixed!(U32, u32),
            T::I32 => fixed!(I32, i32),
            T::F32 => fixed!(F32, f32),
            T::U64 => fixed!(U64, u64),
            T::I64 => fixed!(I64, i64),
            T::F64 => fixed!(F64, f64),
            T::Bool => GgufArray::Bool((0..n).map(|_| self.bool()).collect::<Result<_, _>>()?),
            T::String => GgufArray::String(
                (0..n)
                    .map(|_| self.string("string element"))
                    .collect::<Result<_, _>>()?,
            ),
            T::Array => GgufArray::Array(
                (0..n)
                    .map(|_| self.array_value(depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

fn check_version(version: u32) -> Result<(), GgufError> {
    let why = match version {
        2 | 3 => return Ok(()),
        0 => "version 0 is not a GGUF version",
        1 => "GGUF v1 (32-bit counts) is no longer supported; re-convert the model",
        v if v & 0xFFFF == 0 => "looks byte-swapped: big-endian GGUF files are not supported",
        _ => "newer than version 3, the latest this reader knows",
    };
    Err(GgufError::UnsupportedVersion { version, why })
}

fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut cur = Cursor {
        bytes,
        pos: 0,
        context: "the header".to_owned(),
    };
    let magic = cur.take(4, "magic")?;
    if magic == super::GGUF_PARTIAL_MAGIC {
        return Err(GgufError::Unfinished);
    }
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = cur.u32("version")?;
    check_version(version)?;
    let n_tensors = cur.u64("tensor count")?;
    let n_kv = cur.u64("metadata KV count")?;

    // KV pairs.
    let mut metadata: Vec<(String, GgufValue)> = Vec::new();
    let mut key_offsets: HashMap<String, u64> = HashMap::new();
    for i in 0..n_kv {
        let kv_offset = cur.offset();
        cur.context = format!("metadata KV #{i}");
        let key = cur.string("key")?;
        if key.is_empty() {
            return Err(GgufError::Invalid {
                offset: kv_offset,
                why: format!("metadata KV #{i} has an empty key"),
            });
        }
        if key_offsets.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                offset: kv_offset,
                key,
            });
        }
        cur.context = format!("metadata key '{key}'");
        let t = cur.value_type("value type")?;
        let value = cur.value(t)?;
        key_offsets.insert(key.clone(), kv_offset);
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some((_, v)) => {
            let offset = key_offsets[KEY_ALIGNMENT];
            match v.as_u32() {
                Some(a) if a.is_power_of_two() => a,
                Some(a) => {
                    return Err(GgufError::Invalid {
                        offset,
                        why: format!("{KEY_ALIGNMENT} is {a}, not a power of two"),
                    })
                }
                None => {
                    return Err(GgufError::Invalid {
                        offset,
                        why: format!(
                            "{KEY_ALIGNMENT} must be a uint32 but is a {}",
                            v.value_type()
                        ),
                    })
                }
            }
        }
    };

    // Tensor infos.
    let mut tensors: Vec<GgufTensorInfo> = Vec::new();
    let mut info_offsets: Vec<u64> = Vec::new();
    let mut seen_names: HashMap<String, ()> = HashMap::new();
    for i in 0..n_tensors {
        let info_offset = cur.offset();
        cur.context = format!("tensor info #{i}");
        let name = cur.string("name")?;
        if name.len() >= GGML_MAX_NAME {
            return Err(GgufError::Invalid {
                offset: info_offset,
                why: format!(
                    "tensor name '{name}' is {} bytes; ggml allows at most {} (GGML_MAX_NAME = {GGML_MAX_NAME})",
                    name.len(),
                    GGML_MAX_NAME - 1
                ),
            });
        }
        if seen_names.insert(name.clone(), ()).is_some() {
            return Err(GgufError::DuplicateTensor {
                offset: info_offset,
                name,
            });
        }
        cur.context = format!("tensor '{name}'");
        let dims_offset = cur.offset();
        let n_dims = cur.u32("n_dims")?;
        if n_dims as usize > GGML_MAX_DIMS {
            return Err(GgufError::Invalid {
                offset: dims_offset,
                why: format!(
                    "tensor '{name}' has {n_dims} dimensions, at most {GGML_MAX_DIMS} allowed"
                ),
            });
        }
        let shape_ne = (0..n_dims)
            .map(|_| cur.u64("dimension"))
            .collect::<Result<Vec<u64>, _>>()?;
        let type_offset = cur.offset();
        let type_id = cur.u32("ggml type")?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
            offset: type_offset,
            tensor: name.clone(),
            type_id,
        })?;
        let n_bytes = tensor_nbytes(&shape_ne, ggml_type).map_err(|why| GgufError::Invalid {
            offset: dims_offset,
            why: format!("tensor '{name}': {why}"),
        })?;
        let offset = cur.u64("data offset")?;
        tensors.push(GgufTensorInfo {
            name,
            shape_ne,
            ggml_type,
            offset,
            n_bytes,
        });
        info_offsets.push(info_offset);
    }

    // Data section: starts at the next multiple of the alignment.
    let infos_end = cur.offset();
    let data_offset = align_up(infos_end, alignment.into()).ok_or_else(|| GgufError::Invalid {
        offset: infos_end,
        why: "data section offset overflows".into(),
    })?;
    let file_len = bytes.len() as u64;
    if !tensors.is_empty() && data_offset > file_len {
        cur.context = "the tensor-info table".into();
        return Err(cur.truncated("zero padding at the end", data_offset - infos_end));
    }
    let mut ranges: Vec<(u64, u64, usize)> = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let at = info_offsets[i];
        if t.offset % u64::from(alignment) != 0 {
            return Err(GgufError::Invalid {
                offset: at,
                why: format!(
                    "tensor '{}' data offset {} is not a multiple of the alignment {alignment}",
                    t.name, t.offset
                ),
            });
        }
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(GgufError::Invalid {
                    offset: at,
                    why: format!(
                        "tensor '{}' data ({} bytes at data offset {}) runs past the end of the file ({file_len} bytes, data section at {data_offset})",
                        t.name, t.n_bytes, t.offset
                    ),
                })
            }
        }
        if t.n_bytes > 0 {
            ranges.push((t.offset, t.offset + t.n_bytes, i));
        }
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let ((_, a_end, a), (b_start, _, b)) = (pair[0], pair[1]);
        if b_start < a_end {
            return Err(GgufError::Invalid {
                offset: info_offsets[b],
                why: format!(
                    "tensor '{}' data overlaps tensor '{}'",
                    tensors[b].name, tensors[a].name
                ),
            });
        }
    }

    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
