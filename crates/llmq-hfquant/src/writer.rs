//! Sharded safetensors output in the Hugging Face layout.
//!
//! Format (safetensors `README.md`, "Format"): 8-byte little-endian header length
//! `N`, `N` bytes of JSON header `{name: {"dtype", "shape", "data_offsets": [begin,
//! end]}, "__metadata__": {"format": "pt"}}` padded with spaces to a multiple of 8,
//! then the data. transformers wants `__metadata__.format == "pt"`.
//!
//! Sharding follows transformers' `save_pretrained` / huggingface_hub
//! `split_state_dict_into_shards`: shards are filled in order until the next tensor
//! would pass `max_shard_size` (default "5GB" = 5·10⁹ bytes; a tensor larger than
//! that gets a shard of its own); one shard is `model.safetensors`, several are
//! `model-00001-of-0000N.safetensors` plus `model.safetensors.index.json` with
//! `{"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}`. Each shard
//! is written under a hidden temporary name and renamed once every shard is
//! complete (the final names need N). A tensor's bytes may also be given as a range
//! of a file ([`ShardedWriter::add_file_range`]), copied when its shard is written,
//! so a large output need not be held in memory.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::io_err;
use crate::{Dtype, Error, HfTensor, Result};

/// transformers' default `max_shard_size`, "5GB".
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Parses a size like `"5GB"`, `"500MB"`, `"2GiB"`, `"1.5GB"` or a plain byte count
/// (units as transformers' `convert_file_size_to_int`: KB/MB/GB decimal, KiB/MiB/GiB
/// binary, `B` optional).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let units: [(&str, f64); 8] = [
        ("KIB", 1024.0),
        ("MIB", 1024.0 * 1024.0),
        ("GIB", 1024.0 * 1024.0 * 1024.0),
        ("TIB", 1024f64.powi(4)),
        ("KB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("TB", 1e12),
    ];
    let (num, mult) = units
        .iter()
        .find(|(u, _)| upper.ends_with(u))
        .map(|(u, m)| (&t[..t.len() - u.len()], *m))
        .unwrap_or_else(|| (t.strip_suffix(['b', 'B']).unwrap_or(t), 1.0));
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("not a size: {s:?}")))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::Invalid(format!("not a positive size: {s:?}")));
    }
    Ok((v * mult) as u64)
}

struct Shard {
    tmp: PathBuf,
    names: Vec<String>,
}

/// What [`ShardedWriter::finish`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteSummary {
    /// shard files, in order
    pub files: Vec<PathBuf>,
    /// `model.safetensors.index.json` when there is more than one shard
    pub index: Option<PathBuf>,
    /// bytes of tensor data (the index's `total_size`)
    pub total_bytes: u64,
    pub n_tensors: usize,
}

/// A tensor waiting for its shard: its bytes, or where to read them.
struct Pending {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Data,
}

enum Data {
    Bytes(Vec<u8>),
    /// `len` bytes of `path` from `offset`
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::File { len, .. } => *len,
        }
    }
}

/// Collects tensors and writes them as `model*.safetensors` in `dir`.
pub struct ShardedWriter {
    dir: PathBuf,
    max_shard_bytes: u64,
    pending: Vec<(String, Pending)>,
    pending_bytes: u64,
    shards: Vec<Shard>,
    names: HashSet<String>,
    total_bytes: u64,
    finished: bool,
}

impl ShardedWriter {
    /// Creates `dir` if needed.
    pub fn new(dir: impl Into<PathBuf>, max_shard_bytes: u64) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(ShardedWriter {
            dir,
            max_shard_bytes: max_shard_bytes.max(1),
            pending: Vec::new(),
            pending_bytes: 0,
            shards: Vec::new(),
            names: HashSet::new(),
            total_bytes: 0,
            finished: false,
        })
    }

    /// Adds a tensor; writes the current shard first when this one would not fit.
    pub fn add(&mut self, name: impl Into<String>, tensor: HfTensor) -> Result<()> {
        let name = name.into();
        if tensor.data.len() != tensor.numel() * tensor.dtype.size() {
            return Err(Error::Invalid(format!(
                "tensor {name}: bytes do not match shape"
            )));
        }
        self.push(
            name,
            Pending {
                dtype: tensor.dtype,
                shape: tensor.shape,
                data: Data::Bytes(tensor.data),
            },
        )
    }

    /// Adds a tensor whose bytes are read from `path` at `offset` (as many as `shape`
    /// and `dtype` need) when its shard is written; the same shards and bytes as
    /// [`Self::add`] with those bytes.
    pub fn add_file_range(
        &mut self,
        name: impl Into<String>,
        dtype: Dtype,
        shape: &[usize],
        path: &Path,
        offset: u64,
    ) -> Result<()> {
        let len = (shape.iter().product::<usize>() * dtype.size()) as u64;
        self.push(
            name.into(),
            Pending {
                dtype,
                shape: shape.to_vec(),
                data: Data::File {
                    path: path.to_path_buf(),
                    offset,
                    len,
                },
            },
        )
    }

    fn push(&mut self, name: String, tensor: Pending) -> Result<()> {
        if !self.names.insert(name.clone()) {
            return Err(Error::Invalid(format!("tensor {name} added twice")));
        }
        let size = tensor.data.len();
        if !self.pending.is_empty() && self.pending_bytes + size > self.max_shard_bytes {
            self.flush()?;
        }
        self.pending_bytes += size;
        self.total_bytes += size;
        self.pending.push((name, tensor));
        Ok(())
    }

    /// Adds several `(name, tensor)` pairs.
    pub fn add_all(&mut self, tensors: impl IntoIterator<Item = (String, HfTensor)>) -> Result<()> {
        for (n, t) in tensors {
            self.add(n, t)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let idx = self.shards.len() + 1;
        let tmp = self
            .dir
            .join(format!(".model-shard-{idx:05}.safetensors.tmp"));
        let mut tensors = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        write_pending(&tmp, &tensors)?;
        self.shards.push(Shard {
            tmp,
            names: tensors.into_iter().map(|(n, _)| n).collect(),
        });
        Ok(())
    }

    /// Writes the last shard, renames all shards to their final names, writes the
    /// index when there are several, and removes `model*.safetensors` files of an
    /// earlier run that are not part of this one.
    pub fn finish(mut self) -> Result<WriteSummary> {
        self.flush()?;
        let n = self.shards.len();
        let names: Vec<String> = if n <= 1 {
            vec!["model.safetensors".to_string()]
        } else {
            (1..=n)
                .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
                .collect()
        };
        if n == 0 {
            // no tensors: still an (empty) valid file
            let tmp = self.dir.join(".model-shard-00001.safetensors.tmp");
            write_safetensors(&tmp, &[])?;
            self.shards.push(Shard {
                tmp,
                names: Vec::new(),
            });
        }
        let index_path = self.dir.join("model.safetensors.index.json");
        remove_stale_outputs(&self.dir, &names)?;
        let mut files = Vec::new();
        let mut weight_map = BTreeMap::new();
        for (shard, fname) in self.shards.iter().zip(&names) {
            let dst = self.dir.join(fname);
            fs::rename(&shard.tmp, &dst).map_err(io_err(&dst))?;
            for t in &shard.names {
                weight_map.insert(t.clone(), fname.clone());
            }
            files.push(dst);
        }
        self.finished = true;
        let index = if n > 1 {
            let v = json!({
                "metadata": {"total_size": self.total_bytes},
                "weight_map": weight_map,
            });
            write_json(&index_path, &v)?;
            Some(index_path)
        } else {
            None
        };
        Ok(WriteSummary {
            files,
            index,
            total_bytes: self.total_bytes,
            n_tensors: self.names.len(),
        })
    }
}

impl Drop for ShardedWriter {
    fn drop(&mut self) {
        if !self.finished {
            for s in &self.shards {
                let _ = fs::remove_file(&s.tmp);
            }
        }
    }
}

fn is_model_shard_name(name: &str) -> bool {
    if name == "model.safetensors" || name == "model.safetensors.index.json" {
        return true;
    }
    // model-00001-of-00002.safetensors
    let Some(mid) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let parts: Vec<&str> = mid.split("-of-").collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn remove_stale_outputs(dir: &Path, keep: &[String]) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(io_err(dir))?;
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_model_shard_name(&name) && !keep.contains(&name) {
            fs::remove_file(e.path()).map_err(io_err(e.path()))?;
        }
    }
    Ok(())
}

/// Writes one safetensors file with `__metadata__ = {"format": "pt"}`, tensors laid
/// out in the given order.
pub fn write_safetensors(path: &Path, tensors: &[(String, HfTensor)]) -> Result<()> {
    let entries: Vec<(&str, Dtype, &[usize], DataRef<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.as_str(),
                t.dtype,
                t.shape.as_slice(),
                DataRef::Bytes(&t.data),
            )
        })
        .collect();
    write_entries(path, &entries)
}

fn write_pending(path: &Path, tensors: &[(String, Pending)]) -> Result<()> {
    let entries: Vec<(&str, Dtype, &[usize], DataRef<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            let data = match &t.data {
                Data::Bytes(b) => DataRef::Bytes(b),
                Data::File { path, offset, len } => DataRef::File(path, *offset, *len),
            };
            (n.as_str(), t.dtype, t.shape.as_slice(), data)
        })
        .collect();
    write_entries(path, &entries)
}

enum DataRef<'a> {
    Bytes(&'a [u8]),
    File(&'a Path, u64, u64),
}

impl DataRef<'_> {
    fn len(&self) -> usize {
        match self {
            DataRef::Bytes(b) => b.len(),
            DataRef::File(_, _, len) => *len as usize,
        }
    }
}

fn write_entries(path: &Path, tensors: &[(&str, Dtype, &[usize], DataRef<'_>)]) -> Result<()> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.to_string(),
            json!({
                "dtype": dtype.safetensors_name(),
                "shape": shape,
                "data_offsets": [off, off + data.len()],
            }),
        );
        off += data.len();
    }
    let mut hbytes = serde_json::to_vec(&Value::Object(header)).expect("serializable header");
    while !hbytes.len().is_multiple_of(8) {
        hbytes.push(b' ');
    }
    let f = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let res = (|| {
        w.write_all(&(hbytes.len() as u64).to_le_bytes())?;
        w.write_all(&hbytes)?;
        for (_, _, _, data) in tensors {
            match data {
                DataRef::Bytes(b) => w.write_all(b)?,
                DataRef::File(src, offset, len) => copy_range(src, *offset, *len, &mut w)?,
            }
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    })();
    res.map_err(io_err(path))
}

/// Copies `len` bytes of `src` from `offset` into `w` (read, not mapped: the copy adds
/// nothing to the resident set beyond the buffers).
fn copy_range(src: &Path, offset: u64, len: u64, w: &mut impl Write) -> std::io::Result<()> {
    let mut f = File::open(src)?;
    f.seek(SeekFrom::Start(offset))?;
    let copied = std::io::copy(&mut f.take(len), w)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} ends before byte {}", src.display(), offset + len),
        ));
    }
    Ok(())
}

/// Writes pretty JSON through a temporary file and a rename.
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).expect("serializable");
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let fname = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{fname}.tmp"));
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// `config` with `quantization_config` set (replacing any earlier one).
pub fn config_with_quantization(mut config: Value, quantization_config: &Value) -> Result<Value> {
    let obj = config
        .as_object_mut()
        .ok_or_else(|| Error::Invalid("config.json is not a JSON object".into()))?;
    obj.insert("quantization_config".into(), quantization_config.clone());
    Ok(config)
}

/// Files besides the weights that a quantized folder carries over from the source:
/// tokenizer files, chat templates and `generation_config.json`.
pub fn is_aux_model_file(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "generation_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "tekken.json",
        "preprocessor_config.json",
        "processor_config.json",
    ];
    EXACT.contains(&name)
        || name.starts_with("tokenizer")
        || name.starts_with("chat_template")
        || name.ends_with(".tiktoken")
}

/// Writes `dst/config.json` (the source's with `quantization_config` inserted) and
/// copies the tokenizer files and `generation_config.json` from `src`. Returns the
/// files written.
pub fn copy_model_files(
    src: &Path,
    dst: &Path,
    quantization_config: &Value,
) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dst).map_err(io_err(dst))?;
    let cfg_path = src.join("config.json");
    let text = fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let config: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: cfg_path.clone(),
        source,
    })?;
    let out_cfg = dst.join("config.json");
    write_json(
        &out_cfg,
        &config_with_quantization(config, quantization_config)?,
    )?;
    let mut written = vec![out_cfg];
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err(src))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = e
            .file_type()
            .map(|t| t.is_file() || t.is_symlink())
            .unwrap_or(false);
        if is_file && is_aux_model_file(&name) {
            let to = dst.join(&name);
            let bytes = fs::read(e.path()).map_err(io_err(e.path()))?;
            write_atomic(&to, &bytes)?;
            written.push(to);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500mb").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("-1GB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn shard_names() {
        assert!(is_model_shard_name("model-00001-of-00002.safetensors"));
        assert!(is_model_shard_name("model.safetensors.index.json"));
        assert!(!is_model_shard_name("model-final.safetensors"));
        assert!(!is_model_shard_name("adapter.safetensors"));
    }

    /// Bytes given as a file range write the same shards as the bytes themselves.
    #[test]
    fn file_ranges_write_the_same_shards() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        let tensors: Vec<(String, HfTensor)> = (0..5)
            .map(|i| {
                let v: Vec<f32> = (0..10 + i).map(|k| (k * 3 + i) as f32).collect();
                (format!("t{}", 4 - i), HfTensor::from_f32(&[v.len()], &v))
            })
            .collect();
        let mut blob = vec![7u8; 3];
        let mut offsets = Vec::new();
        for (_, t) in &tensors {
            offsets.push(blob.len() as u64);
            blob.extend_from_slice(&t.data);
        }
        fs::write(&src, &blob).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        // a shard limit that splits them
        let mut wa = ShardedWriter::new(&a, 120).unwrap();
        let mut wb = ShardedWriter::new(&b, 120).unwrap();
        for ((n, t), off) in tensors.iter().zip(&offsets) {
            wa.add(n.clone(), t.clone()).unwrap();
            wb.add_file_range(n.clone(), t.dtype, &t.shape, &src, *off)
                .unwrap();
        }
        let (sa, sb) = (wa.finish().unwrap(), wb.finish().unwrap());
        assert!(sa.files.len() > 1);
        assert_eq!(sa.files.len(), sb.files.len());
        for (fa, fb) in sa.files.iter().zip(&sb.files) {
            assert_eq!(fs::read(fa).unwrap(), fs::read(fb).unwrap());
        }
        assert_eq!(
            fs::read(a.join("model.safetensors.index.json")).unwrap(),
            fs::read(b.join("model.safetensors.index.json")).unwrap()
        );
        // a range past the end of the file is an error, not a short tensor
        let mut wc = ShardedWriter::new(dir.path().join("c"), 1 << 20).unwrap();
        wc.add_file_range("x", Dtype::F32, &[1000], &src, 0)
            .unwrap();
        assert!(wc.finish().is_err());
    }
}
