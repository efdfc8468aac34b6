//! The GGUF driver's checkpoint state: the output is written in place (positional
//! writes) into `<output>.tmp`; the state records which work units (layers) are
//! complete, with the SHA-256 and error statistics of each tensor written. `--resume`
//! reopens the `.tmp`, re-hashes the finished tensors (so a unit whose bytes did not
//! all reach the file is redone) and continues. Quantization is deterministic, so a
//! resumed run yields the same bytes as an uninterrupted one.

use super::{HasHeader, StateHeader, Store};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The kind name of this state (folder prefix, header `kind`).
pub const KIND: &str = "quantize";

/// Error statistics of one written tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorRecord {
    pub sha256: String,
    pub rmse: Option<f64>,
    pub rel_rmse: Option<f64>,
    /// how the bytes were made (`k-quant`, `copy`, …)
    pub method: String,
}

/// The saved state of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitState {
    #[serde(flatten)]
    pub header: StateHeader,
    pub units_done: Vec<usize>,
    pub tensors: BTreeMap<String, TensorRecord>,
}

impl HasHeader for UnitState {
    fn header(&self) -> &StateHeader {
        &self.header
    }
}

/// The checkpoint of one GGUF run.
pub struct UnitCheckpoint {
    store: Store,
    pub state: UnitState,
}

impl UnitCheckpoint {
    /// A fresh checkpoint (replacing any earlier state for this output).
    pub fn create(root: &Path, output: &Path, fingerprint: &str) -> Result<UnitCheckpoint> {
        let store = Store::create(root, KIND, output)?;
        let cp = UnitCheckpoint {
            store,
            state: UnitState {
                header: StateHeader {
                    version: 2,
                    kind: KIND.into(),
                    fingerprint: fingerprint.into(),
                    output: output.to_path_buf(),
                },
                units_done: Vec::new(),
                tensors: BTreeMap::new(),
            },
        };
        cp.store.save_state(&cp.state)?;
        cp.store.sync();
        Ok(cp)
    }

    /// Load the checkpoint for `output` and check that it belongs to this run.
    pub fn load(root: &Path, output: &Path, fingerprint: &str) -> Result<UnitCheckpoint> {
        let (store, state) = Store::load::<UnitState>(root, KIND, output, fingerprint)?;
        store.remove_unnamed(&|_| false);
        Ok(UnitCheckpoint { store, state })
    }

    /// Record a finished unit with its tensors and persist (atomic replace).
    pub fn mark_done(&mut self, unit: usize, tensors: Vec<(String, TensorRecord)>) -> Result<()> {
        self.state.units_done.push(unit);
        self.state.tensors.extend(tensors);
        self.store.save_state(&self.state)
    }

    /// Forget a unit (its bytes did not survive).
    pub fn forget(&mut self, unit: usize, tensor_names: &[String]) {
        self.state.units_done.retain(|u| *u != unit);
        for n in tensor_names {
            self.state.tensors.remove(n);
        }
    }

    /// Remove the checkpoint (the run completed).
    pub fn remove(self) {
        self.store.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::sha256_hex;

    #[test]
    fn save_load_and_fingerprint_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let mut cp = UnitCheckpoint::create(dir.path(), &out, "abc").unwrap();
        let rec = TensorRecord {
            sha256: sha256_hex(b"x"),
            rmse: Some(0.1),
            rel_rmse: Some(0.01),
            method: "k-quant".into(),
        };
        cp.mark_done(3, vec![("t".into(), rec.clone())]).unwrap();
        let back = UnitCheckpoint::load(dir.path(), &out, "abc").unwrap();
        assert_eq!(back.state.units_done, vec![3]);
        assert_eq!(back.state.tensors["t"], rec);
        let err = UnitCheckpoint::load(dir.path(), &out, "other")
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Checkpoint);
        let err = UnitCheckpoint::load(dir.path(), &dir.path().join("none.gguf"), "abc")
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Checkpoint);
        // a calibrated run's checkpoint of the same output is not this one
        assert_eq!(
            crate::checkpoint::BlockCheckpoint::load(dir.path(), &out, "abc")
                .err()
                .unwrap()
                .kind(),
            crate::ErrorKind::Checkpoint
        );
    }
}
