//! GPTQ checkpoint layout as written by AutoGPTQ and GPTQModel and read by
//! transformers (optimum) and vLLM.
//!
//! Sources: AutoGPTQ `auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py` (`pack`,
//! forward dequantization with `zeros + 1`), `auto_gptq/quantization/config.py`
//! (`BaseQuantizeConfig`); GPTQModel 7.7 `gptqmodel/nn_modules/qlinear/__init__.py`
//! (`PackableQuantLinear.dequantize_weight`, including the 3-bit word layout) and
//! `gptqmodel/utils/model.py` (`convert_gptq_v1_to_v2_format_module`: v1 stores
//! `zero - 1`, v2 stores the zero itself). Summarised in
//! `shared/docs/reference-facts.md` §5a.
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `qweight` | int32 | `[in*bits/32, out]` | column `o` is the LSB-first bit stream of `q[o, 0..in]` ([`crate::bitpack`]) |
//! | `qzeros` | int32 | `[n_groups, out*bits/32]` | row `g` is the stream of the zeros of group `g` over outputs; v1 stores `(zero-1) & maxq` |
//! | `scales` | f16 | `[n_groups, out]` | |
//! | `g_idx` | int32 | `[in]` | group of each input column (`i / group_size` without act-order) |
//!
//! For 2/4/8 bits no value crosses a word; for 3 bits 32 values fill 3 words with
//! values 10 and 21 straddling words, exactly the dense stream.
//!
//! v1 and a zero point of 0: v1 stores `-1`, which AutoGPTQ masks back
//! (`(stored + 1) & maxq`); we store the masked value `maxq`, which AutoGPTQ and
//! per-value readers decode exactly, but GPTQModel's whole-word `+0x11111111`
//! v1→v2 conversion carries into the neighbouring value. [`v1_is_exact`] tells
//! whether a tensor avoids that case; prefer [`GptqFormat::V2`] for asymmetric
//! tensors where it does not.

use half::f16;
use serde_json::{json, Value};

use crate::bitpack::{pack_stream, unpack_stream};
use crate::error::unsupported;
use crate::{Error, HfTensor, IntQuantized, Result};

const LAYOUT: &str = "GPTQ";

/// How zero points are stored (`checkpoint_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptqFormat {
    /// `"gptq"`: stores `zero - 1` (every reader adds 1 back)
    V1,
    /// `"gptq_v2"`: stores `zero`
    V2,
}

impl GptqFormat {
    /// The layout a `checkpoint_format` value (or its short forms `v1`, `v2`,
    /// `gptq_v1`) names.
    pub fn from_name(name: &str) -> Option<GptqFormat> {
        match name {
            "gptq" | "gptq_v1" | "v1" => Some(GptqFormat::V1),
            "gptq_v2" | "v2" => Some(GptqFormat::V2),
            _ => None,
        }
    }

    /// The `checkpoint_format` value.
    pub fn checkpoint_format(self) -> &'static str {
        match self {
            GptqFormat::V1 => "gptq",
            GptqFormat::V2 => "gptq_v2",
        }
    }

    /// Parses a `checkpoint_format` value.
    pub fn from_checkpoint_format(s: &str) -> Option<Self> {
        match s {
            "gptq" => Some(GptqFormat::V1),
            "gptq_v2" => Some(GptqFormat::V2),
            _ => None,
        }
    }
}

/// The four tensors of one GPTQ linear layer (row-major, shapes in the methods).
#[derive(Clone, Debug, PartialEq)]
pub struct GptqTensors {
    pub bits: u8,
    pub in_features: usize,
    pub out_features: usize,
    pub n_groups: usize,
    /// `[in*bits/32, out]`
    pub qweight: Vec<u32>,
    /// `[n_groups, out*bits/32]`
    pub qzeros: Vec<u32>,
    /// `[n_groups, out]`
    pub scales: Vec<f16>,
    /// `[in]`
    pub g_idx: Vec<i32>,
}

impl GptqTensors {
    pub fn qweight_shape(&self) -> [usize; 2] {
        [
            self.in_features * self.bits as usize / 32,
            self.out_features,
        ]
    }
    pub fn qzeros_shape(&self) -> [usize; 2] {
        [self.n_groups, self.out_features * self.bits as usize / 32]
    }
    pub fn scales_shape(&self) -> [usize; 2] {
        [self.n_groups, self.out_features]
    }

    /// `{prefix}.qweight`, `.qzeros`, `.scales`, `.g_idx` (prefix = the module name,
    /// e.g. `model.layers.0.self_attn.q_proj`).
    pub fn to_hf_tensors(&self, prefix: &str) -> Vec<(String, HfTensor)> {
        vec![
            (
                format!("{prefix}.qweight"),
                HfTensor::from_u32_as_i32(&self.qweight_shape(), &self.qweight),
            ),
            (
                format!("{prefix}.qzeros"),
                HfTensor::from_u32_as_i32(&self.qzeros_shape(), &self.qzeros),
            ),
            (
                format!("{prefix}.scales"),
                HfTensor::from_f16(&self.scales_shape(), &self.scales),
            ),
            (
                format!("{prefix}.g_idx"),
                HfTensor::from_i32(&[self.in_features], &self.g_idx),
            ),
        ]
    }

    /// Reads the tensors back from `{prefix}.qweight` etc.
    pub fn from_hf_tensors(
        bits: u8,
        get: impl Fn(&str) -> Option<HfTensor>,
        prefix: &str,
    ) -> Result<Self> {
        let fetch = |name: &str| {
            get(&format!("{prefix}.{name}"))
                .ok_or_else(|| Error::Invalid(format!("missing tensor {prefix}.{name}")))
        };
        let qweight = fetch("qweight")?;
        let qzeros = fetch("qzeros")?;
        let scales = fetch("scales")?;
        let g_idx = fetch("g_idx")?;
        let wrong = |n: &str| Error::Invalid(format!("{prefix}.{n} has the wrong dtype or rank"));
        if qweight.shape.len() != 2 || scales.shape.len() != 2 {
            return Err(wrong("qweight/scales"));
        }
        let t = GptqTensors {
            bits,
            in_features: g_idx.numel(),
            out_features: qweight.shape[1],
            n_groups: scales.shape[0],
            qweight: qweight.to_u32_words().ok_or_else(|| wrong("qweight"))?,
            qzeros: qzeros.to_u32_words().ok_or_else(|| wrong("qzeros"))?,
            scales: scales.to_f16_vec().ok_or_else(|| wrong("scales"))?,
            g_idx: g_idx.to_i32_vec().ok_or_else(|| wrong("g_idx"))?,
        };
        if qweight.shape[..] != t.qweight_shape()[..] || qzeros.shape[..] != t.qzeros_shape()[..] {
            return Err(wrong("qweight/qzeros shape"));
        }
        Ok(t)
    }
}

/// `true` when v1's `zero - 1` needs no wrap-around (no zero point is 0).
pub fn v1_is_exact(q: &IntQuantized) -> bool {
    q.zeros.iter().all(|&z| z != 0)
}

fn check_shape(q: &IntQuantized) -> Result<()> {
    q.validate()?;
    if ![2u8, 3, 4, 8].contains(&q.bits) {
        return Err(unsupported(
            LAYOUT,
            format!("{} bits (2, 3, 4, 8 only)", q.bits),
        ));
    }
    let b = q.bits as usize;
    if !(q.in_features * b).is_multiple_of(32)
        || !(q.out_features * b).is_multiple_of(32)
        || q.in_features == 0
    {
        return Err(unsupported(
            LAYOUT,
            format!(
                "shape [{}, {}]: in*bits and out*bits must be multiples of 32",
                q.out_features, q.in_features
            ),
        ));
    }
    Ok(())
}

/// Packs `q` into GPTQ tensors.
pub fn pack(q: &IntQuantized, format: GptqFormat) -> Result<GptqTensors> {
    check_shape(q)?;
    let (out, inp, ng, bits) = (q.out_features, q.in_features, q.n_groups(), q.bits);
    let rows = inp * bits as usize / 32;
    let mut qweight = vec![0u32; rows * out];
    for o in 0..out {
        let words = pack_stream(q.q[o * inp..(o + 1) * inp].iter().copied(), bits);
        for (r, w) in words.into_iter().enumerate() {
            qweight[r * out + o] = w;
        }
    }
    let maxq = q.maxq();
    let stored = |z: u8| match format {
        GptqFormat::V1 => z.wrapping_sub(1) & maxq,
        GptqFormat::V2 => z,
    };
    let mut qzeros = Vec::with_capacity(ng * out * bits as usize / 32);
    let mut scales = Vec::with_capacity(ng * out);
    for g in 0..ng {
        qzeros.extend(pack_stream(
            (0..out).map(|o| stored(q.zeros[o * ng + g])),
            bits,
        ));
        scales.extend((0..out).map(|o| q.scales[o * ng + g]));
    }
    let g_idx = q.g_idx_or_default().into_iter().map(|g| g as i32).collect();
    Ok(GptqTensors {
        bits,
        in_features: inp,
        out_features: out,
        n_groups: ng,
        qweight,
        qzeros,
        scales,
        g_idx,
    })
}

/// Unpacks GPTQ tensors. `group_size` and `symmetric` come from the config
/// (`group_size: -1` is `None`); a `g_idx` equal to the default comes back as `None`.
pub fn unpack(
    t: &GptqTensors,
    group_size: Option<usize>,
    symmetric: bool,
    format: GptqFormat,
) -> Result<IntQuantized> {
    let (out, inp, ng, bits) = (t.out_features, t.in_features, t.n_groups, t.bits);
    let bad = |m: &str| Err(Error::Invalid(format!("GPTQ tensors: {m}")));
    if ![2u8, 3, 4, 8].contains(&bits) {
        return bad("bits must be 2, 3, 4 or 8");
    }
    let rows = inp * bits as usize / 32;
    let zcols = out * bits as usize / 32;
    if t.qweight.len() != rows * out
        || t.qzeros.len() != ng * zcols
        || t.scales.len() != ng * out
        || t.g_idx.len() != inp
    {
        return bad("tensor sizes do not match [in, out, n_groups]");
    }
    let mut q = vec![0u8; out * inp];
    let mut col = vec![0u32; rows];
    for o in 0..out {
        for (r, c) in col.iter_mut().enumerate() {
            *c = t.qweight[r * out + o];
        }
        q[o * inp..(o + 1) * inp].copy_from_slice(&unpack_stream(&col, bits, inp));
    }
    let maxq = ((1u16 << bits) - 1) as u8;
    let mut zeros = vec![0u8; out * ng];
    let mut scales = vec![f16::ZERO; out * ng];
    for g in 0..ng {
        let z = unpack_stream(&t.qzeros[g * zcols..(g + 1) * zcols], bits, out);
        for o in 0..out {
            zeros[o * ng + g] = match format {
                GptqFormat::V1 => z[o].wrapping_add(1) & maxq,
                GptqFormat::V2 => z[o],
            };
            scales[o * ng + g] = t.scales[g * out + o];
        }
    }
    let g_idx: Vec<u32> = t.g_idx.iter().map(|&g| g as u32).collect();
    let mut r = IntQuantized {
        bits,
        group_size,
        symmetric,
        out_features: out,
        in_features: inp,
        q,
        scales,
        zeros,
        g_idx: Some(g_idx),
    };
    if r.n_groups() != ng {
        return bad("n_groups does not match group_size");
    }
    if r.has_default_g_idx() {
        r.g_idx = None;
    }
    r.validate()?;
    Ok(r)
}

/// The quantization settings written to `quantize_config.json` and `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqConfig {
    pub bits: u8,
    /// `None` = per channel (`-1`)
    pub group_size: Option<usize>,
    /// act-order (g_idx is a permutation of groups)
    pub desc_act: bool,
    pub sym: bool,
    pub format: GptqFormat,
    pub damp_percent: f64,
    pub true_sequential: bool,
    pub static_groups: bool,
    /// whether `lm_head` is quantized too
    pub lm_head: bool,
    /// e.g. `"llm-quantize:0.1.0"` (GPTQModel's `meta.quantizer`)
    pub quantizer: String,
}

impl GptqConfig {
    /// Settings describing `q` (desc_act when it carries a non-default g_idx).
    pub fn for_quantized(q: &IntQuantized, format: GptqFormat) -> Self {
        GptqConfig {
            bits: q.bits,
            group_size: q.group_size,
            desc_act: !q.has_default_g_idx(),
            sym: q.symmetric,
            format,
            damp_percent: 0.01,
            true_sequential: true,
            static_groups: false,
            lm_head: false,
            quantizer: format!("llm-quantize:{}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn group_size_json(&self) -> i64 {
        self.group_size.map_or(-1, |g| g as i64)
    }

    /// The `quantization_config` object for `config.json` (transformers / vLLM /
    /// GPTQModel read these keys).
    pub fn quantization_config(&self) -> Value {
        json!({
            "quant_method": "gptq",
            "bits": self.bits,
            "group_size": self.group_size_json(),
            "desc_act": self.desc_act,
            "sym": self.sym,
            "lm_head": self.lm_head,
            "checkpoint_format": self.format.checkpoint_format(),
            "pack_dtype": "int32",
            "damp_percent": self.damp_percent,
            "true_sequential": self.true_sequential,
            "static_groups": self.static_groups,
            "meta": {
                "quantizer": [self.quantizer],
                "damp_percent": self.damp_percent,
                "static_groups": self.static_groups,
                "true_sequential": self.true_sequential,
            },
        })
    }

    /// [`Self::quantization_config`] with the modules in `ignored` (full names, e.g.
    /// `lm_head`) left unquantized through GPTQModel's per-module override `dynamic`
    /// (`"-:^name$"` = not quantized).
    pub fn quantization_config_excluding(&self, ignored: &[String]) -> Value {
        let mut v = self.quantization_config();
        if !ignored.is_empty() {
            let dynamic: serde_json::Map<String, Value> = ignored
                .iter()
                .map(|m| (format!("-:^{}$", m.replace('.', "\\.")), json!({})))
                .collect();
            v["dynamic"] = Value::Object(dynamic);
        }
        v
    }

    /// `quantize_config.json` (AutoGPTQ `BaseQuantizeConfig` fields).
    pub fn quantize_config_json(&self) -> Value {
        let mut v = self.quantization_config();
        let m = v.as_object_mut().expect("object");
        m.insert("model_name_or_path".into(), Value::Null);
        m.insert("model_file_base_name".into(), json!("model"));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(bits: u8, sym: bool) -> IntQuantized {
        let (out, inp) = (32usize, 64usize);
        let maxq = (1u16 << bits) - 1;
        let mid = 1u8 << (bits - 1);
        IntQuantized {
            bits,
            group_size: Some(32),
            symmetric: sym,
            out_features: out,
            in_features: inp,
            q: (0..out * inp)
                .map(|i| (i % (maxq as usize + 1)) as u8)
                .collect(),
            scales: (0..out * 2)
                .map(|i| f16::from_f32(0.01 * (i + 1) as f32))
                .collect(),
            zeros: (0..out * 2)
                .map(|i| {
                    if sym {
                        mid
                    } else {
                        (i % (maxq as usize + 1)) as u8
                    }
                })
                .collect(),
            g_idx: None,
        }
    }

    #[test]
    fn four_bit_sym_v1_qzeros_are_0x77777777() {
        let t = pack(&tiny(4, true), GptqFormat::V1).unwrap();
        assert!(t.qzeros.iter().all(|&w| w == 0x7777_7777));
        let t = pack(&tiny(4, true), GptqFormat::V2).unwrap();
        assert!(t.qzeros.iter().all(|&w| w == 0x8888_8888));
    }

    #[test]
    fn qweight_packs_eight_input_rows_per_word() {
        let q = tiny(4, false);
        let t = pack(&q, GptqFormat::V2).unwrap();
        assert_eq!(t.qweight_shape(), [8, 32]);
        // word (r=0, o=1) holds q[1, 0..8] in nibbles low to high
        let mut w = 0u32;
        for i in 0..8 {
            w |= (q.q[64 + i] as u32) << (4 * i);
        }
        assert_eq!(t.qweight[1], w);
    }

    #[test]
    fn roundtrip_both_formats() {
        for bits in [2u8, 3, 4, 8] {
            for sym in [false, true] {
                for fmt in [GptqFormat::V1, GptqFormat::V2] {
                    let q = tiny(bits, sym);
                    let t = pack(&q, fmt).unwrap();
                    assert_eq!(unpack(&t, q.group_size, sym, fmt).unwrap(), q);
                }
            }
        }
    }
}
