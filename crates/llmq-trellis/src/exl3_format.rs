//! What an EXL3 folder stores (exllamav3 1.x, `modules/quant/exl3.py get_tensors`,
//! `conversion/compile.py`, `conversion/quant_config.py`): per quantized linear `<module>.trellis`
//! (int16 `(in/16, out/16, 16·K)`), `<module>.suh` / `.svh` (fp16), the codebook marker (`.mcg` /
//! `.mul1`, a 0-dim int32 holding the multiplier; none for 3INST) and `<module>.bias` (fp16, padded
//! to the padded output size); `config.json`'s `quantization_config` and the separate
//! `quantization_config.json` that adds `tensor_storage` per module. Tensors come back as names,
//! dtypes, shapes and little-endian bytes, for any safetensors writer.

use crate::quantize::Exl3Linear;
use serde_json::{json, Map, Value};

/// Element types EXL3 tensors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    I16,
    I32,
    F16,
}

impl Dtype {
    /// The name torch prints (`quantization_config.json` lists it).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::I16 => "torch.int16",
            Dtype::I32 => "torch.int32",
            Dtype::F16 => "torch.float16",
        }
    }
}

/// One tensor as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The stored tensors of one quantized linear `module` (e.g. `model.layers.0.mlp.up_proj`), with
/// its bias (unpadded, any length ≤ the padded output size).
pub fn linear_tensors(module: &str, q: &Exl3Linear, bias: Option<&[f32]>) -> Vec<StoredTensor> {
    let mut out = vec![
        StoredTensor {
            name: format!("{module}.trellis"),
            dtype: Dtype::I16,
            shape: vec![q.in_features / 16, q.out_features / 16, 16 * q.k as usize],
            data: q.trellis.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
        StoredTensor {
            name: format!("{module}.suh"),
            dtype: Dtype::F16,
            shape: vec![q.in_features],
            data: q.suh.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
        StoredTensor {
            name: format!("{module}.svh"),
            dtype: Dtype::F16,
            shape: vec![q.out_features],
            data: q.svh.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
    ];
    if let Some((suffix, v)) = q.codebook.marker() {
        out.push(StoredTensor {
            name: format!("{module}.{suffix}"),
            dtype: Dtype::I32,
            shape: vec![],
            data: v.to_le_bytes().to_vec(),
        });
    }
    if let Some(b) = bias {
        let mut padded = vec![half::f16::ZERO; q.out_features];
        for (p, &x) in padded.iter_mut().zip(b) {
            *p = half::f16::from_f32(x);
        }
        out.push(StoredTensor {
            name: format!("{module}.bias"),
            dtype: Dtype::F16,
            shape: vec![q.out_features],
            data: padded.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }
    out
}

/// `config.json`'s `quantization_config` as exllamav3's `compile.py` writes it. `bits` is the
/// realised average over the budgeted linears (rounded to 2 decimals there too).
pub fn quantization_config(
    version: &str,
    bits: f64,
    head_bits: u32,
    calibration: Option<(usize, usize)>,
    out_scales: bool,
    codebook: crate::Codebook,
) -> Value {
    let mut m = Map::new();
    m.insert("quant_method".into(), json!("exl3"));
    m.insert("version".into(), json!(version));
    m.insert("bits".into(), json!((bits * 100.0).round() / 100.0));
    m.insert("head_bits".into(), json!(head_bits));
    if let Some((rows, cols)) = calibration {
        m.insert("calibration".into(), json!({"rows": rows, "cols": cols}));
    }
    m.insert(
        "out_scales".into(),
        json!(if out_scales { "always" } else { "never" }),
    );
    m.insert("codebook".into(), json!(codebook.name()));
    Value::Object(m)
}

/// One module's `tensor_storage` entry of `quantization_config.json`: its stored tensors, and for
/// EXL3 linears `quant_format`, `bits_per_weight` and the codebook multiplier.
pub fn storage_entry(tensors: &[StoredTensor], exl3: Option<&Exl3Linear>) -> Value {
    let mut stored = Map::new();
    for t in tensors {
        stored.insert(
            t.name.clone(),
            json!({"shape": t.shape, "n_bytes": t.data.len(), "dtype": t.dtype.torch_name()}),
        );
    }
    let mut m = Map::new();
    m.insert("stored_tensors".into(), Value::Object(stored));
    if let Some(q) = exl3 {
        m.insert("quant_format".into(), json!("exl3"));
        m.insert("bits_per_weight".into(), json!(q.k));
        match q.codebook {
            crate::Codebook::Mul1 => {
                m.insert("mul1_multiplier".into(), json!(crate::codebook::MUL1_MULT));
            }
            crate::Codebook::Mcg => {
                m.insert("mcg_multiplier".into(), json!(crate::codebook::MCG_MULT));
            }
            crate::Codebook::Inst3 => {}
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codebook;
    use half::f16;

    fn linear(cb: Codebook) -> Exl3Linear {
        Exl3Linear {
            in_features: 128,
            out_features: 256,
            k: 3,
            codebook: cb,
            trellis: vec![0x1234; 8 * 16 * 48],
            suh: vec![f16::ONE; 128],
            svh: vec![f16::NEG_ONE; 256],
            proxy_err: None,
            g_scale: 1.0,
        }
    }

    #[test]
    fn tensors_have_exllamav3_names_shapes_and_bytes() {
        let t = linear_tensors("m.up_proj", &linear(Codebook::Mul1), Some(&[1.0, 2.0]));
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "m.up_proj.trellis",
                "m.up_proj.suh",
                "m.up_proj.svh",
                "m.up_proj.mul1",
                "m.up_proj.bias"
            ]
        );
        assert_eq!(t[0].shape, [8, 16, 48]);
        assert_eq!(&t[0].data[..2], &[0x34, 0x12]);
        assert_eq!(t[3].shape, Vec::<usize>::new());
        assert_eq!(t[3].data, 0x83DC_D12Du32.to_le_bytes());
        assert_eq!(t[4].shape, [256]);
        assert_eq!(&t[4].data[..4], &[0x00, 0x3c, 0x00, 0x40]);
        let none = linear_tensors("m", &linear(Codebook::Inst3), None);
        assert_eq!(none.len(), 3);
        let e = storage_entry(&t, Some(&linear(Codebook::Mul1)));
        assert_eq!(e["bits_per_weight"], 3);
        assert_eq!(e["mul1_multiplier"], 0x83DC_D12Du32);
        assert_eq!(
            e["stored_tensors"]["m.up_proj.trellis"]["dtype"],
            "torch.int16"
        );
        assert_eq!(
            e["stored_tensors"]["m.up_proj.trellis"]["n_bytes"],
            8 * 16 * 48 * 2
        );
    }

    #[test]
    fn quantization_config_fields() {
        let q = quantization_config("0.0.1", 4.0049, 6, Some((250, 2048)), true, Codebook::Mul1);
        assert_eq!(q["quant_method"], "exl3");
        assert_eq!(q["bits"], 4.0);
        assert_eq!(q["head_bits"], 6);
        assert_eq!(q["calibration"]["rows"], 250);
        assert_eq!(q["out_scales"], "always");
        assert_eq!(q["codebook"], "mul1");
    }
}
