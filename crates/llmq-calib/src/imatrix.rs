//! llama.cpp importance matrices ("imatrix"): the per-input-column mean of squared
//! activations that `llama-quantize --imatrix` uses to weight its quantization error.
//!
//! Two on-disk formats, both as written by `tools/imatrix/imatrix.cpp` and read by
//! `common/imatrix-loader.cpp` of the llama.cpp vendored in llama-cpp-python 0.3.36:
//!
//! * **GGUF** (default since llama.cpp PR #9400): metadata `general.type = "imatrix"`,
//!   `imatrix.datasets` (string array), `imatrix.chunk_count` (u32) and
//!   `imatrix.chunk_size` (u32), in that order; then, for every weight in byte order of
//!   its name, two F32 tensors: `<name>.in_sum2` with `ne = [n_cols, n_mat]` holding the
//!   *raw* sums of squared activations (one row per expert for a 3-D MoE weight) and
//!   `<name>.counts` with `ne = [1, n_mat]` holding how many activation rows each expert
//!   saw. Trailing dimensions of size 1 are not stored (`ggml_n_dims`).
//! * **legacy `.dat`**: `i32 n_entries`, then per entry `i32 len`, name bytes, `i32 ncall`,
//!   `i32 nval`, `f32 values[nval]` where `values = sum2 / count * ncall` and
//!   `ncall = ceil(max(counts) / chunk_size)`; then optionally `i32 chunk_count`,
//!   `i32 len` and the dataset name. All little-endian.
//!
//! What llama-quantize gives the quantizer ([`ImatrixData::importance`]): for GGUF,
//! `sum2 / count` per expert, and 1.0 for experts that saw no token; for legacy files,
//! `values / ncall` (or `values` itself when `ncall` is 0).
//!
//! [`ImatrixCollector`] accumulates the sums the way `IMatrixCollector::collect_imatrix`
//! does: per tensor, `f32` running sums of `x[j]²` in token order, and counts of rows.

use llmq_formats::gguf::{
    GgufError, GgufFile, GgufPlan, GgufStreamWriter, GgufValue, PlannedTensor,
};
use llmq_formats::GgmlType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `imatrix.datasets`: the calibration files the data came from.
pub const KEY_DATASETS: &str = "imatrix.datasets";
/// `imatrix.chunk_count`: number of chunks (of `chunk_size` tokens) processed.
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
/// `imatrix.chunk_size`: tokens per chunk (`n_ctx / n_parallel`).
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
/// `general.type`, set to [`GENERAL_TYPE_IMATRIX`].
pub const KEY_GENERAL_TYPE: &str = "general.type";
/// The value of `general.type` in an imatrix file.
pub const GENERAL_TYPE_IMATRIX: &str = "imatrix";
/// Suffix of the tensor holding the sums of squared activations.
pub const SUFFIX_IN_SUM2: &str = ".in_sum2";
/// Suffix of the tensor holding the per-expert token counts.
pub const SUFFIX_COUNTS: &str = ".counts";

/// Errors reading, writing or accumulating an importance matrix.
#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    #[error("I/O error while {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("invalid imatrix file {path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("imatrix entry '{name}': {why}")]
    Entry { name: String, why: String },
    #[error("non-finite activation sums for '{name}' (llama-imatrix aborts here too)")]
    NonFinite { name: String },
}

/// One weight's accumulated statistics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImatrixEntry {
    /// `[n_mat][n_cols]` flattened: sum over activation rows of `x[j]²`, per expert.
    /// For data read from a legacy `.dat` file these are the stored (already
    /// normalised and multiplied by `ncall`) values.
    pub sum2: Vec<f32>,
    /// Rows accumulated per expert (`n_mat` values; 1 for a dense weight). For legacy
    /// data, the single `ncall`.
    pub counts: Vec<u64>,
}

impl ImatrixEntry {
    /// An empty entry for `n_mat` matrices (experts) of `n_cols` columns.
    pub fn zeros(n_mat: usize, n_cols: usize) -> Self {
        ImatrixEntry {
            sum2: vec![0.0; n_mat * n_cols],
            counts: vec![0; n_mat],
        }
    }

    /// Adds the column sums `sq` (from [`add_squares`]) of `rows` activation rows seen
    /// by matrix `mat`.
    pub fn add_sums(&mut self, mat: usize, sq: &[f32], rows: u64) {
        let n = sq.len();
        self.sum2[mat * n..(mat + 1) * n]
            .iter_mut()
            .zip(sq)
            .for_each(|(s, v)| *s += v);
        self.counts[mat] += rows;
    }

    /// Number of matrices (experts) this entry covers.
    pub fn n_mat(&self) -> usize {
        self.counts.len()
    }

    /// Input columns per matrix (`sum2.len() / n_mat`), 0 if empty.
    pub fn n_cols(&self) -> usize {
        self.sum2.len().checked_div(self.counts.len()).unwrap_or(0)
    }
}

/// The contents of an imatrix file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImatrixData {
    /// Per weight name (e.g. `blk.0.attn_q.weight`), in byte order of the name, which
    /// is the order llama.cpp writes them in.
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// Calibration data sets the statistics came from.
    pub datasets: Vec<String>,
    /// Chunks processed.
    pub chunk_count: u32,
    /// Tokens per chunk (0 for legacy files, which do not record it).
    pub chunk_size: u32,
    /// Read from a legacy `.dat` file: `sum2` is normalised and `counts` is `[ncall]`.
    pub legacy: bool,
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> ImatrixError {
    let path = path.to_path_buf();
    move |source| ImatrixError::Io {
        path,
        action,
        source,
    }
}

impl ImatrixData {
    /// The importance weights llama-quantize passes to the quantizer for `name`
    /// (`n_mat * n_cols` values, expert-major), or `None` if there is no entry.
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if self.legacy {
            let ncall = e.counts.first().copied().unwrap_or(0);
            return Some(if ncall > 0 {
                e.sum2.iter().map(|&s| s / ncall as f32).collect()
            } else {
                e.sum2.clone()
            });
        }
        let n_cols = e.n_cols();
        let mut out = vec![0.0f32; e.sum2.len()];
        for (j, &c) in e.counts.iter().enumerate() {
            let count = c as f32;
            let (src, dst) = (
                &e.sum2[j * n_cols..(j + 1) * n_cols],
                &mut out[j * n_cols..(j + 1) * n_cols],
            );
            if count > 0.0 {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s / count;
                }
            } else {
                dst.fill(1.0);
            }
        }
        Some(out)
    }

    /// Read either format: GGUF when the file starts with `"GGUF"`, legacy otherwise
    /// (the order llama.cpp's loader tries them in).
    pub fn read(path: impl AsRef<Path>) -> Result<ImatrixData, ImatrixError> {
        let path = path.as_ref();
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(io_err(path, "opening"))?;
            let n = f.read(&mut magic).map_err(io_err(path, "reading"))?;
            if n < 4 {
                magic = [0; 4];
            }
        }
        if &magic == b"GGUF" {
            Self::read_gguf(path)
        } else {
            let bytes = std::fs::read(path).map_err(io_err(path, "reading"))?;
            Self::from_legacy_bytes(&bytes).map_err(|why| ImatrixError::Invalid {
                path: path.to_path_buf(),
                why,
            })
        }
    }

    /// Read a GGUF imatrix file.
    pub fn read_gguf(path: impl AsRef<Path>) -> Result<ImatrixData, ImatrixError> {
        let path = path.as_ref();
        let file = GgufFile::open(path)?;
        Self::from_gguf(&file).map_err(|why| ImatrixError::Invalid {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Decode an opened GGUF imatrix file.
    pub fn from_gguf(file: &GgufFile) -> Result<ImatrixData, String> {
        if file.tensors().is_empty() {
            return Err("no tensors (llama.cpp: \"no data in file\")".into());
        }
        let mut data = ImatrixData::default();
        if let Some(v) = file.get(KEY_DATASETS) {
            if let Some(list) = v.as_string_array() {
                data.datasets = list.to_vec();
            }
        }
        let u32_key = |k: &str| -> Result<u32, String> {
            match file.get(k) {
                None => Ok(0),
                Some(v) => v
                    .as_u32()
                    .ok_or_else(|| format!("{k} is {:?}, expected a u32", v.value_type())),
            }
        };
        data.chunk_count = u32_key(KEY_CHUNK_COUNT)?;
        data.chunk_size = u32_key(KEY_CHUNK_SIZE)?;

        type Pair<'a> = (
            Option<&'a llmq_formats::gguf::GgufTensorInfo>,
            Option<&'a llmq_formats::gguf::GgufTensorInfo>,
        );
        let mut pairs: BTreeMap<&str, Pair> = BTreeMap::new();
        for t in file.tensors() {
            if let Some(base) = t.name.strip_suffix(SUFFIX_IN_SUM2) {
                pairs.entry(base).or_default().0 = Some(t);
            } else if let Some(base) = t.name.strip_suffix(SUFFIX_COUNTS) {
                pairs.entry(base).or_default().1 = Some(t);
            }
        }
        for (name, pair) in pairs {
            let (Some(s), Some(c)) = pair else {
                return Err(format!("mismatched sums and counts for {name}"));
            };
            if s.ggml_type != GgmlType::F32 || c.ggml_type != GgmlType::F32 {
                return Err(format!("sums and counts for {name} must be F32"));
            }
            let sum2 = f32s(file.tensor_bytes(s));
            let counts_f = f32s(file.tensor_bytes(c));
            let mut counts = Vec::with_capacity(counts_f.len());
            for &cf in &counts_f {
                // llama.cpp: std::lround(count)
                if !cf.is_finite() || cf < -0.5 {
                    return Err(format!("{name}.counts holds {cf}, not a token count"));
                }
                counts.push(cf.round() as u64);
            }
            if counts.is_empty() || !sum2.len().is_multiple_of(counts.len()) {
                return Err(format!(
                    "{name}: {} sums do not split into {} matrices",
                    sum2.len(),
                    counts.len()
                ));
            }
            data.entries
                .insert(name.to_string(), ImatrixEntry { sum2, counts });
        }
        Ok(data)
    }

    /// Decode a legacy `.dat` imatrix.
    pub fn from_legacy_bytes(bytes: &[u8]) -> Result<ImatrixData, String> {
        let mut r = Cursor { b: bytes, pos: 0 };
        let n_entries = r.i32("entry count")?;
        if n_entries < 1 {
            return Err("no data in file (entry count < 1)".into());
        }
        let mut data = ImatrixData {
            legacy: true,
            ..Default::default()
        };
        for i in 0..n_entries {
            let len = r.i32("name length")?;
            let len = usize::try_from(len).map_err(|_| format!("entry {i}: name length {len}"))?;
            let name = r.take(len, "name")?;
            // llama.cpp builds a C string, so a name stops at its first NUL
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| format!("entry {i}: name is not UTF-8"))?;
            let ncall = r.i32("ncall")?;
            let nval = r.i32("value count")?;
            if nval < 1 {
                return Err(format!("entry {i} ('{name}'): value count {nval} < 1"));
            }
            let raw = r.take(nval as usize * 4, "values")?;
            let ncall = u64::try_from(ncall)
                .map_err(|_| format!("entry {i} ('{name}'): negative ncall {ncall}"))?;
            data.entries.insert(
                name,
                ImatrixEntry {
                    sum2: f32s(raw),
                    counts: vec![ncall],
                },
            );
        }
        if r.pos < bytes.len() {
            if let Ok(n) = r.i32("chunk count") {
                data.chunk_count = n.max(0) as u32;
                if let Ok(len) = r.i32("dataset length") {
                    if len > 0 {
                        if let Ok(ds) = r.take(len as usize, "dataset") {
                            let ds = ds.split(|&b| b == 0).next().unwrap_or(&[]);
                            data.datasets.push(String::from_utf8_lossy(ds).into_owned());
                        }
                    }
                }
            }
        }
        Ok(data)
    }

    /// Normalised to the raw (GGUF) representation: legacy data becomes
    /// `sum2 = values`, `counts = [max(ncall, 1)]`, which gives the same
    /// [`importance`](Self::importance).
    fn raw_entries(&self) -> BTreeMap<String, ImatrixEntry> {
        if !self.legacy {
            return self.entries.clone();
        }
        self.entries
            .iter()
            .map(|(k, e)| {
                let ncall = e.counts.first().copied().unwrap_or(0).max(1);
                let counts = vec![ncall; 1];
                (
                    k.clone(),
                    ImatrixEntry {
                        sum2: e.sum2.clone(),
                        counts,
                    },
                )
            })
            .collect()
    }

    /// The GGUF plan and tensor bytes, exactly as `IMatrixCollector::save_imatrix` lays
    /// them out.
    pub fn gguf_plan(&self) -> Result<(GgufPlan, Vec<Vec<u8>>), ImatrixError> {
        let mut plan = GgufPlan::new()
            .with_kv(KEY_GENERAL_TYPE, GENERAL_TYPE_IMATRIX)
            .with_kv(KEY_DATASETS, GgufValue::string_array(self.datasets.clone()))
            .with_kv(KEY_CHUNK_COUNT, self.chunk_count)
            .with_kv(KEY_CHUNK_SIZE, self.chunk_size);
        let mut blobs = Vec::new();
        for (name, e) in self.raw_entries() {
            let (nval, nmat) = (e.sum2.len(), e.counts.len());
            if nval == 0 || nmat == 0 {
                continue;
            }
            if nval % nmat != 0 {
                return Err(ImatrixError::Entry {
                    name,
                    why: format!("{nval} sums do not split into {nmat} matrices"),
                });
            }
            // ggml_n_dims drops trailing dimensions of size 1
            let trim = |ne: Vec<u64>| -> Vec<u64> {
                if ne[1] == 1 {
                    vec![ne[0]]
                } else {
                    ne
                }
            };
            plan = plan
                .with_tensor(PlannedTensor::new(
                    format!("{name}{SUFFIX_IN_SUM2}"),
                    trim(vec![(nval / nmat) as u64, nmat as u64]),
                    GgmlType::F32,
                ))
                .with_tensor(PlannedTensor::new(
                    format!("{name}{SUFFIX_COUNTS}"),
                    trim(vec![1, nmat as u64]),
                    GgmlType::F32,
                ));
            blobs.push(f32_bytes(&e.sum2));
            let counts: Vec<f32> = e.counts.iter().map(|&c| c as f32).collect();
            blobs.push(f32_bytes(&counts));
        }
        Ok((plan, blobs))
    }

    /// Write the GGUF format (crash-safe: `<path>.tmp`, then rename).
    pub fn write_gguf(&self, path: impl AsRef<Path>) -> Result<(), ImatrixError> {
        let (plan, blobs) = self.gguf_plan()?;
        if plan.tensors.is_empty() {
            return Err(ImatrixError::Entry {
                name: String::new(),
                why: "nothing to write: no entry has data".into(),
            });
        }
        let w = GgufStreamWriter::create(path.as_ref(), &plan)?;
        for (i, b) in blobs.iter().enumerate() {
            w.write_tensor(i, b)?;
        }
        w.finish()?;
        Ok(())
    }

    /// The legacy `.dat` bytes as `IMatrixCollector::save_imatrix_legacy` writes them.
    /// Entries whose counts are all zero are skipped; experts with no data get 1.0.
    pub fn to_legacy_bytes(&self) -> Result<Vec<u8>, ImatrixError> {
        let mut stored: Vec<(&String, i32, Vec<f32>)> = Vec::new();
        for (name, e) in &self.entries {
            if e.counts.is_empty() || (!self.legacy && e.counts.iter().all(|&c| c == 0)) {
                continue;
            }
            let entry_err = |why: String| ImatrixError::Entry {
                name: name.clone(),
                why,
            };
            if self.legacy {
                let ncall = i32::try_from(e.counts[0]).map_err(|_| entry_err("ncall".into()))?;
                stored.push((name, ncall, e.sum2.clone()));
                continue;
            }
            if self.chunk_size == 0 {
                return Err(entry_err("chunk_size is 0: cannot compute ncall".into()));
            }
            let (nval, nmat) = (e.sum2.len(), e.counts.len());
            if nval == 0 || nval % nmat != 0 {
                return Err(entry_err(format!("{nval} sums for {nmat} matrices")));
            }
            let max = *e.counts.iter().max().unwrap_or(&0);
            let cs = self.chunk_size as u64;
            let ncall = i32::try_from(max.div_ceil(cs))
                .map_err(|_| entry_err(format!("count {max} too large")))?;
            let per = nval / nmat;
            let tmp = e
                .sum2
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let mut count = e.counts[i / per] as f32;
                    let mut value = v;
                    if count == 0.0 {
                        value = 1.0;
                        count = 1.0;
                    }
                    (value / count) * ncall as f32
                })
                .collect();
            stored.push((name, ncall, tmp));
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(stored.len() as i32).to_le_bytes());
        for (name, ncall, vals) in stored {
            out.extend_from_slice(&(name.len() as i32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&ncall.to_le_bytes());
            out.extend_from_slice(&(vals.len() as i32).to_le_bytes());
            out.extend_from_slice(&f32_bytes(&vals));
        }
        out.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let ds = self.datasets.last().map(String::as_str).unwrap_or("");
        out.extend_from_slice(&(ds.len() as i32).to_le_bytes());
        out.extend_from_slice(ds.as_bytes());
        Ok(out)
    }

    /// Write the legacy `.dat` format (via `<path>.tmp` and a rename).
    pub fn write_legacy(&self, path: impl AsRef<Path>) -> Result<(), ImatrixError> {
        let path = path.as_ref();
        let bytes = self.to_legacy_bytes()?;
        let tmp = llmq_formats::gguf::temp_path_for(path);
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp, "writing"))?;
        std::fs::rename(&tmp, path).map_err(io_err(path, "renaming into"))?;
        Ok(())
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated at offset {}: {what} needs {n} bytes, {} remain",
                self.pos,
                self.b.len() - self.pos
            ));
        };
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        let s = self.take(4, what)?;
        Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `acc[j] += x[t][j]²` for every row `t` of `x` (`[n_rows, acc.len()]`, row-major),
/// row by row in f32 as llama.cpp's `collect_imatrix` adds them: the one Σx² kernel of
/// every importance collector, so their sums agree to the bit.
pub fn add_squares(acc: &mut [f32], x: &[f32]) {
    for row in x.chunks_exact(acc.len()) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v * v;
        }
    }
}

/// Accumulates activation statistics as llama.cpp's `IMatrixCollector` does.
#[derive(Debug, Clone)]
pub struct ImatrixCollector {
    chunk_size: u32,
    datasets: Vec<String>,
    stats: BTreeMap<String, (Vec<f32>, Vec<u64>)>,
}

impl ImatrixCollector {
    /// `chunk_size` is the context length per sequence (`n_ctx / n_parallel`);
    /// `datasets` names the calibration data.
    pub fn new(chunk_size: u32, datasets: Vec<String>) -> Self {
        ImatrixCollector {
            chunk_size,
            datasets,
            stats: BTreeMap::new(),
        }
    }

    /// Input activations `x` (`[n_tokens, n_cols]`, row-major) of the dense weight
    /// `name` (a `MUL_MAT`): `sum2[j] += x[t][j]²` in token order (f32, as llama.cpp)
    /// and `count += n_tokens`.
    pub fn add(&mut self, name: &str, x: &[f32], n_cols: usize) -> Result<(), ImatrixError> {
        let bad = |why: String| ImatrixError::Entry {
            name: name.to_string(),
            why,
        };
        if n_cols == 0 || !x.len().is_multiple_of(n_cols) {
            return Err(bad(format!("{} activations for {n_cols} columns", x.len())));
        }
        let n_tokens = x.len() / n_cols;
        let e = self.stats.entry(name.to_string()).or_default();
        // a single count per dense tensor (llama.cpp collapses equal counts)
        if e.1.len() > 1 && e.1.iter().all(|&c| c == e.1[0]) {
            e.1.truncate(1);
        }
        if e.0.is_empty() {
            e.0 = vec![0.0; n_cols];
            e.1 = vec![0];
        } else if e.0.len() != n_cols {
            return Err(bad(format!(
                "inconsistent size ({} vs {n_cols})",
                e.0.len()
            )));
        }
        add_squares(&mut e.0, x);
        if !e.0.iter().all(|v| v.is_finite()) {
            return Err(ImatrixError::NonFinite {
                name: name.to_string(),
            });
        }
        for c in e.1.iter_mut() {
            *c += n_tokens as u64;
        }
        Ok(())
    }

    /// Activations routed to experts of the 3-D weight `name` (a `MUL_MAT_ID`), as
    /// llama.cpp sees them: `ids` is `[n_tokens, n_used]` (expert of each slot), `x` is
    /// `[n_tokens, n_x, n_cols]` with `n_x` either `n_used` or 1 (broadcast). Loops slot
    /// by slot, then token by token, like `collect_imatrix`, so the f32 sums match.
    pub fn add_routed(
        &mut self,
        name: &str,
        n_experts: usize,
        x: &[f32],
        n_cols: usize,
        ids: &[i32],
        n_used: usize,
    ) -> Result<(), ImatrixError> {
        let bad = |why: String| ImatrixError::Entry {
            name: name.to_string(),
            why,
        };
        if n_cols == 0 || n_used == 0 || !ids.len().is_multiple_of(n_used) {
            return Err(bad("empty shape or ids not [n_tokens, n_used]".into()));
        }
        let n_tokens = ids.len() / n_used;
        let n_x = if n_tokens == 0 {
            1
        } else {
            x.len() / (n_tokens * n_cols)
        };
        if x.len() != n_tokens * n_x * n_cols || !(n_x == 1 || n_x == n_used) {
            return Err(bad(format!(
                "{} activations do not fit [{n_tokens}, 1 or {n_used}, {n_cols}]",
                x.len()
            )));
        }
        let e = self.stats.entry(name.to_string()).or_default();
        if e.1.len() == 1 && n_experts > 1 {
            let c = e.1[0];
            e.1.resize(n_experts, c);
        }
        if e.0.is_empty() {
            e.0 = vec![0.0; n_cols * n_experts];
            e.1 = vec![0; n_experts];
        } else if e.0.len() != n_cols * n_experts || e.1.len() != n_experts {
            return Err(bad(format!(
                "inconsistent size ({} sums, {} experts) vs {n_cols} x {n_experts}",
                e.0.len(),
                e.1.len()
            )));
        }
        let mut touched = vec![false; n_experts];
        for idx in 0..n_used {
            for row in 0..n_tokens {
                let ex = ids[row * n_used + idx];
                if ex < 0 || ex as usize >= n_experts {
                    return Err(bad(format!("expert id {ex} outside 0..{n_experts}")));
                }
                let ex = ex as usize;
                let i11 = idx % n_x;
                let xr = &x[(row * n_x + i11) * n_cols..][..n_cols];
                let acc = &mut e.0[ex * n_cols..(ex + 1) * n_cols];
                e.1[ex] += 1;
                touched[ex] = true;
                add_squares(acc, xr);
            }
        }
        for (ex, _) in touched.iter().enumerate().filter(|(_, &t)| t) {
            if !e.0[ex * n_cols..(ex + 1) * n_cols]
                .iter()
                .all(|v| v.is_finite())
            {
                return Err(ImatrixError::NonFinite {
                    name: name.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The accumulated data; `chunk_count` is the largest count over `chunk_size`
    /// (llama.cpp's `m_last_chunk`).
    pub fn finish(self) -> ImatrixData {
        let max = self
            .stats
            .values()
            .flat_map(|(_, c)| c.iter().copied())
            .max()
            .unwrap_or(0);
        let chunk_count = max.checked_div(self.chunk_size as u64).unwrap_or(0) as u32;
        ImatrixData {
            entries: self
                .stats
                .into_iter()
                .map(|(k, (sum2, counts))| (k, ImatrixEntry { sum2, counts }))
                .collect(),
            datasets: self.datasets,
            chunk_count,
            chunk_size: self.chunk_size,
            legacy: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImatrixData {
        let mut c = ImatrixCollector::new(4, vec!["calib.txt".into()]);
        let x: Vec<f32> = (0..8 * 3).map(|i| (i as f32 - 7.0) * 0.25).collect();
        c.add("blk.0.attn_q.weight", &x, 3).unwrap();
        // 2 tokens, 2 slots, 4 experts: expert 3 never used
        let xr: Vec<f32> = (0..2 * 2 * 3).map(|i| i as f32 * 0.5).collect();
        c.add_routed("blk.0.ffn_up_exps.weight", 4, &xr, 3, &[0, 1, 1, 2], 2)
            .unwrap();
        c.finish()
    }

    #[test]
    fn collector_sums_and_counts() {
        let d = sample();
        let q = &d.entries["blk.0.attn_q.weight"];
        assert_eq!(q.counts, vec![8]);
        let want0: f32 = (0..8)
            .map(|t| ((t * 3) as f32 - 7.0) * 0.25)
            .map(|v| v * v)
            .sum();
        assert_eq!(q.sum2[0], want0);
        let e = &d.entries["blk.0.ffn_up_exps.weight"];
        assert_eq!(e.counts, vec![1, 2, 1, 0]);
        // expert 0 got token 0 slot 0: x[0,0,:] = 0, 0.5, 1
        assert_eq!(&e.sum2[0..3], &[0.0, 0.25, 1.0]);
        assert_eq!(d.chunk_count, 2); // max count 8 / chunk 4
        let imp = d.importance("blk.0.ffn_up_exps.weight").unwrap();
        assert_eq!(&imp[9..12], &[1.0, 1.0, 1.0]); // unseen expert
        assert_eq!(imp[1], 0.25);
    }

    #[test]
    fn gguf_round_trip() {
        let d = sample();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.gguf");
        d.write_gguf(&p).unwrap();
        let back = ImatrixData::read(&p).unwrap();
        assert_eq!(back, d);
        let f = GgufFile::open(&p).unwrap();
        let t = f.tensor("blk.0.ffn_up_exps.weight.in_sum2").unwrap();
        assert_eq!(t.shape_ne, vec![3, 4]);
        let t = f.tensor("blk.0.attn_q.weight.counts").unwrap();
        assert_eq!(t.shape_ne, vec![1]);
    }

    #[test]
    fn legacy_round_trip_keeps_importance() {
        let d = sample();
        let bytes = d.to_legacy_bytes().unwrap();
        let back = ImatrixData::from_legacy_bytes(&bytes).unwrap();
        assert!(back.legacy);
        assert_eq!(back.chunk_count, 2);
        assert_eq!(back.datasets, vec!["calib.txt".to_string()]);
        for name in d.entries.keys() {
            let a = d.importance(name).unwrap();
            let b = back.importance(name).unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                    "{name}: {x} vs {y}"
                );
            }
        }
        // legacy → legacy is byte-exact
        assert_eq!(back.to_legacy_bytes().unwrap(), bytes);
        // legacy → GGUF keeps the importance
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.gguf");
        back.write_gguf(&p).unwrap();
        let g = ImatrixData::read(&p).unwrap();
        for name in d.entries.keys() {
            assert_eq!(g.importance(name), back.importance(name));
        }
    }

    #[test]
    fn hostile_legacy_input_is_an_error() {
        assert!(ImatrixData::from_legacy_bytes(&[]).is_err());
        assert!(ImatrixData::from_legacy_bytes(&1i32.to_le_bytes()).is_err());
        let mut b = 1i32.to_le_bytes().to_vec();
        b.extend_from_slice(&i32::MAX.to_le_bytes());
        assert!(ImatrixData::from_legacy_bytes(&b).is_err());
    }

    #[test]
    fn non_finite_activations_are_rejected() {
        let mut c = ImatrixCollector::new(4, vec![]);
        let err = c.add("blk.0.x.weight", &[f32::NAN, 1.0], 2).unwrap_err();
        assert!(matches!(err, ImatrixError::NonFinite { .. }));
    }
}
