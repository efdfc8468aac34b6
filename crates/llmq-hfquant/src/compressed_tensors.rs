//! compressed-tensors `pack-quantized` layout (llm-compressor's output, read by vLLM
//! and by transformers through the `compressed-tensors` package), for the integer
//! weight-only presets `W4A16`, `W4A16_ASYM` and `W8A16` (and any `W{2..8}A16`
//! group or channel scheme).
//!
//! Every convention here is taken from the `compressed-tensors` 0.20.0 package:
//! - `compressors/pack_quantized/base.py` (`PackedQuantizationCompressor`): tensors
//!   `weight_packed` (int32), `weight_scale`, `weight_shape` (`torch.tensor(shape)`,
//!   int64), and `weight_zero_point` only when asymmetric with strategy group or
//!   channel, packed along dim 0;
//! - `compressors/pack_quantized/helpers.py` (`pack_to_int32`): values are signed
//!   (`q - 2^(bits-1)`, range `[-2^(bits-1), 2^(bits-1)-1]`) and packed as
//!   `signed + 2^(bits-1)`, i.e. our unsigned code, densely LSB-first into
//!   `ceil(n*bits/32)` words per row ([`crate::bitpack`]); the zero point goes through
//!   the same offset, so the stored zero is our unsigned zero too;
//! - `quantization/lifecycle/forward_helpers.py` (`_dequantize`):
//!   `w = (q_signed - zp_signed) * scale`, no zero point when symmetric, which equals
//!   `scale * (q - 2^(bits-1))`: symmetric tensors must have zero `2^(bits-1)`;
//!   group strategy needs `in % group_size == 0`;
//! - `quantization/quant_scheme.py` presets: `W4A16` = `_int_wnam(4)` (int, 4 bits,
//!   group 128, symmetric, static), `W8A16` = `_int_wnam(8)` (the same at 8 bits),
//!   `W4A16_ASYM` = 4 bits group 128 asymmetric;
//! - `quantization/quant_args.py`, `quant_config.py` and
//!   `compressors/model_compressors/model_compressor.py` (`update_config`): the JSON
//!   of `quantization_config`. Activation ordering `"group"` (a stored
//!   `weight_g_idx`) "has been removed" in 0.20 (the validator rejects it); we
//!   write it only when asked to (older loaders, vLLM's `weight_g_idx` path).

use half::f16;
use serde_json::{json, Value};

use crate::bitpack::{pack_stream, unpack_stream, words_for};
use crate::error::unsupported;
use crate::rtn::RtnConfig;
use crate::{Error, HfTensor, IntQuantized, Result};

const LAYOUT: &str = "compressed-tensors pack-quantized";

/// The `compressed-tensors` version whose conventions and config we follow
/// (written as `quantization_config.version`).
pub const COMPRESSED_TENSORS_VERSION: &str = "0.20.0";

/// How scales are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtStrategy {
    /// `"group"` with this many input columns per scale
    Group(usize),
    /// `"channel"`: one scale per output row
    Channel,
}

/// The `weights` quantization args of one config group (integer weights only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtWeightScheme {
    pub num_bits: u8,
    pub symmetric: bool,
    pub strategy: CtStrategy,
}

/// The integer weight-only presets of `compressed_tensors.quantization.quant_scheme`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtPreset {
    W4A16,
    W4A16Asym,
    W8A16,
}

impl CtPreset {
    /// `"W4A16"`, `"W4A16_ASYM"`, `"W8A16"` (any case).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "W4A16" => Some(CtPreset::W4A16),
            "W4A16_ASYM" => Some(CtPreset::W4A16Asym),
            "W8A16" => Some(CtPreset::W8A16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CtPreset::W4A16 => "W4A16",
            CtPreset::W4A16Asym => "W4A16_ASYM",
            CtPreset::W8A16 => "W8A16",
        }
    }

    pub fn scheme(self) -> CtWeightScheme {
        let (num_bits, symmetric) = match self {
            CtPreset::W4A16 => (4, true),
            CtPreset::W4A16Asym => (4, false),
            CtPreset::W8A16 => (8, true),
        };
        CtWeightScheme {
            num_bits,
            symmetric,
            strategy: CtStrategy::Group(128),
        }
    }
}

impl CtWeightScheme {
    /// The scheme that stores `q` as it is.
    pub fn for_quantized(q: &IntQuantized) -> Self {
        CtWeightScheme {
            num_bits: q.bits,
            symmetric: q.symmetric,
            strategy: match q.group_size {
                Some(g) => CtStrategy::Group(g),
                None => CtStrategy::Channel,
            },
        }
    }

    /// Quantizer settings producing tensors of this scheme.
    pub fn rtn_config(&self) -> RtnConfig {
        RtnConfig {
            bits: self.num_bits,
            group_size: match self.strategy {
                CtStrategy::Group(g) => Some(g),
                CtStrategy::Channel => None,
            },
            symmetric: self.symmetric,
        }
    }

    /// `QuantizationArgs` as `model_dump` writes it (None-valued `actorder`,
    /// `block_structure`, `scale_dtype`, `observer`, `zp_dtype` are omitted).
    pub fn weights_json(&self, actorder: Option<&str>) -> Value {
        let (strategy, group_size) = match self.strategy {
            CtStrategy::Group(g) => ("group", json!(g)),
            CtStrategy::Channel => ("channel", Value::Null),
        };
        let mut v = json!({
            "dynamic": false,
            "group_size": group_size,
            "num_bits": self.num_bits,
            "strategy": strategy,
            "symmetric": self.symmetric,
            "type": "int",
        });
        if let Some(a) = actorder {
            v["actorder"] = json!(a);
        }
        v
    }
}

/// The tensors of one pack-quantized linear layer (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct CtTensors {
    pub num_bits: u8,
    pub out_features: usize,
    pub in_features: usize,
    pub n_groups: usize,
    /// `[out, ceil(in*bits/32)]`
    pub weight_packed: Vec<u32>,
    /// `[out, n_groups]`
    pub weight_scale: Vec<f16>,
    /// `[ceil(out*bits/32), n_groups]`, asymmetric only
    pub weight_zero_point: Option<Vec<u32>>,
    /// `[in]`, only for the legacy group activation ordering
    pub weight_g_idx: Option<Vec<i32>>,
}

impl CtTensors {
    pub fn packed_shape(&self) -> [usize; 2] {
        [
            self.out_features,
            words_for(self.in_features, self.num_bits),
        ]
    }
    pub fn scale_shape(&self) -> [usize; 2] {
        [self.out_features, self.n_groups]
    }
    pub fn zero_point_shape(&self) -> [usize; 2] {
        [words_for(self.out_features, self.num_bits), self.n_groups]
    }

    /// `{prefix}.weight_packed`, `.weight_scale`, `.weight_shape`, and
    /// `.weight_zero_point` / `.weight_g_idx` when present.
    pub fn to_hf_tensors(&self, prefix: &str) -> Vec<(String, HfTensor)> {
        let mut v = vec![
            (
                format!("{prefix}.weight_packed"),
                HfTensor::from_u32_as_i32(&self.packed_shape(), &self.weight_packed),
            ),
            (
                format!("{prefix}.weight_scale"),
                HfTensor::from_f16(&self.scale_shape(), &self.weight_scale),
            ),
            (
                format!("{prefix}.weight_shape"),
                HfTensor::from_i64(&[2], &[self.out_features as i64, self.in_features as i64]),
            ),
        ];
        if let Some(z) = &self.weight_zero_point {
            v.push((
                format!("{prefix}.weight_zero_point"),
                HfTensor::from_u32_as_i32(&self.zero_point_shape(), z),
            ));
        }
        if let Some(g) = &self.weight_g_idx {
            v.push((
                format!("{prefix}.weight_g_idx"),
                HfTensor::from_i32(&[self.in_features], g),
            ));
        }
        v
    }
}

/// Packs `q`. A non-default act-order `g_idx` is an error unless
/// `legacy_group_actorder` (then `weight_g_idx` is written and the config must say
/// `actorder: "group"`, see [`quantization_config`]).
pub fn pack(q: &IntQuantized, legacy_group_actorder: bool) -> Result<CtTensors> {
    q.validate()?;
    if !(2..=8).contains(&q.bits) {
        return Err(unsupported(LAYOUT, format!("{} bits", q.bits)));
    }
    if let Some(g) = q.group_size {
        if !q.in_features.is_multiple_of(g) {
            return Err(unsupported(
                LAYOUT,
                format!(
                    "in_features {} not divisible by group_size {g}",
                    q.in_features
                ),
            ));
        }
    }
    let weight_g_idx = if q.has_default_g_idx() {
        None
    } else if legacy_group_actorder {
        Some(q.g_idx_or_default().into_iter().map(|g| g as i32).collect())
    } else {
        return Err(unsupported(
            LAYOUT,
            "act-order g_idx (actorder \"group\" was removed from compressed-tensors; \
             pass legacy_group_actorder to write weight_g_idx anyway)",
        ));
    };
    let (out, inp, ng, bits) = (q.out_features, q.in_features, q.n_groups(), q.bits);
    let mut weight_packed = Vec::with_capacity(out * words_for(inp, bits));
    for o in 0..out {
        weight_packed.extend(pack_stream(
            q.q[o * inp..(o + 1) * inp].iter().copied(),
            bits,
        ));
    }
    let weight_zero_point = (!q.symmetric).then(|| {
        let zw = words_for(out, bits);
        let mut z = vec![0u32; zw * ng];
        for g in 0..ng {
            let col = pack_stream((0..out).map(|o| q.zeros[o * ng + g]), bits);
            for (w, word) in col.into_iter().enumerate() {
                z[w * ng + g] = word;
            }
        }
        z
    });
    Ok(CtTensors {
        num_bits: bits,
        out_features: out,
        in_features: inp,
        n_groups: ng,
        weight_packed,
        weight_scale: q.scales.clone(),
        weight_zero_point,
        weight_g_idx,
    })
}

/// Unpacks pack-quantized tensors written with `scheme`.
pub fn unpack(t: &CtTensors, scheme: &CtWeightScheme) -> Result<IntQuantized> {
    let (out, inp, ng, bits) = (t.out_features, t.in_features, t.n_groups, t.num_bits);
    let bad = |m: &str| Err(Error::Invalid(format!("pack-quantized tensors: {m}")));
    if bits != scheme.num_bits || !(1..=8).contains(&bits) {
        return bad("num_bits does not match the scheme");
    }
    let pw = words_for(inp, bits);
    if t.weight_packed.len() != out * pw || t.weight_scale.len() != out * ng {
        return bad("tensor sizes do not match weight_shape");
    }
    let mut q = Vec::with_capacity(out * inp);
    for o in 0..out {
        q.extend(unpack_stream(
            &t.weight_packed[o * pw..(o + 1) * pw],
            bits,
            inp,
        ));
    }
    let zeros = if scheme.symmetric {
        vec![1u8 << (bits - 1); out * ng]
    } else {
        let Some(zp) = &t.weight_zero_point else {
            return bad("asymmetric scheme without weight_zero_point");
        };
        let zw = words_for(out, bits);
        if zp.len() != zw * ng {
            return bad("weight_zero_point size");
        }
        let mut zeros = vec![0u8; out * ng];
        let mut col = vec![0u32; zw];
        for g in 0..ng {
            for (w, c) in col.iter_mut().enumerate() {
                *c = zp[w * ng + g];
            }
            for (o, z) in unpack_stream(&col, bits, out).into_iter().enumerate() {
                zeros[o * ng + g] = z;
            }
        }
        zeros
    };
    let group_size = match scheme.strategy {
        CtStrategy::Group(g) => Some(g),
        CtStrategy::Channel => None,
    };
    let mut r = IntQuantized {
        bits,
        group_size,
        symmetric: scheme.symmetric,
        out_features: out,
        in_features: inp,
        q,
        scales: t.weight_scale.clone(),
        zeros,
        g_idx: t
            .weight_g_idx
            .as_ref()
            .map(|g| g.iter().map(|&x| x as u32).collect()),
    };
    if r.n_groups() != ng {
        return bad("weight_scale columns do not match the strategy");
    }
    if r.has_default_g_idx() {
        r.g_idx = None;
    }
    r.validate()?;
    Ok(r)
}

/// The `quantization_config` of `config.json` as `ModelCompressor.update_config`
/// writes it: one config group `group_0` targeting `Linear`, format
/// `pack-quantized`, status `compressed`. `ignore` lists unquantized modules
/// (llm-compressor's default is `["lm_head"]`). `legacy_group_actorder` adds
/// `"actorder": "group"` (for tensors carrying `weight_g_idx`).
pub fn quantization_config(
    scheme: &CtWeightScheme,
    ignore: &[String],
    legacy_group_actorder: bool,
) -> Value {
    let actorder = legacy_group_actorder.then_some("group");
    json!({
        "config_groups": {
            "group_0": {
                "format": "pack-quantized",
                "input_activations": null,
                "output_activations": null,
                "targets": ["Linear"],
                "weights": scheme.weights_json(actorder),
            }
        },
        "format": "pack-quantized",
        "global_compression_ratio": null,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "moe_sparsity_config": null,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": COMPRESSED_TENSORS_VERSION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets() {
        assert_eq!(CtPreset::from_name("w4a16_asym"), Some(CtPreset::W4A16Asym));
        let s = CtPreset::W8A16.scheme();
        assert_eq!(
            (s.num_bits, s.symmetric, s.strategy),
            (8, true, CtStrategy::Group(128))
        );
        let c = quantization_config(&CtPreset::W4A16.scheme(), &["lm_head".into()], false);
        assert_eq!(c["config_groups"]["group_0"]["weights"]["group_size"], 128);
        assert!(c["config_groups"]["group_0"]["weights"]
            .get("actorder")
            .is_none());
    }

    #[test]
    fn signed_offset_is_unsigned_code() {
        // 4-bit symmetric: signed -8..7 stored +8 -> our codes 0..15 packed as is
        let q = IntQuantized {
            bits: 4,
            group_size: None,
            symmetric: true,
            out_features: 1,
            in_features: 8,
            q: vec![0, 1, 2, 3, 12, 13, 14, 15],
            scales: vec![f16::ONE],
            zeros: vec![8],
            g_idx: None,
        };
        let t = pack(&q, false).unwrap();
        assert_eq!(t.weight_packed, vec![0xFEDC_3210]);
        assert!(t.weight_zero_point.is_none());
        assert_eq!(unpack(&t, &CtWeightScheme::for_quantized(&q)).unwrap(), q);
    }
}
