//! The integer layouts' quantized modules, streamed to disk as each block finishes:
//! a block's modules are packed by the output format's writer ([`super::formats`])
//! right away, their tensors appended to a spill file in the staged output folder,
//! and only their names, shapes and offsets kept (with the grid, and a SHA-256 of the
//! dequantized values for validation). The write stage then copies them from the
//! spill into the shards ([`llmq_hfquant::ShardedWriter::add_file_range`]) in the
//! same order and with the same bytes as packing them all at the end would, and
//! removes the spill.

use super::formats::{grid_of, int_writer};
use super::{hf_err, module_of};
use crate::error::{PipelineError, Result};
use crate::request::QuantizeRequest;
use llmq_hfquant::{Dtype, IntQuantized, ShardedWriter};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The spill file's name in the staged output folder.
const SPILL_NAME: &str = ".quantized-modules.spill";

/// One packed tensor in the spill.
pub(super) struct SpilledTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    offset: u64,
}

/// A quantized module packed into the spill.
pub(super) struct PackedModule {
    /// the grid and shape (and g_idx): the module without its codes, scales and zeros
    pub(super) like: IntQuantized,
    tensors: Vec<SpilledTensor>,
    file: PathBuf,
    /// SHA-256 of the dequantized values
    digest: [u8; 32],
}

/// The spill file, appended to block by block.
pub(super) struct ModuleSpill {
    path: PathBuf,
    file: File,
    offset: u64,
}

/// SHA-256 of `v`'s little-endian bytes.
pub(super) fn digest_f32(v: &[f32]) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = Vec::with_capacity(4 * 4096);
    for chunk in v.chunks(4096) {
        buf.clear();
        chunk
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        h.update(&buf);
    }
    h.finalize().into()
}

fn io_error(path: &Path, e: std::io::Error) -> PipelineError {
    PipelineError::general(
        format!("cannot write {}: {e}", path.display()),
        "Check free disk space and permissions in the output directory",
    )
}

impl ModuleSpill {
    /// A new, empty spill in `dir` (the staged output folder).
    pub(super) fn create(dir: &Path) -> Result<ModuleSpill> {
        let path = dir.join(SPILL_NAME);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        Ok(ModuleSpill {
            path,
            file,
            offset: 0,
        })
    }

    /// Packs `q` (the weight `hf`, dequantizing to `deq`) and appends its tensors.
    pub(super) fn spill(
        &mut self,
        req: &QuantizeRequest,
        hf: &str,
        q: IntQuantized,
        deq: &[f32],
    ) -> Result<PackedModule> {
        let writer = int_writer(req, grid_of(&q))?;
        let packed = writer.pack(module_of(hf), &q).map_err(hf_err)?;
        let mut tensors = Vec::with_capacity(packed.len());
        for (name, t) in packed {
            self.file
                .write_all(&t.data)
                .map_err(|e| io_error(&self.path, e))?;
            tensors.push(SpilledTensor {
                name,
                dtype: t.dtype,
                shape: t.shape,
                offset: self.offset,
            });
            self.offset += t.data.len() as u64;
        }
        let like = IntQuantized {
            q: Vec::new(),
            scales: Vec::new(),
            zeros: Vec::new(),
            ..q
        };
        Ok(PackedModule {
            like,
            tensors,
            file: self.path.clone(),
            digest: digest_f32(deq),
        })
    }
}

impl PackedModule {
    /// Adds the module's packed tensors to `w`, read from the spill when their shard
    /// is written.
    pub(super) fn add_to(&self, w: &mut ShardedWriter) -> Result<()> {
        for t in &self.tensors {
            w.add_file_range(t.name.clone(), t.dtype, &t.shape, &self.file, t.offset)
                .map_err(hf_err)?;
        }
        Ok(())
    }

    /// Whether `back` (read from the written files) dequantizes to the values packed.
    pub(super) fn matches(&self, back: &IntQuantized) -> bool {
        digest_f32(&back.dequantize()) == self.digest
    }

    /// The spill file the tensors are in.
    pub(super) fn file(&self) -> &Path {
        &self.file
    }
}

/// Removes the spill file once the shards are written.
pub(super) fn remove_spill(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(file, e)),
    }
}
