//! The activation store of the calibrate stage: the hidden states of every
//! calibration sample in bf16, in memory or spilled to a file, run block by block
//! through the engine in batches (optionally observed, optionally written back), and
//! saved to / restored from a checkpoint snapshot.

use super::engine_err;
use crate::error::{PipelineError, Result};
use half::bf16;
use llmq_engine::backend::Backend;
use llmq_engine::{LinearObserver, Model};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Hidden states of all calibration samples in bf16: in memory, or in a file.
pub(super) struct ActStore {
    pub(super) d: usize,
    pub(super) lens: Vec<usize>,
    /// offsets in values
    pub(super) offs: Vec<usize>,
    pub(super) mem: Option<Vec<u16>>,
    pub(super) file: Option<(PathBuf, std::fs::File)>,
}

impl ActStore {
    pub(super) fn new(d: usize, lens: Vec<usize>, spill_dir: Option<&Path>) -> Result<ActStore> {
        let mut offs = Vec::with_capacity(lens.len());
        let mut o = 0;
        for &l in &lens {
            offs.push(o);
            o += l * d;
        }
        let (mem, file) = match spill_dir {
            None => (Some(vec![0u16; o]), None),
            Some(dir) => {
                let p = dir.join(".activations.bf16");
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&p)
                    .map_err(|e| {
                        PipelineError::io("cannot create activation spill file", &p, &e)
                    })?;
                f.set_len(o as u64 * 2)
                    .map_err(|e| PipelineError::io("cannot size activation spill file", &p, &e))?;
                (None, Some((p, f)))
            }
        };
        Ok(ActStore {
            d,
            lens,
            offs,
            mem,
            file,
        })
    }

    pub(super) fn read(&mut self, s: usize, out: &mut Vec<f32>) -> Result<()> {
        let n = self.lens[s] * self.d;
        let off = self.offs[s];
        out.clear();
        if let Some(m) = &self.mem {
            out.extend(m[off..off + n].iter().map(|&b| bf16::from_bits(b).to_f32()));
            return Ok(());
        }
        let (p, f) = self.file.as_mut().expect("store has memory or a file");
        let mut bytes = vec![0u8; n * 2];
        f.seek(SeekFrom::Start(off as u64 * 2))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| PipelineError::io("cannot read activations", p, &e))?;
        out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        );
        Ok(())
    }

    pub(super) fn write(&mut self, s: usize, x: &[f32]) -> Result<()> {
        let n = self.lens[s] * self.d;
        assert_eq!(x.len(), n);
        let off = self.offs[s];
        if let Some(m) = &mut self.mem {
            for (d, v) in m[off..off + n].iter_mut().zip(x) {
                *d = bf16::from_f32(*v).to_bits();
            }
            return Ok(());
        }
        let (p, f) = self.file.as_mut().expect("store has memory or a file");
        let bytes: Vec<u8> = x
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        f.seek(SeekFrom::Start(off as u64 * 2))
            .and_then(|_| f.write_all(&bytes))
            .map_err(|e| PipelineError::io("cannot write activations", p, &e))
    }
}

impl ActStore {
    /// Total values held.
    pub(super) fn len(&self) -> usize {
        self.lens.iter().sum::<usize>() * self.d
    }

    /// Every value as little-endian bf16, in sample order (a checkpoint snapshot).
    pub(super) fn save_to(&mut self, w: &mut dyn Write) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let werr = |e: std::io::Error| {
            PipelineError::checkpoint(
                format!("cannot write the activation snapshot: {e}"),
                "Check free space in the checkpoint directory, or pass --no-checkpoints",
            )
        };
        if let Some(m) = &self.mem {
            let mut bytes = Vec::with_capacity(CHUNK * 2);
            for c in m.chunks(CHUNK) {
                bytes.clear();
                bytes.extend(c.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&bytes).map_err(werr)?;
            }
            return Ok(());
        }
        let total = self.len() as u64 * 2;
        let (p, f) = self.file.as_mut().expect("store has memory or a file");
        f.seek(SeekFrom::Start(0))
            .map_err(|e| PipelineError::io("cannot read activations", p, &e))?;
        let n = std::io::copy(&mut (&*f).take(total), w).map_err(werr)?;
        if n != total {
            return Err(PipelineError::general(
                format!("activation spill file {} is short", p.display()),
                "Check the output directory",
            ));
        }
        Ok(())
    }

    /// Replace every value with a snapshot written by [`ActStore::save_to`].
    pub(super) fn load_from(&mut self, r: &mut dyn Read) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let rerr = |e: std::io::Error| {
            PipelineError::checkpoint(
                format!("cannot read the activation snapshot: {e}"),
                "Run without --resume to start over",
            )
        };
        let total = self.len();
        if let Some(m) = &mut self.mem {
            let mut bytes = vec![0u8; CHUNK * 2];
            for c in m.chunks_mut(CHUNK) {
                let b = &mut bytes[..c.len() * 2];
                r.read_exact(b).map_err(rerr)?;
                for (d, s) in c.iter_mut().zip(b.chunks_exact(2)) {
                    *d = u16::from_le_bytes([s[0], s[1]]);
                }
            }
            return Ok(());
        }
        let (p, f) = self.file.as_mut().expect("store has memory or a file");
        f.seek(SeekFrom::Start(0))
            .map_err(|e| PipelineError::io("cannot write activations", p, &e))?;
        let n = std::io::copy(&mut (&mut *r).take(total as u64 * 2), f).map_err(rerr)?;
        if n != total as u64 * 2 {
            return Err(PipelineError::checkpoint(
                "the activation snapshot is short",
                "Run without --resume to start over",
            ));
        }
        Ok(())
    }
}

impl Drop for ActStore {
    fn drop(&mut self) {
        if let Some((p, _)) = &self.file {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Batches of sample indices with at most `max_tokens` tokens each.
pub(super) fn batches(lens: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur = Vec::new();
    let mut t = 0;
    for (i, &l) in lens.iter().enumerate() {
        if !cur.is_empty() && t + l > max_tokens {
            out.push(std::mem::take(&mut cur));
            t = 0;
        }
        cur.push(i);
        t += l;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Runs block `layer` over every stored sample, batch by batch, under `obs` if given;
/// with `write_back` the block outputs replace the stored activations.
pub(super) fn run_batches<B: Backend, O: LinearObserver>(
    model: &Model<B>,
    layer: usize,
    store: &mut ActStore,
    groups: &[Vec<usize>],
    mut obs: Option<&mut O>,
    write_back: bool,
) -> Result<()> {
    let d = store.d;
    let mut buf = Vec::new();
    let mut one = Vec::new();
    for g in groups {
        buf.clear();
        for &s in g {
            store.read(s, &mut one)?;
            buf.extend_from_slice(&one);
        }
        let lens: Vec<usize> = g.iter().map(|&s| store.lens[s]).collect();
        let o: Option<&mut dyn LinearObserver> = match obs.as_deref_mut() {
            Some(c) => Some(c),
            None => None,
        };
        model
            .forward_block(layer, &mut buf, &lens, o)
            .map_err(engine_err)?;
        if write_back {
            let mut off = 0;
            for &s in g {
                let n = store.lens[s] * d;
                store.write(s, &buf[off..off + n])?;
                off += n;
            }
        }
    }
    Ok(())
}
