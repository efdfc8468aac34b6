//! GPT-OSS's expert tensors in GGUF form, as llama.cpp's converter builds them
//! (`conversion/gpt_oss.py`): the fused interleaved gate|up parameter split into
//! `ffn_gate_exps` / `ffn_up_exps`, `down_proj` transposed, their biases, and the released
//! checkpoints' MXFP4 packing (transformers' `*_blocks` / `*_scales`, OCP Microscaling
//! v1.0 E2M1 codes with E8M0 scales) decoded, or repacked byte for byte into GGML
//! MXFP4 blocks as the converter's `repack_mxfp4` does.

use crate::gguf_names::{GgufTensorSpec, TensorRole, Transform};
use crate::ArchError;
use llmq_formats::minifloat::{e2m1_to_f32, e8m0_to_f32};

/// Decode MXFP4 blocks (bytes as f32) with their E8M0 scales: `rows_of_src` rows of
/// `g` blocks of 32 values, keeping rows `part`, `part + 2`, … when `part` is given.
pub(crate) fn decode_mxfp4(
    blocks: &[f32],
    scales: &[f32],
    g: usize,
    part: Option<usize>,
) -> Vec<f32> {
    let rows = scales.len() / g.max(1);
    let keep: Vec<usize> = match part {
        Some(p) => (p..rows).step_by(2).collect(),
        None => (0..rows).collect(),
    };
    let mut out = Vec::with_capacity(keep.len() * g * 32);
    for r in keep {
        for b in 0..g {
            let scale = e8m0_to_f32(scales[r * g + b] as u8);
            for byte in &blocks[(r * g + b) * 16..(r * g + b + 1) * 16] {
                let byte = *byte as u8;
                out.push(e2m1_to_f32(byte & 0x0f) * scale);
                out.push(e2m1_to_f32(byte >> 4) * scale);
            }
        }
    }
    out
}

/// Repack transformers' MXFP4 (`*_blocks` bytes `[rows, g, 16]`, two E2M1 codes a byte,
/// low nibble first; `*_scales` `[rows, g]` E8M0 bytes) into GGML MXFP4 blocks without
/// decoding: per block the scale byte, then 16 bytes whose low nibbles are codes 0..16
/// and high nibbles codes 16..32 (ggml's `block_mxfp4`), as `conversion/gpt_oss.py`
/// `repack_mxfp4` writes them; rows `part`, `part + 2`, … when `part` is given. The
/// values are those [`decode_mxfp4`] gives, bit for bit.
pub fn repack_mxfp4(blocks: &[u8], scales: &[u8], g: usize, part: Option<usize>) -> Vec<u8> {
    let rows = scales.len() / g.max(1);
    let keep: Vec<usize> = match part {
        Some(p) => (p..rows).step_by(2).collect(),
        None => (0..rows).collect(),
    };
    let mut out = Vec::with_capacity(keep.len() * g * 17);
    for r in keep {
        for b in 0..g {
            let i = r * g + b;
            let src = &blocks[i * 16..(i + 1) * 16];
            let code = |k: usize| (src[k / 2] >> (4 * (k % 2))) & 0x0f;
            out.push(scales[i]);
            out.extend((0..16).map(|j| code(j) | (code(j + 16) << 4)));
        }
    }
    out
}

/// GPT-OSS's fused expert parameters (`conversion/gpt_oss.py` `modify_tensors`):
/// `gate_up_proj` `[E, d, 2ff]` with interleaved gate/up columns becomes
/// `ffn_gate_exps` and `ffn_up_exps` (`[E, ff, d]`), `down_proj` `[E, ff, d]` becomes
/// `ffn_down_exps` (`[E, d, ff]`), and their biases follow. `None`: not such a tensor.
pub(crate) fn gpt_oss_experts(
    layer: usize,
    tail: &str,
    name: &str,
    shape: &[usize],
    n_experts: usize,
    shapes: &std::collections::HashMap<&str, &Vec<usize>>,
) -> Option<Result<Vec<GgufTensorSpec>, ArchError>> {
    use TensorRole as R;
    let rest = tail.strip_prefix("mlp.experts.")?;
    let bad = |why: String| {
        Some(Err(ArchError::Shape {
            name: name.to_string(),
            why,
        }))
    };
    let spec = |base: &str, role, shape_ne: Vec<usize>, transform| GgufTensorSpec {
        gguf_name: format!("blk.{layer}.{base}"),
        role,
        layer: Some(layer),
        sources: vec![name.to_string()],
        source_shapes: vec![shape.to_vec()],
        shape_ne,
        transform,
    };
    if let Some(base) = rest.strip_suffix("_scales") {
        // decoded together with its `_blocks`
        return match shapes.contains_key(name.replace("_scales", "_blocks").as_str()) {
            true => Some(Ok(vec![])),
            false => bad(format!("MXFP4 scales without {base}_blocks")),
        };
    }
    if let Some(base) = rest.strip_suffix("_blocks") {
        let scales = name.replace("_blocks", "_scales");
        let Some(s_shape) = shapes.get(scales.as_str()) else {
            return bad(format!("MXFP4 blocks without {base}_scales"));
        };
        if shape.len() != 4 || shape[0] != n_experts || shape[3] != 16 || s_shape[..] != shape[..3]
        {
            return bad(format!(
                "MXFP4 blocks {shape:?} / scales {s_shape:?}: expected [{n_experts}, rows, groups, 16] / [{n_experts}, rows, groups]"
            ));
        }
        let (rows, cols) = (shape[1], shape[2] * 32);
        let spec = |gg: &str, role, part: Option<usize>, out_rows| GgufTensorSpec {
            gguf_name: format!("blk.{layer}.{gg}"),
            role,
            layer: Some(layer),
            sources: vec![name.to_string(), scales.clone()],
            source_shapes: vec![shape.to_vec(), s_shape.to_vec()],
            shape_ne: vec![cols, out_rows, n_experts],
            transform: Transform::Mxfp4 { part },
        };
        return Some(Ok(match base {
            "gate_up_proj" if rows % 2 == 0 => vec![
                spec("ffn_gate_exps.weight", R::FfnGateExps, Some(0), rows / 2),
                spec("ffn_up_exps.weight", R::FfnUpExps, Some(1), rows / 2),
            ],
            "down_proj" => vec![spec("ffn_down_exps.weight", R::FfnDownExps, None, rows)],
            _ => {
                return bad(format!(
                    "unexpected MXFP4 parameter {base} with {rows} rows"
                ))
            }
        }));
    }
    let (weight, fused) = match rest {
        "gate_up_proj" => (true, true),
        "gate_up_proj_bias" => (false, true),
        "down_proj" => (true, false),
        "down_proj_bias" => (false, false),
        _ => return None,
    };
    let dims = if weight { 3 } else { 2 };
    if shape.len() != dims || shape[0] != n_experts {
        return bad(format!(
            "expected a {dims}-D tensor over {n_experts} experts, got {shape:?}"
        ));
    }
    let last = shape[dims - 1];
    if fused && !last.is_multiple_of(2) {
        return bad(format!(
            "interleaved gate|up needs an even last dimension, got {last}"
        ));
    }
    let e = n_experts;
    Some(Ok(match (weight, fused) {
        (true, true) => {
            let (d, ff) = (shape[1], last / 2);
            vec![
                spec(
                    "ffn_gate_exps.weight",
                    R::FfnGateExps,
                    vec![d, ff, e],
                    Transform::Deinterleave {
                        part: 0,
                        transpose: true,
                    },
                ),
                spec(
                    "ffn_up_exps.weight",
                    R::FfnUpExps,
                    vec![d, ff, e],
                    Transform::Deinterleave {
                        part: 1,
                        transpose: true,
                    },
                ),
            ]
        }
        (false, true) => {
            let ff = last / 2;
            let part = |p| Transform::Deinterleave {
                part: p,
                transpose: false,
            };
            vec![
                spec(
                    "ffn_gate_exps.bias",
                    R::FfnGateExpsBias,
                    vec![ff, e],
                    part(0),
                ),
                spec("ffn_up_exps.bias", R::FfnUpExpsBias, vec![ff, e], part(1)),
            ]
        }
        (true, false) => vec![spec(
            "ffn_down_exps.weight",
            R::FfnDownExps,
            vec![shape[1], shape[2], e],
            Transform::TransposeExperts,
        )],
        (false, false) => vec![spec(
            "ffn_down_exps.bias",
            R::FfnDownExpsBias,
            vec![last, e],
            Transform::None,
        )],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `conversion/gpt_oss.py` `transform_nibble_layout` step by step on one 16-byte
    /// block (swap nibbles; halves a/b; a's nibbles to the high, b's to the low side,
    /// interleaved; swap again), written independently of [`repack_mxfp4`].
    fn converter_layout(block: &[u8]) -> Vec<u8> {
        let t: Vec<u8> = block.iter().map(|x| x.rotate_right(4)).collect();
        let (a, b) = t.split_at(8);
        let a2: Vec<u8> = a.iter().flat_map(|x| [x & 0xF0, x << 4]).collect();
        let b2: Vec<u8> = b.iter().flat_map(|x| [x >> 4, x & 0x0F]).collect();
        a2.iter()
            .zip(&b2)
            .map(|(x, y)| x | y)
            .map(|o| ((o & 0xF0) >> 4) | ((o & 0x0F) << 4))
            .collect()
    }

    #[test]
    fn repack_is_the_converters_layout_and_keeps_every_value() {
        let (rows, g) = (6, 3);
        let mut x = 0x9E37_79B9u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        };
        let blocks: Vec<u8> = (0..rows * g * 16).map(|_| next()).collect();
        let scales: Vec<u8> = (0..rows * g).map(|_| 100 + next() % 50).collect();
        for part in [None, Some(0), Some(1)] {
            let out = repack_mxfp4(&blocks, &scales, g, part);
            let kept: Vec<usize> = match part {
                Some(p) => (p..rows).step_by(2).collect(),
                None => (0..rows).collect(),
            };
            assert_eq!(out.len(), kept.len() * g * 17);
            // bytes: the converter's scale byte + nibble layout
            for (k, r) in kept.iter().enumerate() {
                for b in 0..g {
                    let i = r * g + b;
                    let o = &out[(k * g + b) * 17..(k * g + b + 1) * 17];
                    assert_eq!(o[0], scales[i]);
                    assert_eq!(o[1..], converter_layout(&blocks[i * 16..(i + 1) * 16])[..]);
                }
            }
            // values: ggml's block_mxfp4 (qs[j] low nibble = value j, high = j + 16)
            // decodes to what transformers' layout decodes to
            let f = |v: &[u8]| v.iter().map(|b| f32::from(*b)).collect::<Vec<_>>();
            let want = decode_mxfp4(&f(&blocks), &f(&scales), g, part);
            let got: Vec<f32> = out
                .chunks(17)
                .flat_map(|blk| {
                    let d = e8m0_to_f32(blk[0]);
                    let lo = blk[1..].iter().map(move |q| e2m1_to_f32(q & 0x0f) * d);
                    let hi = blk[1..].iter().map(move |q| e2m1_to_f32(q >> 4) * d);
                    lo.chain(hi).collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
