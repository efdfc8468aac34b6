//! EXL3 folders (exllamav3 1.x; trellis codes from QTIP, arXiv 2406.11235) for the engine:
//! each quantized Linear `X` (`X.trellis` int16 `(in/16, out/16, 16·K)`, `X.suh` / `X.svh`
//! fp16, a codebook marker `X.mcg` / `X.mul1` or none for 3INST) is presented to the GGUF
//! plan as a virtual `X.weight` of shape `[out, in]` and kept as its codes
//! ([`Exl3Modules::matrix`]: an `llmq_kernels` `WeightType::Trellis` matrix, decoded inside
//! the product; a plan transform that only reorders rows, llama's q/k permutation, becomes
//! the matrix's output order). Transforms that mix values (expert stacking, MLA's splits)
//! and [`crate::WeightSource::with_exl3_expanded`] decode the Linear once at load by
//! `llmq_trellis::decode::reconstruct` (`W = diag(su)·H·Ŵ·H·diag(sv)`) into f32 instead.
//! Other tensors load as stored.
//!
//! Not done: cropping of padded dimensions (a Linear whose padded shape differs from the
//! architecture's is refused by the plan check).

use crate::error::{EngineError, Result};
use half::f16;
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_kernels::WeightMatrix;
use llmq_trellis::decode::reconstruct;
use llmq_trellis::Codebook;
use std::collections::BTreeSet;
use std::path::Path;

/// The trellis-coded modules of an EXL3 folder, by module name.
pub struct Exl3Modules {
    modules: BTreeSet<String>,
}

const PARTS: [&str; 5] = ["trellis", "suh", "svh", "mcg", "mul1"];

/// Whether `dir/config.json` declares `quantization_config.quant_method: exl3`.
pub fn is_exl3(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|c| c["quantization_config"]["quant_method"] == "exl3")
}

fn bad(name: &str, why: impl Into<String>) -> EngineError {
    EngineError::BadTensor {
        name: name.into(),
        why: why.into(),
    }
}

impl Exl3Modules {
    /// The modules that have a `.trellis` tensor.
    pub fn scan(st: &SafetensorsModel) -> Exl3Modules {
        Exl3Modules {
            modules: st
                .tensors()
                .filter_map(|t| t.name.strip_suffix(".trellis").map(str::to_string))
                .collect(),
        }
    }

    /// The tensor list as the GGUF plan should see it: each module's stored tensors
    /// replaced by one `X.weight` of shape `[out, in]`.
    pub fn plan_tensors(&self, st: &SafetensorsModel) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for t in st.tensors() {
            match t.name.rsplit_once('.') {
                Some((m, "trellis")) if self.modules.contains(m) && t.shape.len() == 3 => {
                    out.push((
                        format!("{m}.weight"),
                        vec![t.shape[1] * 16, t.shape[0] * 16],
                    ));
                }
                Some((m, part)) if self.modules.contains(m) && PARTS.contains(&part) => {}
                _ => out.push((t.name.clone(), t.shape.clone())),
            }
        }
        out
    }

    /// The module behind a plan source name `X.weight`, if it is trellis-coded.
    pub fn module_of<'a>(&self, source: &'a str) -> Option<&'a str> {
        source
            .strip_suffix(".weight")
            .filter(|m| self.modules.contains(*m))
    }

    /// Module `m` decoded to its Hugging Face weight, `[out, in]` row-major.
    pub fn dequantize(&self, st: &SafetensorsModel, m: &str) -> Result<Vec<f32>> {
        let p = self.read(st, m)?;
        let (in_f, out_f) = (p.suh.len(), p.svh.len());
        let r = reconstruct(&p.trellis, &p.suh, &p.svh, p.k, p.codebook);
        let mut w = vec![0f32; out_f * in_f];
        for i in 0..in_f {
            for o in 0..out_f {
                w[o * in_f + i] = r[i * out_f + o];
            }
        }
        Ok(w)
    }

    /// Module `m` as a trellis matrix `[out, in]`, its codes as stored.
    pub fn matrix(&self, st: &SafetensorsModel, m: &str) -> Result<WeightMatrix> {
        let p = self.read(st, m)?;
        WeightMatrix::from_trellis(&p.trellis, &p.suh, &p.svh, p.k, p.codebook)
            .map_err(|e| bad(&format!("{m}.trellis"), e.to_string()))
    }

    /// Module `m`'s stored tensors, checked.
    fn read(&self, st: &SafetensorsModel, m: &str) -> Result<Parts> {
        let name = format!("{m}.trellis");
        let t = st.get(&name).map_err(|e| bad(&name, e.to_string()))?;
        if t.info.dtype != StDtype::Other("I16") || t.info.shape.len() != 3 {
            return Err(bad(&name, "expected an int16 tensor (in/16, out/16, 16·K)"));
        }
        let (tk, tn, w16) = (t.info.shape[0], t.info.shape[1], t.info.shape[2]);
        if w16 % 16 != 0 || !(1..=8).contains(&(w16 / 16)) {
            return Err(bad(
                &name,
                format!("last dimension {w16} is not 16·K, K 1…8"),
            ));
        }
        let k = (w16 / 16) as u32;
        let (in_f, out_f) = (tk * 16, tn * 16);
        let trellis: Vec<i16> = t
            .bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        let half = |part: &str, n: usize| -> Result<Vec<f16>> {
            let name = format!("{m}.{part}");
            let v = st.get(&name).map_err(|e| bad(&name, e.to_string()))?;
            if v.info.dtype != StDtype::F16 || v.info.shape != [n] {
                return Err(bad(&name, format!("expected fp16 of shape [{n}]")));
            }
            let x: Vec<f16> = v
                .bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return Err(bad(&name, format!("element {i} is not finite")));
            }
            Ok(x)
        };
        let suh = half("suh", in_f)?;
        let svh = half("svh", out_f)?;
        let codebook = if st.info(&format!("{m}.mul1")).is_some() {
            Codebook::Mul1
        } else if st.info(&format!("{m}.mcg")).is_some() {
            Codebook::Mcg
        } else {
            Codebook::Inst3
        };
        if let Some((part, want)) = codebook.marker() {
            let name = format!("{m}.{part}");
            let v = st.get(&name).map_err(|e| bad(&name, e.to_string()))?;
            if v.bytes != want.to_le_bytes() {
                return Err(bad(
                    &name,
                    "a codebook multiplier this decoder does not know",
                ));
            }
        }
        Ok(Parts {
            trellis,
            suh,
            svh,
            k,
            codebook,
        })
    }
}

/// One module's stored tensors.
struct Parts {
    trellis: Vec<i16>,
    suh: Vec<f16>,
    svh: Vec<f16>,
    k: u32,
    codebook: Codebook,
}
