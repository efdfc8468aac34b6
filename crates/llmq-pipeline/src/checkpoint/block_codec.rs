//! The block files of the calibrated checkpoint: what one block contributed to the
//! output ([`BlockState`]: its quantized modules with their integers bit-packed, the
//! report lines, the norms AWQ folded its scales into, the modules kept in full
//! precision), serialized little-endian and length-prefixed behind a magic.

use crate::report::{CalibrationDetail, TensorReport};
use half::f16;
use llmq_hfquant::{bitpack, IntQuantized};

const BLOCK_MAGIC: &[u8; 8] = b"LLMQCB02";

/// What one block contributed to the output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockState {
    /// quantized modules (HF weight name), in the order they were produced
    pub modules: Vec<(String, IntQuantized, TensorReport)>,
    /// norms (HF name → values as stored) that AWQ's scales were folded into
    pub overrides: Vec<(String, Vec<f32>)>,
    /// modules kept in full precision (routers)
    pub ignored: Vec<String>,
}

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

pub type DResult<T> = std::result::Result<T, String>;

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
        e.u64(st.shape[0] as u64);
        e.u64(st.shape[1] as u64);
        e.str(&st.quant);
        e.str(&st.method);
        e.opt_f64(st.rmse);
        e.opt_f64(st.rel_rmse);
        e.opt_str(&st.sha256);
        match &st.calibration {
            Some(c) => {
                e.u8(1);
                e.u64(c.tokens);
                e.opt_f64(c.damp_percent);
                e.opt_f64(c.loss);
                match c.awq_ratio {
                    Some(r) => {
                        e.u8(1);
                        e.u32(r.to_bits());
                    }
                    None => e.u8(0),
                }
                e.opt_str(&c.note);
            }
            None => e.u8(0),
        }
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
        let st = TensorReport {
            name: d.str()?,
            shape: [d.usize()?, d.usize()?],
            quant: d.str()?,
            method: d.str()?,
            rmse: d.opt(|d| d.f64())?,
            rel_rmse: d.opt(|d| d.f64())?,
            sha256: d.opt(|d| d.str())?,
            calibration: d.opt(|d| {
                Ok(CalibrationDetail {
                    tokens: d.u64()?,
                    damp_percent: d.opt(|d| d.f64())?,
                    loss: d.opt(|d| d.f64())?,
                    awq_ratio: d.opt(|d| d.u32().map(f32::from_bits))?,
                    note: d.opt(|d| d.str())?,
                })
            })?,
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
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_block() -> BlockState {
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
        let st = TensorReport {
            name: "model.layers.0.mlp.down_proj.weight".into(),
            shape: [3, 64],
            quant: "3bit g32 asym act-order".into(),
            method: "gptq".into(),
            rmse: Some(0.1 / 3.0),
            rel_rmse: Some(f64::MIN_POSITIVE),
            sha256: None,
            calibration: Some(CalibrationDetail {
                tokens: 1234,
                damp_percent: Some(0.01),
                loss: None,
                awq_ratio: Some(0.35),
                note: Some("ünïcode note".into()),
            }),
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
}
