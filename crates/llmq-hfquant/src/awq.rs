//! AutoAWQ "GEMM" checkpoint layout (`version: "gemm"`), read by transformers and
//! vLLM's `awq` / `awq_marlin` methods.
//!
//! Sources: AutoAWQ 0.2.9 `awq/modules/linear/gemm.py` (`WQLinear_GEMM.from_linear`:
//! `order_map = [0, 2, 4, 6, 1, 3, 5, 7]`, `qweight[:, col] |= intweight[:, col*8 +
//! order_map[i]] << (i*4)`, the same for `qzeros`, zeros stored as they are),
//! `awq/utils/packing_utils.py` (`unpack_awq`, `reverse_awq_order` with
//! `AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]`, `dequantize_gemm`:
//! `(iweight - izeros) * scales` with groups `i // group_size`), `awq/models/_config.py`
//! (`to_transformers_dict`). Summarised in `shared/docs/reference-facts.md` §5b.
//!
//! | tensor | dtype | shape |
//! |---|---|---|
//! | `qweight` | int32 | `[in, out/8]` |
//! | `qzeros` | int32 | `[in/group_size, out/8]` |
//! | `scales` | f16 | `[in/group_size, out]` |
//!
//! Word `c` of input row `i` holds, in nibble `k` (bits `4k..4k+3`), output column
//! `8c + ORDER[k]`. Only 4 bits, no act-order, and `in` divisible by the group size.

use half::f16;
use serde_json::{json, Value};

use crate::error::unsupported;
use crate::{Error, HfTensor, IntQuantized, Result};

const LAYOUT: &str = "AWQ (GEMM)";

/// Nibble `k` of a word holds column `ORDER[k]` of its group of 8.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Column `j` of a group of 8 is in nibble `AWQ_REVERSE_ORDER[j]`.
pub const AWQ_REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The three tensors of one AWQ GEMM linear layer (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct AwqTensors {
    pub in_features: usize,
    pub out_features: usize,
    pub group_size: usize,
    /// `[in, out/8]`
    pub qweight: Vec<u32>,
    /// `[in/group_size, out/8]`
    pub qzeros: Vec<u32>,
    /// `[in/group_size, out]`
    pub scales: Vec<f16>,
}

impl AwqTensors {
    pub fn n_groups(&self) -> usize {
        self.in_features / self.group_size
    }
    pub fn qweight_shape(&self) -> [usize; 2] {
        [self.in_features, self.out_features / 8]
    }
    pub fn qzeros_shape(&self) -> [usize; 2] {
        [self.n_groups(), self.out_features / 8]
    }
    pub fn scales_shape(&self) -> [usize; 2] {
        [self.n_groups(), self.out_features]
    }

    /// `{prefix}.qweight`, `.qzeros`, `.scales`.
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
        ]
    }
}

/// Packs 8 codes (columns `8c..8c+8` in natural order) into one AWQ word.
pub fn pack_word(cols: &[u8]) -> u32 {
    let mut w = 0u32;
    for (k, &j) in AWQ_ORDER.iter().enumerate() {
        w |= ((cols[j] & 0xF) as u32) << (4 * k);
    }
    w
}

/// Inverse of [`pack_word`]: the 8 codes in natural column order.
pub fn unpack_word(w: u32) -> [u8; 8] {
    let mut cols = [0u8; 8];
    for (j, c) in cols.iter_mut().enumerate() {
        *c = ((w >> (4 * AWQ_REVERSE_ORDER[j])) & 0xF) as u8;
    }
    cols
}

/// Packs `q` into AutoAWQ GEMM tensors.
pub fn pack(q: &IntQuantized) -> Result<AwqTensors> {
    q.validate()?;
    if q.bits != 4 {
        return Err(unsupported(LAYOUT, format!("{} bits (4 only)", q.bits)));
    }
    let gs = q
        .group_size
        .ok_or_else(|| unsupported(LAYOUT, "per-channel scales (needs a group size)"))?;
    let (out, inp) = (q.out_features, q.in_features);
    if out % 8 != 0 || inp % gs != 0 {
        return Err(unsupported(
            LAYOUT,
            format!("shape [{out}, {inp}]: out must be a multiple of 8, in of {gs}"),
        ));
    }
    if !q.has_default_g_idx() {
        return Err(unsupported(LAYOUT, "act-order g_idx"));
    }
    let ng = q.n_groups();
    let wc = out / 8;
    let mut qweight = vec![0u32; inp * wc];
    let mut cols = [0u8; 8];
    for i in 0..inp {
        for c in 0..wc {
            for (j, v) in cols.iter_mut().enumerate() {
                *v = q.q[(8 * c + j) * inp + i];
            }
            qweight[i * wc + c] = pack_word(&cols);
        }
    }
    let mut qzeros = vec![0u32; ng * wc];
    let mut scales = vec![f16::ZERO; ng * out];
    for g in 0..ng {
        for c in 0..wc {
            for (j, v) in cols.iter_mut().enumerate() {
                *v = q.zeros[(8 * c + j) * ng + g];
            }
            qzeros[g * wc + c] = pack_word(&cols);
        }
        for o in 0..out {
            scales[g * out + o] = q.scales[o * ng + g];
        }
    }
    Ok(AwqTensors {
        in_features: inp,
        out_features: out,
        group_size: gs,
        qweight,
        qzeros,
        scales,
    })
}

/// Unpacks AWQ GEMM tensors (always asymmetric: `symmetric` is false).
pub fn unpack(t: &AwqTensors) -> Result<IntQuantized> {
    let (out, inp, gs) = (t.out_features, t.in_features, t.group_size);
    if gs == 0 || out % 8 != 0 || inp % gs != 0 {
        return Err(Error::Invalid(format!(
            "AWQ shape [{out}, {inp}] group {gs}"
        )));
    }
    let (ng, wc) = (inp / gs, out / 8);
    if t.qweight.len() != inp * wc || t.qzeros.len() != ng * wc || t.scales.len() != ng * out {
        return Err(Error::Invalid("AWQ tensor sizes do not match".into()));
    }
    let mut q = vec![0u8; out * inp];
    for i in 0..inp {
        for c in 0..wc {
            for (j, v) in unpack_word(t.qweight[i * wc + c]).into_iter().enumerate() {
                q[(8 * c + j) * inp + i] = v;
            }
        }
    }
    let mut zeros = vec![0u8; out * ng];
    let mut scales = vec![f16::ZERO; out * ng];
    for g in 0..ng {
        for c in 0..wc {
            for (j, v) in unpack_word(t.qzeros[g * wc + c]).into_iter().enumerate() {
                zeros[(8 * c + j) * ng + g] = v;
            }
        }
        for o in 0..out {
            scales[o * ng + g] = t.scales[g * out + o];
        }
    }
    let r = IntQuantized {
        bits: 4,
        group_size: Some(gs),
        symmetric: false,
        out_features: out,
        in_features: inp,
        q,
        scales,
        zeros,
        g_idx: None,
    };
    r.validate()?;
    Ok(r)
}

/// `quantization_config` for `config.json` (AutoAWQ `to_transformers_dict`).
pub fn quantization_config(group_size: usize, modules_to_not_convert: Option<&[String]>) -> Value {
    json!({
        "quant_method": "awq",
        "zero_point": true,
        "group_size": group_size,
        "bits": 4,
        "version": "gemm",
        "modules_to_not_convert": modules_to_not_convert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_order_matches_autoawq() {
        // columns 0..8 with values 0..8: nibble k holds column ORDER[k]
        let w = pack_word(&[0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(w, 0x7531_6420);
        assert_eq!(unpack_word(w), [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn roundtrip() {
        let (out, inp) = (16usize, 64usize);
        let q = IntQuantized {
            bits: 4,
            group_size: Some(32),
            symmetric: false,
            out_features: out,
            in_features: inp,
            q: (0..out * inp).map(|i| (i * 7 % 16) as u8).collect(),
            scales: (0..out * 2)
                .map(|i| f16::from_f32(i as f32 * 0.5 + 0.25))
                .collect(),
            zeros: (0..out * 2).map(|i| (i * 5 % 16) as u8).collect(),
            g_idx: None,
        };
        let t = pack(&q).unwrap();
        assert_eq!(unpack(&t).unwrap(), q);
    }
}
