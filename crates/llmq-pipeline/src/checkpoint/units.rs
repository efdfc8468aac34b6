//! Per-layer checkpoints. The output is written in place (positional writes) into
//! `<output>.tmp`; the checkpoint is a small JSON state file that records which work
//! units (layers) are complete, with the SHA-256 and error statistics of each tensor
//! written. `--resume` reopens the `.tmp`, re-hashes the finished tensors (so a unit
//! whose bytes did not all reach the file is redone) and continues. Quantization is
//! deterministic, so a resumed run yields the same bytes as an uninterrupted one.

use crate::error::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Error statistics of one written tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorRecord {
    pub sha256: String,
    pub rmse: Option<f64>,
    pub rel_rmse: Option<f64>,
}

/// The saved state of one run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CheckpointState {
    pub version: u32,
    /// identifies the inputs, options and output layout; a resume must match it
    pub fingerprint: String,
    pub output: PathBuf,
    pub units_done: Vec<usize>,
    pub tensors: BTreeMap<String, TensorRecord>,
}

/// A checkpoint file for one output path inside a checkpoint folder.
pub struct Checkpoint {
    path: PathBuf,
    pub state: CheckpointState,
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Checkpoint {
    /// The state file used for `output` inside `dir`.
    pub fn state_path(dir: &Path, output: &Path) -> PathBuf {
        let key = sha256_hex(output.to_string_lossy().as_bytes());
        dir.join(format!("quantize-{}.json", &key[..16]))
    }

    /// A fresh checkpoint (replacing any earlier state for this output).
    pub fn create(dir: &Path, output: &Path, fingerprint: &str) -> Result<Checkpoint> {
        std::fs::create_dir_all(dir).map_err(|e| {
            PipelineError::checkpoint(
                format!("cannot create checkpoint directory {}: {e}", dir.display()),
                "Pass a writable --checkpoint-dir, or --no-checkpoints",
            )
        })?;
        let cp = Checkpoint {
            path: Self::state_path(dir, output),
            state: CheckpointState {
                version: 1,
                fingerprint: fingerprint.into(),
                output: output.to_path_buf(),
                ..Default::default()
            },
        };
        cp.save()?;
        Ok(cp)
    }

    /// Load the checkpoint for `output` and check that it belongs to this run.
    pub fn load(dir: &Path, output: &Path, fingerprint: &str) -> Result<Checkpoint> {
        let path = Self::state_path(dir, output);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            PipelineError::checkpoint(
                format!(
                    "no checkpoint for {} in {}",
                    output.display(),
                    dir.display()
                ),
                "Run without --resume to start over, or pass the --checkpoint-dir used before",
            )
        })?;
        let state: CheckpointState = serde_json::from_str(&text).map_err(|e| {
            PipelineError::checkpoint(
                format!("checkpoint {} is corrupt: {e}", path.display()),
                "Delete it and run without --resume",
            )
        })?;
        if state.fingerprint != fingerprint {
            return Err(PipelineError::checkpoint(
                format!(
                    "checkpoint {} was made for different inputs or options",
                    path.display()
                ),
                "Resume with the same model, format, level and options, or run without --resume",
            ));
        }
        Ok(Checkpoint { path, state })
    }

    /// Record a finished unit with its tensors and persist (atomic replace).
    pub fn mark_done(&mut self, unit: usize, tensors: Vec<(String, TensorRecord)>) -> Result<()> {
        self.state.units_done.push(unit);
        self.state.tensors.extend(tensors);
        self.save()
    }

    /// Forget a unit (its bytes did not survive).
    pub fn forget(&mut self, unit: usize, tensor_names: &[String]) {
        self.state.units_done.retain(|u| *u != unit);
        for n in tensor_names {
            self.state.tensors.remove(n);
        }
    }

    fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&self.state).expect("checkpoint state serializes");
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| {
                PipelineError::checkpoint(
                    format!("cannot write checkpoint {}: {e}", self.path.display()),
                    "Check free space in the checkpoint directory, or pass --no-checkpoints",
                )
            })
    }

    /// Remove the state file (the run completed).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_fingerprint_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let mut cp = Checkpoint::create(dir.path(), &out, "abc").unwrap();
        let rec = TensorRecord {
            sha256: sha256_hex(b"x"),
            rmse: Some(0.1),
            rel_rmse: Some(0.01),
        };
        cp.mark_done(3, vec![("t".into(), rec.clone())]).unwrap();
        let back = Checkpoint::load(dir.path(), &out, "abc").unwrap();
        assert_eq!(back.state.units_done, vec![3]);
        assert_eq!(back.state.tensors["t"], rec);
        let err = Checkpoint::load(dir.path(), &out, "other").err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Checkpoint);
        let err = Checkpoint::load(dir.path(), &dir.path().join("none.gguf"), "abc")
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Checkpoint);
    }
}
