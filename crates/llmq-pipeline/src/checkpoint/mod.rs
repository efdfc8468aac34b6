//! Checkpoints, one mechanism for every driver: a folder per output inside the
//! checkpoint directory, `<kind>-<first 16 hex of SHA-256(output path)>/`, holding a
//! `state.json` and whatever files the driver's state names.
//!
//! The state always starts with the same header ([`StateHeader`]: version, kind, the
//! fingerprint of everything the output depends on, the output path); `--resume`
//! refuses a state whose fingerprint differs (exit 7). Every file is written under a
//! temporary name, fsynced and renamed ([`Store::write_atomic`]), and the state is
//! replaced last, so a process killed at any moment leaves a state naming only
//! complete files. Files the state does not name are removed when it is loaded.
//!
//! Two states live on it: [`units`] (GGUF: finished layers and the hash of every
//! tensor written in place into the output's `.tmp`) and [`blocks`] (calibrated
//! formats: each block's quantized modules plus the activations feeding the next).

pub mod block_codec;
pub mod blocks;
pub mod units;

use crate::error::{PipelineError, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub use blocks::BlockCheckpoint;
pub use units::UnitCheckpoint;

/// Where checkpoints go and whether this run continues one.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub dir: PathBuf,
    pub resume: bool,
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file's contents.
pub type WriteBody<'a> = dyn FnMut(&mut dyn Write) -> Result<()> + 'a;

/// The part of every state file that says whose it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateHeader {
    pub version: u32,
    /// `quantize` (GGUF) or `calibrated`
    pub kind: String,
    /// identifies the inputs, options and output layout; a resume must match it
    pub fingerprint: String,
    pub output: PathBuf,
}

/// A state file's header, for checking it before the rest is trusted.
pub trait HasHeader {
    fn header(&self) -> &StateHeader;
}

pub(crate) fn cp_err(what: String, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::checkpoint(
        format!("{what}: {e}"),
        "Check free space in the checkpoint directory, or pass --no-checkpoints",
    )
}

pub(crate) fn corrupt(path: &Path, why: impl std::fmt::Display) -> PipelineError {
    PipelineError::checkpoint(
        format!("checkpoint file {} is unusable: {why}", path.display()),
        "Run without --resume to start over",
    )
}

/// Make renames and removals in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The checkpoint folder of one output.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The folder used for `output` of a `kind` run inside the checkpoint directory `root`.
    pub fn dir_for(root: &Path, kind: &str, output: &Path) -> PathBuf {
        let key = sha256_hex(output.to_string_lossy().as_bytes());
        root.join(format!("{kind}-{}", &key[..16]))
    }

    /// A fresh, empty folder (replacing any earlier checkpoint of this output).
    pub fn create(root: &Path, kind: &str, output: &Path) -> Result<Store> {
        let dir = Self::dir_for(root, kind, output);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                cp_err(
                    format!("cannot remove the old checkpoint {}", dir.display()),
                    e,
                )
            })?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            PipelineError::checkpoint(
                format!("cannot create checkpoint directory {}: {e}", dir.display()),
                "Pass a writable --checkpoint-dir, or --no-checkpoints",
            )
        })?;
        Ok(Store { dir })
    }

    /// The existing folder and its state, checked against `fingerprint`.
    pub fn load<S: DeserializeOwned + HasHeader>(
        root: &Path,
        kind: &str,
        output: &Path,
        fingerprint: &str,
    ) -> Result<(Store, S)> {
        let dir = Self::dir_for(root, kind, output);
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            PipelineError::checkpoint(
                format!(
                    "no checkpoint for {} in {}",
                    output.display(),
                    root.display()
                ),
                "Run without --resume to start over, or pass the --checkpoint-dir used before",
            )
        })?;
        let state: S = serde_json::from_str(&text).map_err(|e| {
            PipelineError::checkpoint(
                format!("checkpoint {} is corrupt: {e}", path.display()),
                "Delete it and run without --resume",
            )
        })?;
        let h = state.header();
        if h.fingerprint != fingerprint || h.kind != kind {
            return Err(PipelineError::checkpoint(
                format!(
                    "checkpoint {} was made for different inputs or options",
                    path.display()
                ),
                "Resume with the same model, format, level, calibration data and options, or run without --resume",
            ));
        }
        Ok((Store { dir }, state))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn state_path(&self) -> PathBuf {
        self.path("state.json")
    }

    /// Write `name` atomically: a temporary name, fsync, rename (and, with
    /// `sync_parent`, fsync of the folder). Returns the SHA-256 and length written.
    pub fn write_atomic(
        &self,
        name: &str,
        sync_parent: bool,
        body: &mut WriteBody<'_>,
    ) -> Result<(String, u64)> {
        let path = self.path(name);
        let tmp = self.path(&format!("{name}.tmp"));
        let f = std::fs::File::create(&tmp)
            .map_err(|e| cp_err(format!("cannot write checkpoint {}", tmp.display()), e))?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, f),
            hash: Sha256::new(),
            n: 0,
        };
        body(&mut w)?;
        let HashingWriter { inner, hash, n } = w;
        let f = inner
            .into_inner()
            .map_err(|e| cp_err(format!("cannot write checkpoint {}", tmp.display()), e))?;
        f.sync_all()
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| cp_err(format!("cannot write checkpoint {}", path.display()), e))?;
        if sync_parent {
            self.sync();
        }
        Ok((hex(&hash.finalize()), n))
    }

    /// Replace `state.json` (atomically, last of a step's writes).
    pub fn save_state<S: Serialize>(&self, state: &S) -> Result<()> {
        let body = serde_json::to_vec_pretty(state).expect("checkpoint state serializes");
        self.write_atomic("state.json", false, &mut |w| {
            w.write_all(&body)
                .map_err(|e| cp_err("cannot write checkpoint state".into(), e))
        })?;
        Ok(())
    }

    /// The bytes of `name`, checked against the hash the state recorded.
    pub fn read_checked(&self, name: &str, sha256: &str) -> Result<Vec<u8>> {
        let p = self.path(name);
        let bytes = std::fs::read(&p).map_err(|e| corrupt(&p, e))?;
        if sha256_hex(&bytes) != sha256 {
            return Err(corrupt(&p, "its contents do not match the recorded hash"));
        }
        Ok(bytes)
    }

    /// Stream `name` into `sink` (which must read exactly its bytes) and check its
    /// length and hash.
    pub fn stream_checked(
        &self,
        name: &str,
        bytes: u64,
        sha256: &str,
        sink: &mut dyn FnMut(&mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let p = self.path(name);
        let f = std::fs::File::open(&p).map_err(|e| corrupt(&p, e))?;
        let mut r = HashingReader {
            inner: std::io::BufReader::with_capacity(1 << 20, f),
            hash: Sha256::new(),
            n: 0,
        };
        sink(&mut r)?;
        // anything left over counts too
        std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| corrupt(&p, e))?;
        if r.n != bytes || hex(&r.hash.finalize()) != sha256 {
            return Err(corrupt(&p, "its contents do not match the recorded hash"));
        }
        Ok(())
    }

    /// Delete every file `keep` does not name (older snapshots, temporary files of a
    /// process killed mid-write); `state.json` is always kept.
    pub fn remove_unnamed(&self, keep: &dyn Fn(&str) -> bool) {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name != "state.json" && !keep(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    pub fn remove_file(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    pub fn sync(&self) {
        sync_dir(&self.dir);
    }

    /// Remove the checkpoint (the run completed).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R: Read> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}
