//! Per-block checkpoints of the calibrated drivers (`gptq`, `awq`,
//! `compressed-tensors`, see [`crate::calibrated`]).
//!
//! One folder per output inside the checkpoint directory,
//! `calibrated-<hash of the output path>/`, holds:
//! * `block-NNNNN.bin`: what block NNNNN produced — its quantized modules
//!   ([`IntQuantized`], with the integers bit-packed) with their report lines, the
//!   norms AWQ folded its scales into, and the modules kept in full precision;
//! * `acts-NNNNN.bf16`: the bf16 activations that feed block NNNNN (the quantized
//!   model's outputs of block NNNNN−1), only the latest one;
//! * `state.json`: the fingerprint of the inputs and options, the number of finished
//!   blocks, the SHA-256 of every block file and of the activation snapshot.
//!
//! Every file is written under a temporary name, fsynced and renamed, and
//! `state.json` is replaced last, so a process killed at any moment leaves a state
//! that names only complete files. The previous activation snapshot is deleted only
//! after the new state is in place, so at most two exist for a moment.

use crate::calibrated::CalibTensorStat;
use crate::checkpoint::sha256_hex;
use crate::error::{PipelineError, Result};
use half::f16;
use llmq_hfquant::{bitpack, IntQuantized};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const BLOCK_MAGIC: &[u8; 8] = b"LLMQCB01";

/// Writes a file's contents (activation snapshots).
pub type WriteBody<'a> = dyn FnMut(&mut dyn Write) -> Result<()> + 'a;

/// What one block contributed to the output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockState {
    /// quantized modules (HF weight name), in the order they were produced
    pub modules: Vec<(String, IntQuantized, CalibTensorStat)>,
    /// norms (HF name → values as stored) that AWQ's scales were folded into
    pub overrides: Vec<(String, Vec<f32>)>,
    /// modules kept in full precision (routers)
    pub ignored: Vec<String>,
}

/// The activation snapshot named by the state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ActSnapshot {
    file: String,
    bytes: u64,
    sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CalibState {
    version: u32,
    /// identifies the inputs, options and calibration tokens; a resume must match it
    fingerprint: String,
    output: PathBuf,
    /// blocks 0..layers_done are finished
    layers_done: usize,
    /// SHA-256 of `block-NNNNN.bin` for every finished block
    blocks: Vec<String>,
    /// activations feeding block `layers_done` (absent when not needed)
    activations: Option<ActSnapshot>,
}

/// The checkpoint of one calibrated run.
pub struct CalibCheckpoint {
    dir: PathBuf,
    state: CalibState,
}

fn cp_err(what: String, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::checkpoint(
        format!("{what}: {e}"),
        "Check free space in the checkpoint directory, or pass --no-checkpoints",
    )
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> PipelineError {
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

/// Write `path` atomically: a temporary name, fsync, rename (and, with `sync_parent`,
/// fsync of the folder). Returns the SHA-256 and length of what was written.
fn write_atomic(path: &Path, sync_parent: bool, body: &mut WriteBody<'_>) -> Result<(String, u64)> {
    let tmp = {
        let mut s = path.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    };
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
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| cp_err(format!("cannot write checkpoint {}", path.display()), e))?;
    if sync_parent {
        if let Some(parent) = path.parent() {
            sync_dir(parent);
        }
    }
    Ok((hex(&hash.finalize()), n))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
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

impl CalibCheckpoint {
    /// The folder used for `output` inside the checkpoint directory `root`.
    pub fn dir_for(root: &Path, output: &Path) -> PathBuf {
        let key = sha256_hex(output.to_string_lossy().as_bytes());
        root.join(format!("calibrated-{}", &key[..16]))
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn block_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("block-{i:05}.bin"))
    }

    /// A fresh checkpoint, replacing any earlier one for this output.
    pub fn create(root: &Path, output: &Path, fingerprint: &str) -> Result<CalibCheckpoint> {
        let dir = Self::dir_for(root, output);
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
        let cp = CalibCheckpoint {
            dir,
            state: CalibState {
                version: 1,
                fingerprint: fingerprint.into(),
                output: output.to_path_buf(),
                layers_done: 0,
                blocks: Vec::new(),
                activations: None,
            },
        };
        cp.save_state()?;
        sync_dir(&cp.dir);
        Ok(cp)
    }

    /// Load the checkpoint for `output` and check that it belongs to this run and
    /// that the files it names are intact.
    pub fn load(root: &Path, output: &Path, fingerprint: &str) -> Result<CalibCheckpoint> {
        let dir = Self::dir_for(root, output);
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
        let state: CalibState = serde_json::from_str(&text).map_err(|e| {
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
                "Resume with the same model, format, level, calibration data and options, or run without --resume",
            ));
        }
        if state.blocks.len() != state.layers_done {
            return Err(corrupt(&path, "block list does not match the block count"));
        }
        let cp = CalibCheckpoint { dir, state };
        if let Some(a) = &cp.state.activations {
            let p = cp.dir.join(&a.file);
            let len = std::fs::metadata(&p).map(|m| m.len()).ok();
            if len != Some(a.bytes) {
                return Err(corrupt(&p, "missing or of the wrong size"));
            }
        }
        cp.remove_orphans();
        Ok(cp)
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
        let p = self.block_path(i);
        let bytes = std::fs::read(&p).map_err(|e| corrupt(&p, e))?;
        if self.state.blocks.get(i) != Some(&sha256_hex(&bytes)) {
            return Err(corrupt(&p, "its contents do not match the recorded hash"));
        }
        decode_block(&bytes).map_err(|e| corrupt(&p, e))
    }

    /// Stream the activation snapshot into `sink` (which must read exactly its bytes)
    /// and check its hash.
    pub fn read_activations(
        &self,
        sink: &mut dyn FnMut(&mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let a = self
            .state
            .activations
            .as_ref()
            .expect("checked by has_activations");
        let p = self.dir.join(&a.file);
        let f = std::fs::File::open(&p).map_err(|e| corrupt(&p, e))?;
        let mut r = HashingReader {
            inner: BufReader::with_capacity(1 << 20, f),
            hash: Sha256::new(),
            n: 0,
        };
        sink(&mut r)?;
        // anything left over counts too
        std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| corrupt(&p, e))?;
        if r.n != a.bytes || hex(&r.hash.finalize()) != a.sha256 {
            return Err(corrupt(&p, "its contents do not match the recorded hash"));
        }
        Ok(())
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
        let (sha, _) = write_atomic(&self.block_path(i), true, &mut |w| {
            w.write_all(block)
                .map_err(|e| cp_err("cannot write checkpoint block".into(), e))
        })?;
        let old = self.state.activations.take();
        let new = match acts {
            Some(f) => {
                let file = format!("acts-{:05}.bf16", i + 1);
                let (sha, bytes) = write_atomic(&self.dir.join(&file), true, f)?;
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
        self.save_state()?;
        if let Some(o) = old {
            if self.state.activations.as_ref().map(|a| &a.file) != Some(&o.file) {
                let _ = std::fs::remove_file(self.dir.join(o.file));
            }
        }
        sync_dir(&self.dir);
        Ok(())
    }

    /// Delete what the state does not name: an older activation snapshot or a
    /// temporary file left by a process killed mid-write, blocks past the state.
    fn remove_orphans(&self) {
        let keep = |name: &str| {
            name == "state.json"
                || self
                    .state
                    .activations
                    .as_ref()
                    .is_some_and(|a| a.file == name)
                || (0..self.state.layers_done).any(|i| name == format!("block-{i:05}.bin"))
        };
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    fn save_state(&self) -> Result<()> {
        let body = serde_json::to_vec_pretty(&self.state).expect("checkpoint state serializes");
        write_atomic(&self.state_path(), false, &mut |w| {
            w.write_all(&body)
                .map_err(|e| cp_err("cannot write checkpoint state".into(), e))
        })?;
        Ok(())
    }

    /// Remove the checkpoint (the run completed).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------
// block files: little-endian, length-prefixed

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt_str(&mut self, s: &Option<String>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
    fn opt_f64(&mut self, v: Option<f64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.f64(v);
            }
            None => self.u8(0),
        }
    }
}

struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

type DResult<T> = std::result::Result<T, String>;

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("truncated")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> DResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> DResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> DResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn usize(&mut self) -> DResult<usize> {
        usize::try_from(self.u64()?).map_err(|e| e.to_string())
    }
    fn f64(&mut self) -> DResult<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn bytes(&mut self) -> DResult<&'a [u8]> {
        let n = self.usize()?;
        self.take(n)
    }
    fn str(&mut self) -> DResult<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|e| e.to_string())
    }
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> DResult<T>) -> DResult<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            t => Err(format!("bad option tag {t}")),
        }
    }
}

/// `v`'s values (each below `2^bits`) packed LSB first into bytes: the bytes of
/// [`bitpack::pack_stream`]'s little-endian words, cut to `ceil(len·bits/8)`.
fn pack_bits(v: &[u8], bits: u8) -> Vec<u8> {
    let mut out: Vec<u8> = bitpack::pack_stream(v.iter().copied(), bits)
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    out.truncate((v.len() * bits as usize).div_ceil(8));
    out
}

fn unpack_bits(p: &[u8], bits: u8, n: usize) -> DResult<Vec<u8>> {
    if p.len() != (n * bits as usize).div_ceil(8) {
        return Err("packed integers have the wrong length".into());
    }
    let words: Vec<u32> = p
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    Ok(bitpack::unpack_stream(&words, bits, n))
}

/// Integers as stored: bit-packed when every value fits `bits` (1..=7), else raw.
fn enc_ints(e: &mut Enc, v: &[u8], bits: u8) {
    if (1..8).contains(&bits) && v.iter().all(|x| (*x as u16) < (1u16 << bits)) {
        e.u8(1);
        e.u64(v.len() as u64);
        e.bytes(&pack_bits(v, bits));
    } else {
        e.u8(0);
        e.u64(v.len() as u64);
        e.bytes(v);
    }
}

fn dec_ints(d: &mut Dec<'_>, bits: u8) -> DResult<Vec<u8>> {
    let tag = d.u8()?;
    let n = d.usize()?;
    let b = d.bytes()?;
    match tag {
        0 if b.len() == n => Ok(b.to_vec()),
        1 if (1..8).contains(&bits) => unpack_bits(b, bits, n),
        _ => Err("bad integer block".into()),
    }
}

/// Serialize a block's results.
pub fn encode_block(b: &BlockState) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    e.0.extend_from_slice(BLOCK_MAGIC);
    e.u32(b.modules.len() as u32);
    for (name, q, st) in &b.modules {
        e.str(name);
        e.u8(q.bits);
        e.u64(q.group_size.map_or(u64::MAX, |g| g as u64));
        e.u8(q.symmetric as u8);
        e.u64(q.out_features as u64);
        e.u64(q.in_features as u64);
        enc_ints(&mut e, &q.q, q.bits);
        e.u64(q.scales.len() as u64);
        for s in &q.scales {
            e.0.extend_from_slice(&s.to_bits().to_le_bytes());
        }
        enc_ints(&mut e, &q.zeros, q.bits);
        match &q.g_idx {
            Some(g) => {
                e.u8(1);
                e.u64(g.len() as u64);
                for v in g {
                    e.u32(*v);
                }
            }
            None => e.u8(0),
        }
        e.str(&st.name);
        e.u64(st.out_features as u64);
        e.u64(st.in_features as u64);
        e.str(&st.method);
        e.u64(st.tokens);
        e.f64(st.rmse);
        e.f64(st.rel_rmse);
        e.opt_f64(st.damp_percent);
        e.opt_f64(st.loss);
        match st.awq_ratio {
            Some(r) => {
                e.u8(1);
                e.u32(r.to_bits());
            }
            None => e.u8(0),
        }
        e.opt_str(&st.note);
    }
    e.u32(b.overrides.len() as u32);
    for (name, v) in &b.overrides {
        e.str(name);
        e.u64(v.len() as u64);
        for x in v {
            e.u32(x.to_bits());
        }
    }
    e.u32(b.ignored.len() as u32);
    for n in &b.ignored {
        e.str(n);
    }
    e.0
}

/// Read back [`encode_block`]'s bytes.
pub fn decode_block(bytes: &[u8]) -> DResult<BlockState> {
    let mut d = Dec { b: bytes, at: 0 };
    if d.take(8)? != BLOCK_MAGIC {
        return Err("not a block file".into());
    }
    let mut out = BlockState::default();
    for _ in 0..d.u32()? {
        let name = d.str()?;
        let bits = d.u8()?;
        let group_size = match d.u64()? {
            u64::MAX => None,
            g => Some(usize::try_from(g).map_err(|e| e.to_string())?),
        };
        let symmetric = d.u8()? != 0;
        let out_features = d.usize()?;
        let in_features = d.usize()?;
        let q = dec_ints(&mut d, bits)?;
        let n_scales = d.usize()?;
        let raw = d.take(n_scales.checked_mul(2).ok_or("too many scales")?)?;
        let scales: Vec<f16> = raw
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        let zeros = dec_ints(&mut d, bits)?;
        let g_idx = d.opt(|d| {
            let n = d.usize()?;
            (0..n).map(|_| d.u32()).collect::<DResult<Vec<u32>>>()
        })?;
        if q.len() != out_features * in_features {
            return Err(format!("{name}: wrong number of integers"));
        }
        let qz = IntQuantized {
            bits,
            group_size,
            symmetric,
            out_features,
            in_features,
            q,
            scales,
            zeros,
            g_idx,
        };
        let st = CalibTensorStat {
            name: d.str()?,
            out_features: d.usize()?,
            in_features: d.usize()?,
            method: d.str()?,
            tokens: d.u64()?,
            rmse: d.f64()?,
            rel_rmse: d.f64()?,
            damp_percent: d.opt(|d| d.f64())?,
            loss: d.opt(|d| d.f64())?,
            awq_ratio: d.opt(|d| d.u32().map(f32::from_bits))?,
            note: d.opt(|d| d.str())?,
        };
        out.modules.push((name, qz, st));
    }
    for _ in 0..d.u32()? {
        let name = d.str()?;
        let n = d.usize()?;
        let v = (0..n)
            .map(|_| d.u32().map(f32::from_bits))
            .collect::<DResult<Vec<f32>>>()?;
        out.overrides.push((name, v));
    }
    for _ in 0..d.u32()? {
        out.ignored.push(d.str()?);
    }
    if d.at != bytes.len() {
        return Err("trailing bytes".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_block() -> BlockState {
        let q = IntQuantized {
            bits: 3,
            group_size: Some(32),
            symmetric: false,
            out_features: 3,
            in_features: 64,
            q: (0..192).map(|i| (i * 5 % 8) as u8).collect(),
            scales: (0..6).map(|i| f16::from_f32(0.01 * i as f32)).collect(),
            zeros: vec![0, 7, 3, 4, 5, 1],
            g_idx: Some((0..64).map(|i| (i % 2) as u32).collect()),
        };
        let st = CalibTensorStat {
            name: "model.layers.0.mlp.down_proj.weight".into(),
            out_features: 3,
            in_features: 64,
            method: "gptq".into(),
            tokens: 1234,
            rmse: 0.1 / 3.0,
            rel_rmse: f64::MIN_POSITIVE,
            damp_percent: Some(0.01),
            loss: None,
            awq_ratio: Some(0.35),
            note: Some("ünïcode note".into()),
        };
        let mut q8 = q.clone();
        q8.bits = 8;
        q8.group_size = None;
        q8.g_idx = None;
        q8.q = (0..192).map(|i| (i * 37 % 256) as u8).collect();
        BlockState {
            modules: vec![
                ("a.weight".into(), q, st.clone()),
                ("b.weight".into(), q8, st),
            ],
            overrides: vec![("n.weight".into(), vec![1.5, -0.0, f32::MIN_POSITIVE])],
            ignored: vec!["model.layers.0.mlp.gate".into()],
        }
    }

    #[test]
    fn block_round_trip_and_bit_packing() {
        let b = sample_block();
        let bytes = encode_block(&b);
        assert_eq!(decode_block(&bytes).unwrap(), b);
        assert!(decode_block(&bytes[..bytes.len() - 1]).is_err());
        for bits in [2u8, 3, 4, 7] {
            let v: Vec<u8> = (0..101).map(|i| (i * 13 % (1 << bits)) as u8).collect();
            let p = pack_bits(&v, bits);
            assert_eq!(p.len(), (101 * bits as usize).div_ceil(8));
            assert_eq!(unpack_bits(&p, bits, v.len()).unwrap(), v);
        }
    }

    #[test]
    fn save_load_keeps_only_the_latest_activations() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m-gptq-4bit");
        let mut cp = CalibCheckpoint::create(dir.path(), &out, "fp").unwrap();
        let block = encode_block(&sample_block());
        for i in 0..3 {
            let mut acts = |w: &mut dyn Write| -> Result<()> {
                w.write_all(&[i as u8; 10]).unwrap();
                Ok(())
            };
            cp.save_block(i, &block, Some(&mut acts)).unwrap();
        }
        let folder = CalibCheckpoint::dir_for(dir.path(), &out);
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
        let back = CalibCheckpoint::load(dir.path(), &out, "fp").unwrap();
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
            CalibCheckpoint::load(dir.path(), &out, "other")
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
        let err = CalibCheckpoint::load(dir.path(), &out, "fp").err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Checkpoint);
    }
}
