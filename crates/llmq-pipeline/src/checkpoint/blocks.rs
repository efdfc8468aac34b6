//! The calibrated driver's checkpoint state (`gptq`, `awq`, `compressed-tensors`, see
//! [`crate::calibrated`]): in the checkpoint folder, `block-NNNNN.bin` holds what block
//! NNNNN produced ([`super::block_codec`]) and `acts-NNNNN.bf16` the bf16 activations
//! that feed block NNNNN (the quantized model's outputs of block NNNNN−1), only the
//! latest one; the state names the finished blocks with the SHA-256 of every block file
//! and of the activation snapshot. The previous snapshot is deleted only after the new
//! state is in place, so at most two exist for a moment.

use super::block_codec::{decode_block, BlockState};
use super::{corrupt, cp_err, HasHeader, StateHeader, Store, WriteBody};
use crate::error::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// The kind name of this state (folder prefix, header `kind`).
pub const KIND: &str = "calibrated";

/// The activation snapshot named by the state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ActSnapshot {
    file: String,
    bytes: u64,
    sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlockStateFile {
    #[serde(flatten)]
    header: StateHeader,
    /// blocks 0..layers_done are finished
    layers_done: usize,
    /// SHA-256 of `block-NNNNN.bin` for every finished block
    blocks: Vec<String>,
    /// activations feeding block `layers_done` (absent when not needed)
    activations: Option<ActSnapshot>,
}

impl HasHeader for BlockStateFile {
    fn header(&self) -> &StateHeader {
        &self.header
    }
}

/// The checkpoint of one calibrated run.
pub struct BlockCheckpoint {
    store: Store,
    state: BlockStateFile,
}

fn block_file(i: usize) -> String {
    format!("block-{i:05}.bin")
}

impl BlockCheckpoint {
    /// A fresh checkpoint, replacing any earlier one for this output.
    pub fn create(root: &Path, output: &Path, fingerprint: &str) -> Result<BlockCheckpoint> {
        let store = Store::create(root, KIND, output)?;
        let cp = BlockCheckpoint {
            store,
            state: BlockStateFile {
                header: StateHeader {
                    version: 2,
                    kind: KIND.into(),
                    fingerprint: fingerprint.into(),
                    output: output.to_path_buf(),
                },
                layers_done: 0,
                blocks: Vec::new(),
                activations: None,
            },
        };
        cp.store.save_state(&cp.state)?;
        cp.store.sync();
        Ok(cp)
    }

    /// Load the checkpoint for `output`, check that it belongs to this run and that
    /// the files it names are there, and remove what it does not name.
    pub fn load(root: &Path, output: &Path, fingerprint: &str) -> Result<BlockCheckpoint> {
        let (store, state) = Store::load::<BlockStateFile>(root, KIND, output, fingerprint)?;
        if state.blocks.len() != state.layers_done {
            return Err(corrupt(
                &store.state_path(),
                "block list does not match the block count",
            ));
        }
        if let Some(a) = &state.activations {
            let p = store.path(&a.file);
            let len = std::fs::metadata(&p).map(|m| m.len()).ok();
            if len != Some(a.bytes) {
                return Err(corrupt(&p, "missing or of the wrong size"));
            }
        }
        let acts = state.activations.as_ref().map(|a| a.file.clone());
        let n = state.layers_done;
        store.remove_unnamed(&|name: &str| {
            acts.as_deref() == Some(name) || (0..n).any(|i| name == block_file(i))
        });
        Ok(BlockCheckpoint { store, state })
    }

    /// Blocks already finished.
    pub fn layers_done(&self) -> usize {
        self.state.layers_done
    }

    /// Whether an activation snapshot is stored.
    pub fn has_activations(&self) -> bool {
        self.state.activations.is_some()
    }

    /// The saved results of finished block `i` (checked against its recorded hash).
    pub fn load_block(&self, i: usize) -> Result<BlockState> {
        let sha = self.state.blocks.get(i).ok_or_else(|| {
            PipelineError::checkpoint(
                format!("block {i} is not in the checkpoint"),
                "Run without --resume to start over",
            )
        })?;
        let bytes = self.store.read_checked(&block_file(i), sha)?;
        decode_block(&bytes).map_err(|e| corrupt(&self.store.path(&block_file(i)), e))
    }

    /// Stream the activation snapshot into `sink` (which must read exactly its bytes)
    /// and check its hash.
    pub fn read_activations(
        &self,
        sink: &mut dyn FnMut(&mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let a = self.state.activations.as_ref().ok_or_else(|| {
            PipelineError::checkpoint(
                "the checkpoint has no activation snapshot to continue from",
                "Run without --resume to start over",
            )
        })?;
        self.store.stream_checked(&a.file, a.bytes, &a.sha256, sink)
    }

    /// Persist finished block `i` and, when `acts` is given, the activations that
    /// feed block `i + 1`; then record them in the state and drop the older snapshot.
    pub fn save_block(
        &mut self,
        i: usize,
        block: &[u8],
        acts: Option<&mut WriteBody<'_>>,
    ) -> Result<()> {
        assert_eq!(i, self.state.layers_done, "blocks are saved in order");
        let (sha, _) = self.store.write_atomic(&block_file(i), true, &mut |w| {
            w.write_all(block)
                .map_err(|e| cp_err("cannot write checkpoint block".into(), e))
        })?;
        let old = self.state.activations.take();
        let new = match acts {
            Some(f) => {
                let file = format!("acts-{:05}.bf16", i + 1);
                let (sha, bytes) = self.store.write_atomic(&file, true, f)?;
                Some(ActSnapshot {
                    file,
                    bytes,
                    sha256: sha,
                })
            }
            None => None,
        };
        self.state.blocks.push(sha);
        self.state.layers_done = i + 1;
        self.state.activations = new;
        self.store.save_state(&self.state)?;
        if let Some(o) = old {
            if self.state.activations.as_ref().map(|a| &a.file) != Some(&o.file) {
                self.store.remove_file(&o.file);
            }
        }
        self.store.sync();
        Ok(())
    }

    /// Remove the checkpoint (the run completed).
    pub fn remove(self) {
        self.store.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::block_codec::{encode_block, tests::sample_block};
    use std::io::Write;

    #[test]
    fn save_load_keeps_only_the_latest_activations() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m-gptq-4bit");
        let mut cp = BlockCheckpoint::create(dir.path(), &out, "fp").unwrap();
        let block = encode_block(&sample_block());
        for i in 0..3 {
            let mut acts = |w: &mut dyn Write| -> Result<()> {
                w.write_all(&[i as u8; 10]).unwrap();
                Ok(())
            };
            cp.save_block(i, &block, Some(&mut acts)).unwrap();
        }
        let folder = Store::dir_for(dir.path(), KIND, &out);
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "acts-00003.bf16",
                "block-00000.bin",
                "block-00001.bin",
                "block-00002.bin",
                "state.json"
            ]
        );
        // leftovers of a kill: an older snapshot, a temporary file, a later block
        for f in ["acts-00002.bf16", "acts-00004.bf16.tmp", "block-00003.bin"] {
            std::fs::write(folder.join(f), b"x").unwrap();
        }
        let back = BlockCheckpoint::load(dir.path(), &out, "fp").unwrap();
        let mut after: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        after.sort();
        assert_eq!(after, names, "orphans are removed on load");
        assert_eq!(back.layers_done(), 3);
        assert_eq!(back.load_block(1).unwrap(), sample_block());
        let mut got = Vec::new();
        back.read_activations(&mut |r| {
            r.read_to_end(&mut got).unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![2u8; 10]);
        assert_eq!(
            BlockCheckpoint::load(dir.path(), &out, "other")
                .err()
                .unwrap()
                .kind(),
            crate::ErrorKind::Checkpoint
        );
        // a damaged block is refused
        std::fs::write(folder.join("block-00001.bin"), b"junk").unwrap();
        assert_eq!(
            back.load_block(1).unwrap_err().kind(),
            crate::ErrorKind::Checkpoint
        );
        back.remove();
        assert!(!folder.exists());
        let err = BlockCheckpoint::load(dir.path(), &out, "fp").err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Checkpoint);
    }
}
