//! compressed-tensors' floating-point layouts for [`FpQuantized`] weights, as the
//! `compressed-tensors` package (0.20) compresses and decompresses them:
//!
//! | scheme | format | tensors |
//! |---|---|---|
//! | NVFP4 | `nvfp4-pack-quantized` | `weight_packed` U8 `[out, in/2]`, `weight_scale` F8_E4M3 `[out, in/16]`, `weight_global_scale` F32 `[1]` |
//! | MXFP4 | `mxfp4-pack-quantized` | `weight_packed` U8 `[out, in/2]`, `weight_scale` U8 `[out, in/32]` (E8M0: `127 + log2 scale`) |
//! | FP8 | `float-quantized` | `weight` F8_E4M3 `[out, in]`, `weight_scale` F32 `[out, 1]` / `[1]` / `[⌈out/128⌉, ⌈in/128⌉]` |
//!
//! Packing of FP4: element `2j` in the low nibble of byte `j`, `2j+1` in the high one,
//! each nibble sign (bit 3) and E2M1 magnitude index (`pack_fp4_to_uint8`). The
//! `quantization_config` follows the package's presets `NVFP4A16`, `MXFP4A16`,
//! `FP8_DYNAMIC` (per-channel weights, dynamic per-token FP8 activations: the W8A8-FP8
//! layout vLLM loads), `FP8_BLOCK` (128×128 weight blocks, dynamic per-group-128
//! activations) and a weight-only per-tensor FP8.

use crate::fp_quantized::{FpQuantized, FpScheme};
use crate::tensor::Dtype;
use crate::{Error, HfTensor, Result};
use llmq_formats::minifloat::{e4m3_to_f32, f32_to_e4m3};
use serde_json::{json, Value};

/// The `format` of a scheme.
pub fn format_name(scheme: FpScheme) -> &'static str {
    match scheme {
        FpScheme::Nvfp4 => "nvfp4-pack-quantized",
        FpScheme::Mxfp4 => "mxfp4-pack-quantized",
        _ => "float-quantized",
    }
}

fn pack_nibbles(codes: &[u8]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|p| (p[0] & 15) | (p.get(1).copied().unwrap_or(0) << 4))
        .collect()
}

/// The tensors of one module, named under `prefix`.
pub fn pack(prefix: &str, q: &FpQuantized) -> Vec<(String, HfTensor)> {
    let (o, i) = (q.out_features, q.in_features);
    let sh = q.scheme.scale_shape(o, i);
    let n = |s: &str| format!("{prefix}.{s}");
    match q.scheme {
        FpScheme::Nvfp4 | FpScheme::Mxfp4 => {
            let mut packed = Vec::with_capacity(o * i.div_ceil(2));
            for r in 0..o {
                packed.extend(pack_nibbles(&q.codes[r * i..(r + 1) * i]));
            }
            let scale = if q.scheme == FpScheme::Nvfp4 {
                let b: Vec<u8> = q.scales.iter().map(|&s| f32_to_e4m3(s)).collect();
                HfTensor::from_raw(Dtype::F8E4M3, &sh, b)
            } else {
                let b: Vec<u8> = q
                    .scales
                    .iter()
                    .map(|&s| (127 + s.log2().round() as i32).clamp(0, 254) as u8)
                    .collect();
                HfTensor::from_u8(&sh, &b)
            };
            let mut v = vec![
                (
                    n("weight_packed"),
                    HfTensor::from_u8(&[o, i.div_ceil(2)], &packed),
                ),
                (n("weight_scale"), scale),
            ];
            if q.scheme == FpScheme::Nvfp4 {
                v.push((
                    n("weight_global_scale"),
                    HfTensor::from_f32(&[1], &[q.global_scale]),
                ));
            }
            v
        }
        _ => {
            let shape: Vec<usize> = if q.scheme == FpScheme::Fp8Tensor {
                vec![1]
            } else {
                sh.to_vec()
            };
            vec![
                (
                    n("weight"),
                    HfTensor::from_raw(Dtype::F8E4M3, &[o, i], q.codes.clone()),
                ),
                (n("weight_scale"), HfTensor::from_f32(&shape, &q.scales)),
            ]
        }
    }
}

fn bad(prefix: &str, what: &str) -> Error {
    Error::Tensor {
        name: prefix.to_string(),
        why: what.to_string(),
    }
}

/// One module back from its tensors (`get` by full name); `[out, in]` from the model's
/// config, since the FP4 layouts do not store the unpacked width.
pub fn unpack(
    get: &dyn Fn(&str) -> Option<HfTensor>,
    prefix: &str,
    scheme: FpScheme,
    out: usize,
    inp: usize,
) -> Result<FpQuantized> {
    let fetch =
        |s: &str| get(&format!("{prefix}.{s}")).ok_or_else(|| bad(prefix, &format!("missing {s}")));
    let sh = scheme.scale_shape(out, inp);
    let (codes, scales, global) = match scheme {
        FpScheme::Nvfp4 | FpScheme::Mxfp4 => {
            let p = fetch("weight_packed")?;
            if p.dtype != Dtype::U8 || p.shape != [out, inp.div_ceil(2)] {
                return Err(bad(prefix, "weight_packed is not U8 [out, in/2]"));
            }
            let mut codes = Vec::with_capacity(out * inp);
            for r in 0..out {
                let row = &p.data[r * inp.div_ceil(2)..(r + 1) * inp.div_ceil(2)];
                for c in 0..inp {
                    codes.push((row[c / 2] >> (4 * (c % 2))) & 15);
                }
            }
            let s = fetch("weight_scale")?;
            if s.shape != sh {
                return Err(bad(prefix, "weight_scale shape"));
            }
            let scales: Vec<f32> = match (scheme, s.dtype) {
                (FpScheme::Nvfp4, Dtype::F8E4M3) => {
                    s.data.iter().map(|&b| e4m3_to_f32(b)).collect()
                }
                (FpScheme::Mxfp4, Dtype::U8) => s
                    .data
                    .iter()
                    .map(|&b| f32::powi(2.0, b as i32 - 127))
                    .collect(),
                _ => return Err(bad(prefix, "weight_scale dtype")),
            };
            let global = if scheme == FpScheme::Nvfp4 {
                let g = fetch("weight_global_scale")?
                    .to_f32_vec()
                    .ok_or_else(|| bad(prefix, "weight_global_scale is not F32"))?;
                *g.first()
                    .ok_or_else(|| bad(prefix, "empty weight_global_scale"))?
            } else {
                1.0
            };
            (codes, scales, global)
        }
        _ => {
            let w = fetch("weight")?;
            if w.dtype != Dtype::F8E4M3 || w.shape != [out, inp] {
                return Err(bad(prefix, "weight is not F8_E4M3 [out, in]"));
            }
            let s = fetch("weight_scale")?
                .to_f32_vec()
                .ok_or_else(|| bad(prefix, "weight_scale is not F32"))?;
            if s.len() != sh[0] * sh[1] {
                return Err(bad(prefix, "weight_scale shape"));
            }
            (w.data, s, 1.0)
        }
    };
    Ok(FpQuantized {
        scheme,
        out_features: out,
        in_features: inp,
        codes,
        scales,
        global_scale: global,
    })
}

/// The `weights` (and `input_activations`) of a scheme's config group.
fn group_json(scheme: FpScheme) -> (Value, Value) {
    match scheme {
        FpScheme::Nvfp4 => (
            json!({"num_bits": 4, "type": "float", "symmetric": true, "group_size": 16,
                   "strategy": "tensor_group", "dynamic": false, "scale_dtype": "torch.float8_e4m3fn",
                   "observer": "minmax", "actorder": null, "block_structure": null}),
            Value::Null,
        ),
        FpScheme::Mxfp4 => (
            json!({"num_bits": 4, "type": "float", "symmetric": true, "group_size": 32,
                   "strategy": "group", "dynamic": false, "scale_dtype": "torch.uint8",
                   "observer": "minmax", "actorder": null, "block_structure": null}),
            Value::Null,
        ),
        FpScheme::Fp8Channel => (
            json!({"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
                   "strategy": "channel", "dynamic": false, "observer": "minmax",
                   "actorder": null, "block_structure": null}),
            json!({"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
                   "strategy": "token", "dynamic": true, "observer": null,
                   "actorder": null, "block_structure": null}),
        ),
        FpScheme::Fp8Tensor => (
            json!({"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
                   "strategy": "tensor", "dynamic": false, "observer": "minmax",
                   "actorder": null, "block_structure": null}),
            Value::Null,
        ),
        FpScheme::Fp8Block => (
            json!({"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
                   "strategy": "block", "block_structure": [128, 128], "dynamic": false,
                   "observer": "minmax", "actorder": null}),
            json!({"num_bits": 8, "type": "float", "symmetric": true, "group_size": 128,
                   "strategy": "group", "dynamic": true, "observer": null,
                   "actorder": null, "block_structure": null}),
        ),
    }
}

/// config.json's `quantization_config` for `scheme`, `ignore` listing full-precision
/// modules.
pub fn quantization_config(scheme: FpScheme, ignore: &[String]) -> Value {
    let (w, a) = group_json(scheme);
    let fmt = format_name(scheme);
    json!({
        "config_groups": {
            "group_0": {
                "format": fmt,
                "input_activations": a,
                "output_activations": null,
                "targets": ["Linear"],
                "weights": w,
            }
        },
        "format": fmt,
        "global_compression_ratio": null,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": crate::compressed_tensors::COMPRESSED_TENSORS_VERSION,
    })
}

/// The name of MR-GPTQ's transform scheme in `transform_config` (its per-module
/// tensor is `<module>.mr_gptq_input.weight`).
pub const ROTATION_NAME: &str = "mr_gptq";

/// [`quantization_config`] of weights stored in the space of a block-Hadamard input
/// rotation of `block` (MR-GPTQ): compressed-tensors' `transform_config` with one
/// deterministic `hadamard` scheme (`head_dim` = `block`) applied online to the
/// `input` of every quantized Linear and, offline and already fused, as the inverse
/// on `weight_input` (what vLLM runs as an online Hadamard before the layer, and what
/// [`crate::read::transform`] reads back).
pub fn quantization_config_rotated(scheme: FpScheme, ignore: &[String], block: usize) -> Value {
    let mut qc = quantization_config(scheme, ignore);
    let args = |location: &str, inverse: bool| json!({"targets": ["Linear"], "location": location, "inverse": inverse, "ignore": ignore});
    qc["transform_config"] = json!({"config_groups": {ROTATION_NAME: {
        "type": "hadamard",
        "apply": [args("input", false), args("weight_input", true)],
        "randomize": false,
        "requires_grad": false,
        "head_dim": block,
        "precision": "torch.float32",
    }}});
    qc
}

/// The rotation's tensor of module `prefix`: the unnormalized Sylvester matrix of
/// `block` (±1, F32), as compressed-tensors saves a `hadamard` transform's weight.
pub fn rotation_tensor(prefix: &str, block: usize) -> (String, HfTensor) {
    (
        format!("{prefix}.{ROTATION_NAME}_input.weight"),
        HfTensor::from_f32(&[block, block], &crate::hadamard::sylvester(block)),
    )
}

/// The scheme a config group's `weights` describe, if it is one of ours.
pub fn scheme_of(weights: &Value) -> Option<FpScheme> {
    if weights["type"] != "float" {
        return None;
    }
    match (weights["num_bits"].as_u64()?, weights["strategy"].as_str()?) {
        (4, "tensor_group") if weights["group_size"] == 16 => Some(FpScheme::Nvfp4),
        (4, "group") if weights["group_size"] == 32 => Some(FpScheme::Mxfp4),
        (8, "channel") => Some(FpScheme::Fp8Channel),
        (8, "tensor") => Some(FpScheme::Fp8Tensor),
        (8, "block") if weights["block_structure"] == json!([128, 128]) => Some(FpScheme::Fp8Block),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fp_quantized::rtn_fp;
    use std::collections::HashMap;

    #[test]
    fn every_scheme_packs_and_unpacks_exactly() {
        let (o, i) = (40, 160);
        let w: Vec<f32> = (0..o * i)
            .map(|k| ((k * 31 % 97) as f32 - 48.0) * 0.013)
            .collect();
        for s in [
            FpScheme::Nvfp4,
            FpScheme::Mxfp4,
            FpScheme::Fp8Channel,
            FpScheme::Fp8Tensor,
            FpScheme::Fp8Block,
        ] {
            let q = rtn_fp(&w, o, i, s, false);
            let t: HashMap<String, HfTensor> = pack("m", &q).into_iter().collect();
            let back = unpack(&|n| t.get(n).cloned(), "m", s, o, i).unwrap();
            assert_eq!(back, q, "{s:?}");
            let qc = quantization_config(s, &["lm_head".into()]);
            assert_eq!(
                scheme_of(&qc["config_groups"]["group_0"]["weights"]),
                Some(s)
            );
        }
    }
}
