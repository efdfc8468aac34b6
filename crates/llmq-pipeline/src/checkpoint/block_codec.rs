//! The block files of the calibrated checkpoint: what one block contributed to the
//! output ([`BlockState`]: its quantized modules with their integers bit-packed, the
//! report lines, the norms AWQ folded its scales into, the modules kept in full
//! precision, and trellis-coded and floating-point-coded modules in tagged sections of
//! their own), serialized little-endian and length-prefixed behind a magic.

use crate::report::{CalibrationDetail, TensorReport};
use half::f16;
use llmq_hfquant::{bitpack, FpQuantized, FpScheme, IntQuantized};
use llmq_trellis::quantize::Exl3Linear;
use llmq_trellis::Codebook;

const BLOCK_MAGIC: &[u8; 8] = b"LLMQCB02";

/// A module on a floating-point grid (GPTQ / MR-GPTQ into compressed-tensors NVFP4,
/// MXFP4, FP8): its codes, in the space of a block-Hadamard input rotation of size
/// `hadamard` when set.
#[derive(Debug, Clone, PartialEq)]
pub struct FpModule {
    pub q: FpQuantized,
    pub hadamard: Option<usize>,
}

impl FpModule {
    /// The dense weight in the original input space (rotation folded back).
    pub fn dense(&self) -> Vec<f32> {
        let deq = self.q.dequantize();
        match self.hadamard {
            Some(b) => llmq_hfquant::hadamard::unrotate(&deq, self.q.in_features, b),
            None => deq,
        }
    }
}

/// What one block contributed to the output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockState {
    /// quantized modules (HF weight name), in the order they were produced
    pub modules: Vec<(String, IntQuantized, TensorReport)>,
    /// trellis-coded modules (EXL3), in the order they were produced
    pub trellis: Vec<(String, Exl3Linear, TensorReport)>,
    /// floating-point-coded modules, in the order they were produced
    pub fp: Vec<(String, FpModule, TensorReport)>,
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
        enc_report(&mut e, st);
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
    // trellis modules (EXL3) follow in a tagged section, only when there are any, so
    // the integer methods' block files stay as they were
    if !b.trellis.is_empty() {
        e.0.extend_from_slice(TRELLIS_TAG);
        e.u32(b.trellis.len() as u32);
        for (name, q, st) in &b.trellis {
            e.str(name);
            e.u32(q.k);
            e.str(q.codebook.name());
            e.u64(q.in_features as u64);
            e.u64(q.out_features as u64);
            e.u64(q.trellis.len() as u64);
            for v in &q.trellis {
                e.0.extend_from_slice(&v.to_le_bytes());
            }
            for v in q.suh.iter().chain(&q.svh) {
                e.0.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            e.u32(q.g_scale.to_bits());
            e.opt_f64(q.proxy_err);
            enc_report(&mut e, st);
        }
    }
    if !b.fp.is_empty() {
        e.0.extend_from_slice(FP_TAG);
        e.u32(b.fp.len() as u32);
        for (name, m, st) in &b.fp {
            let q = &m.q;
            e.str(name);
            e.u8(scheme_id(q.scheme));
            e.u64(q.out_features as u64);
            e.u64(q.in_features as u64);
            enc_ints(&mut e, &q.codes, if q.scheme.is_fp4() { 4 } else { 8 });
            e.u64(q.scales.len() as u64);
            for s in &q.scales {
                e.u32(s.to_bits());
            }
            e.u32(q.global_scale.to_bits());
            e.u64(m.hadamard.map_or(0, |b| b as u64));
            enc_report(&mut e, st);
        }
    }
    e.0
}

const TRELLIS_TAG: &[u8; 4] = b"TRLS";
const FP_TAG: &[u8; 4] = b"FPQ1";
const FP_SCHEMES: [FpScheme; 5] = [
    FpScheme::Nvfp4,
    FpScheme::Mxfp4,
    FpScheme::Fp8Channel,
    FpScheme::Fp8Tensor,
    FpScheme::Fp8Block,
];

fn scheme_id(s: FpScheme) -> u8 {
    FP_SCHEMES.iter().position(|x| *x == s).unwrap_or(0) as u8
}

fn dec_fp(d: &mut Dec<'_>) -> DResult<(String, FpModule, TensorReport)> {
    let name = d.str()?;
    let scheme = *FP_SCHEMES
        .get(d.u8()? as usize)
        .ok_or("unknown floating-point scheme")?;
    let out_features = d.usize()?;
    let in_features = d.usize()?;
    let codes = dec_ints(d, if scheme.is_fp4() { 4 } else { 8 })?;
    let n_scales = d.usize()?;
    let [r, c] = scheme.scale_shape(out_features, in_features);
    if codes.len() != out_features.checked_mul(in_features).ok_or("too large")? || n_scales != r * c
    {
        return Err(format!("{name}: wrong number of codes or scales"));
    }
    let scales = (0..n_scales)
        .map(|_| d.u32().map(f32::from_bits))
        .collect::<DResult<Vec<f32>>>()?;
    let global_scale = f32::from_bits(d.u32()?);
    let hadamard = match d.usize()? {
        0 => None,
        b if b.is_power_of_two() && in_features.is_multiple_of(b) => Some(b),
        b => return Err(format!("{name}: bad Hadamard block {b}")),
    };
    let st = dec_report(d, None)?;
    let q = FpQuantized {
        scheme,
        out_features,
        in_features,
        codes,
        scales,
        global_scale,
    };
    Ok((name, FpModule { q, hadamard }, st))
}

fn enc_report(e: &mut Enc, st: &TensorReport) {
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

/// A report line; `proxy_err` is not stored in it (trellis modules carry it).
fn dec_report(d: &mut Dec<'_>, proxy_err: Option<f64>) -> DResult<TensorReport> {
    Ok(TensorReport {
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
                proxy_err,
            })
        })?,
    })
}

fn dec_trellis(d: &mut Dec<'_>) -> DResult<(String, Exl3Linear, TensorReport)> {
    let name = d.str()?;
    let k = d.u32()?;
    let codebook = Codebook::from_name(&d.str()?).ok_or("unknown codebook")?;
    let in_features = d.usize()?;
    let out_features = d.usize()?;
    let n = d.usize()?;
    if in_features.checked_mul(out_features).ok_or("too large")? / 16 * k as usize != n {
        return Err(format!("{name}: wrong number of trellis words"));
    }
    let raw = d.take(n.checked_mul(2).ok_or("too large")?)?;
    let trellis = raw
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut half = |m: usize| -> DResult<Vec<f16>> {
        Ok(d.take(m.checked_mul(2).ok_or("too large")?)?
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect())
    };
    let suh = half(in_features)?;
    let svh = half(out_features)?;
    let g_scale = f32::from_bits(d.u32()?);
    let proxy_err = d.opt(|d| d.f64())?;
    let st = dec_report(d, proxy_err)?;
    let q = Exl3Linear {
        in_features,
        out_features,
        k,
        codebook,
        trellis,
        suh,
        svh,
        proxy_err,
        g_scale,
    };
    Ok((name, q, st))
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
        let st = dec_report(&mut d, None)?;
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
    while d.at < bytes.len() {
        let tag = d.take(4)?;
        if tag == TRELLIS_TAG && out.trellis.is_empty() {
            for _ in 0..d.u32()? {
                out.trellis.push(dec_trellis(&mut d)?);
            }
        } else if tag == FP_TAG && out.fp.is_empty() {
            for _ in 0..d.u32()? {
                out.fp.push(dec_fp(&mut d)?);
            }
        } else {
            return Err("unknown section".into());
        }
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
                proxy_err: None,
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
            trellis: Vec::new(),
            fp: Vec::new(),
            overrides: vec![("n.weight".into(), vec![1.5, -0.0, f32::MIN_POSITIVE])],
            ignored: vec!["model.layers.0.mlp.gate".into()],
        }
    }

    #[test]
    fn trellis_modules_round_trip() {
        let mut b = sample_block();
        let q = Exl3Linear {
            in_features: 128,
            out_features: 256,
            k: 3,
            codebook: Codebook::Mul1,
            trellis: (0..8 * 16 * 48).map(|i| (i * 7919) as i16).collect(),
            suh: (0..128).map(|i| f16::from_f32(i as f32 * 0.5)).collect(),
            svh: (0..256).map(|i| f16::from_f32(-(i as f32))).collect(),
            proxy_err: Some(0.0123),
            g_scale: 0.75,
        };
        let mut st = b.modules[0].2.clone();
        st.method = "trellis".into();
        st.calibration.as_mut().unwrap().proxy_err = Some(0.0123);
        b.trellis.push(("t.weight".into(), q, st));
        let bytes = encode_block(&b);
        assert_eq!(decode_block(&bytes).unwrap(), b);
        assert!(decode_block(&bytes[..bytes.len() - 1]).is_err());
        // without trellis modules the bytes are the integer methods' format
        b.trellis.clear();
        assert_eq!(encode_block(&b), encode_block(&sample_block()));
    }

    #[test]
    fn fp_modules_round_trip() {
        let mut b = sample_block();
        let w: Vec<f32> = (0..8 * 64)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.01)
            .collect();
        for (k, s) in FP_SCHEMES.into_iter().enumerate() {
            let q = llmq_hfquant::fp_quantized::rtn_fp(&w, 8, 64, s, true);
            let mut st = b.modules[0].2.clone();
            st.method = "mr-gptq".into();
            let hadamard = (k % 2 == 0).then_some(32);
            b.fp.push((format!("f{k}.weight"), FpModule { q, hadamard }, st));
        }
        let bytes = encode_block(&b);
        assert_eq!(decode_block(&bytes).unwrap(), b);
        assert!(decode_block(&bytes[..bytes.len() - 1]).is_err());
        b.fp.clear();
        assert_eq!(encode_block(&b), encode_block(&sample_block()));
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
