//! Quantized Hugging Face checkpoints: GPTQ (AutoGPTQ / GPTQModel, `checkpoint_format`
//! `gptq` = v1 zeros stored minus one, `gptq_v2` = zeros as they are, with or without
//! act-order `g_idx`), AutoAWQ GEMM, and compressed-tensors `pack-quantized` (integer
//! weights, group or channel strategy, symmetric or not). Layouts as in
//! `shared/docs/reference-facts.md` §5a–5c; the tensors are decoded with
//! `llmq_hfquant`'s `unpack` functions (cross-checked against the reference Python
//! packages) and repacked once into the kernels' integer block layout
//! (`llmq_kernels::int_blocks`), so the products run on the packed codes.
//!
//! The scheme comes from `quantization_config` in `config.json`, or from
//! `quantize_config.json` for old GPTQ folders. Each quantized module `X` is presented
//! to the GGUF plan as a virtual `X.weight` of shape `[out, in]`; unquantized tensors
//! (`lm_head`, embeddings, norms, `modules_to_not_convert` / `ignore`) load as before.

use crate::error::{EngineError, Result};
use half::{bf16, f16};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use llmq_hfquant::compressed_tensors::{self as ct, CtStrategy, CtTensors, CtWeightScheme};
use llmq_hfquant::gptq::{self, GptqFormat, GptqTensors};
use llmq_hfquant::{awq, Dtype, HfTensor, IntQuantized};
use llmq_kernels::{IntAct, IntGroups, WeightMatrix};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The quantization scheme of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum HfQuantScheme {
    Gptq {
        bits: u8,
        group_size: Option<usize>,
        format: GptqFormat,
    },
    Awq {
        group_size: usize,
    },
    CompressedTensors {
        /// `(targets, scheme)` per config group
        groups: Vec<(Vec<String>, CtWeightScheme)>,
    },
}

fn unsupported(what: impl std::fmt::Display) -> EngineError {
    EngineError::Source(format!(
        "unsupported quantized checkpoint: {what} (supported: GPTQ formats gptq/gptq_v2, \
         AWQ version gemm, compressed-tensors format pack-quantized with integer weights)"
    ))
}

fn bad_config(what: impl std::fmt::Display) -> EngineError {
    EngineError::Source(format!("quantization config: {what}"))
}

fn get_u64(v: &Value, keys: &[&str]) -> Option<i64> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_i64))
}

fn get_str<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_str))
}

fn group_size_of(g: Option<i64>) -> Result<Option<usize>> {
    match g {
        None | Some(-1) => Ok(None),
        Some(g) if g > 0 => Ok(Some(g as usize)),
        Some(g) => Err(bad_config(format!("group_size {g}"))),
    }
}

impl HfQuantScheme {
    /// The scheme of the checkpoint in `dir`, `None` for an unquantized one.
    pub fn detect(dir: &Path) -> Result<Option<HfQuantScheme>> {
        let read = |name: &str| -> Result<Option<Value>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p)
                .map_err(|e| EngineError::Source(format!("{}: {e}", p.display())))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| EngineError::Source(format!("{}: {e}", p.display())))
        };
        let qc = match read("config.json")?.and_then(|c| c.get("quantization_config").cloned()) {
            Some(q) => q,
            None => match read("quantize_config.json")? {
                // AutoGPTQ's BaseQuantizeConfig has no quant_method before 0.5
                Some(mut q) => {
                    if q.get("quant_method").is_none() {
                        q["quant_method"] = "gptq".into();
                    }
                    q
                }
                None => return Ok(None),
            },
        };
        Self::from_quantization_config(&qc).map(Some)
    }

    /// Parses a `quantization_config` object.
    pub fn from_quantization_config(qc: &Value) -> Result<HfQuantScheme> {
        let method = get_str(qc, &["quant_method"])
            .ok_or_else(|| bad_config("no quant_method"))?
            .to_ascii_lowercase();
        match method.as_str() {
            "gptq" => {
                if qc.get("is_marlin_format").and_then(Value::as_bool) == Some(true) {
                    return Err(unsupported("GPTQ in Marlin format (is_marlin_format)"));
                }
                let fmt = get_str(qc, &["checkpoint_format", "format"]).unwrap_or("gptq");
                let format = GptqFormat::from_checkpoint_format(fmt)
                    .ok_or_else(|| unsupported(format!("GPTQ checkpoint_format `{fmt}`")))?;
                let bits = get_u64(qc, &["bits", "w_bit"]).unwrap_or(4);
                if ![2, 3, 4, 8].contains(&bits) {
                    return Err(unsupported(format!("GPTQ with {bits} bits")));
                }
                if let Some(p) = get_str(qc, &["pack_dtype"]) {
                    if p != "int32" {
                        return Err(unsupported(format!("GPTQ pack_dtype `{p}`")));
                    }
                }
                Ok(HfQuantScheme::Gptq {
                    bits: bits as u8,
                    group_size: group_size_of(get_u64(qc, &["group_size", "q_group_size"]))?,
                    format,
                })
            }
            "awq" => {
                let version = get_str(qc, &["version"])
                    .unwrap_or("gemm")
                    .to_ascii_lowercase();
                if version != "gemm" {
                    return Err(unsupported(format!("AWQ version `{version}`")));
                }
                let bits = get_u64(qc, &["bits", "w_bit"]).unwrap_or(4);
                if bits != 4 {
                    return Err(unsupported(format!("AWQ with {bits} bits")));
                }
                if qc.get("zero_point").and_then(Value::as_bool) == Some(false) {
                    return Err(unsupported("AWQ without zero points"));
                }
                let gs = group_size_of(get_u64(qc, &["group_size", "q_group_size"]))?
                    .ok_or_else(|| unsupported("AWQ without a group size"))?;
                Ok(HfQuantScheme::Awq { group_size: gs })
            }
            "compressed-tensors" | "compressed_tensors" => {
                let top_format = get_str(qc, &["format"]);
                let groups = qc
                    .get("config_groups")
                    .and_then(Value::as_object)
                    .ok_or_else(|| bad_config("compressed-tensors without config_groups"))?;
                let mut out = Vec::new();
                for (gname, g) in groups {
                    let format = get_str(g, &["format"]).or(top_format).unwrap_or("dense");
                    if format != "pack-quantized" {
                        return Err(unsupported(format!(
                            "compressed-tensors format `{format}` (config group {gname})"
                        )));
                    }
                    if g.get("input_activations").is_some_and(|a| !a.is_null()) {
                        return Err(unsupported(format!(
                            "compressed-tensors with quantized input activations (config group {gname})"
                        )));
                    }
                    let w = g.get("weights").filter(|w| !w.is_null()).ok_or_else(|| {
                        bad_config(format!("config group {gname} has no weights"))
                    })?;
                    let ty = get_str(w, &["type"]).unwrap_or("int");
                    if ty != "int" {
                        return Err(unsupported(format!(
                            "compressed-tensors weights of type `{ty}` (config group {gname})"
                        )));
                    }
                    if w.get("dynamic").and_then(Value::as_bool) == Some(true) {
                        return Err(unsupported(
                            "compressed-tensors dynamic weight quantization",
                        ));
                    }
                    let bits = get_u64(w, &["num_bits"]).unwrap_or(8);
                    if !(2..=8).contains(&bits) {
                        return Err(unsupported(format!(
                            "compressed-tensors {bits}-bit weights"
                        )));
                    }
                    let strategy = match get_str(w, &["strategy"]).unwrap_or("tensor") {
                        "group" => CtStrategy::Group(
                            group_size_of(get_u64(w, &["group_size"]))?.ok_or_else(|| {
                                bad_config(format!(
                                    "config group {gname}: group strategy without group_size"
                                ))
                            })?,
                        ),
                        "channel" => CtStrategy::Channel,
                        s => {
                            return Err(unsupported(format!(
                                "compressed-tensors weight strategy `{s}` (config group {gname})"
                            )))
                        }
                    };
                    let targets = g
                        .get("targets")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|t| t.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_else(|| vec!["Linear".to_string()]);
                    out.push((
                        targets,
                        CtWeightScheme {
                            num_bits: bits as u8,
                            symmetric: w.get("symmetric").and_then(Value::as_bool).unwrap_or(true),
                            strategy,
                        },
                    ));
                }
                if out.is_empty() {
                    return Err(bad_config("compressed-tensors with no config groups"));
                }
                Ok(HfQuantScheme::CompressedTensors { groups: out })
            }
            m => Err(unsupported(format!("quant_method `{m}`"))),
        }
    }

    /// `(packed tensor suffix, companion suffixes)` of a quantized module.
    fn suffixes(&self) -> (&'static str, &'static [&'static str]) {
        match self {
            HfQuantScheme::Gptq { .. } => ("qweight", &["qzeros", "scales", "g_idx"]),
            HfQuantScheme::Awq { .. } => ("qweight", &["qzeros", "scales"]),
            HfQuantScheme::CompressedTensors { .. } => (
                "weight_packed",
                &[
                    "weight_scale",
                    "weight_zero_point",
                    "weight_g_idx",
                    "weight_shape",
                ],
            ),
        }
    }

    /// The compressed-tensors scheme that applies to `module`.
    fn ct_scheme(&self, module: &str) -> Option<CtWeightScheme> {
        let HfQuantScheme::CompressedTensors { groups } = self else {
            return None;
        };
        let matches = |t: &str| {
            if t == "Linear" {
                true
            } else if let Some(re) = t.strip_prefix("re:") {
                fancy_regex::Regex::new(re)
                    .ok()
                    .and_then(|r| r.is_match(module).ok())
                    .unwrap_or(false)
            } else {
                module == t || module.ends_with(&format!(".{t}"))
            }
        };
        groups
            .iter()
            .find(|(targets, _)| targets.iter().any(|t| matches(t)))
            .or(groups.first())
            .map(|(_, s)| *s)
    }
}

/// The quantized modules of a checkpoint, by module name (`model.layers.0.mlp.up_proj`).
pub struct QuantizedModules {
    pub scheme: HfQuantScheme,
    /// module → `[out, in]`
    modules: HashMap<String, [usize; 2]>,
}

fn read_tensor(st: &SafetensorsModel, name: &str) -> Result<Option<HfTensor>> {
    if st.info(name).is_none() {
        return Ok(None);
    }
    let v = st.get(name).map_err(|e| EngineError::BadTensor {
        name: name.into(),
        why: e.to_string(),
    })?;
    let shape = v.info.shape.clone();
    let t = match v.info.dtype {
        StDtype::F16 => HfTensor::from_raw(Dtype::F16, &shape, v.bytes.to_vec()),
        StDtype::F32 => HfTensor::from_raw(Dtype::F32, &shape, v.bytes.to_vec()),
        // scales in the model dtype: f16 is what the layouts (and the kernels) hold
        StDtype::BF16 => {
            let h: Vec<f16> = v
                .bytes
                .chunks_exact(2)
                .map(|c| f16::from_f32(bf16::from_le_bytes([c[0], c[1]]).to_f32()))
                .collect();
            HfTensor::from_f16(&shape, &h)
        }
        StDtype::Other("I32") => HfTensor::from_raw(Dtype::I32, &shape, v.bytes.to_vec()),
        StDtype::Other("I64") => HfTensor::from_raw(Dtype::I64, &shape, v.bytes.to_vec()),
        StDtype::Other(d) => {
            return Err(EngineError::BadTensor {
                name: name.into(),
                why: format!("dtype {d} where int32 / f16 was expected"),
            })
        }
    };
    Ok(Some(t))
}

fn f16_scales(t: HfTensor, name: &str) -> Result<HfTensor> {
    match t.dtype {
        Dtype::F16 => Ok(t),
        Dtype::F32 => {
            let v: Vec<f16> = t
                .to_f32_vec()
                .unwrap_or_default()
                .into_iter()
                .map(f16::from_f32)
                .collect();
            Ok(HfTensor::from_f16(&t.shape, &v))
        }
        _ => Err(EngineError::BadTensor {
            name: name.into(),
            why: "scales are not floating point".into(),
        }),
    }
}

fn as_i64s(t: &HfTensor) -> Option<Vec<i64>> {
    t.to_i64_vec().or_else(|| {
        t.to_i32_vec()
            .map(|v| v.into_iter().map(i64::from).collect())
    })
}

impl QuantizedModules {
    /// Finds the quantized modules among the checkpoint's tensors.
    pub fn scan(scheme: HfQuantScheme, st: &SafetensorsModel) -> Result<QuantizedModules> {
        let (packed, _) = scheme.suffixes();
        let mut modules = HashMap::new();
        let names: Vec<(String, Vec<usize>)> = st
            .tensors()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        for (name, shape) in &names {
            let Some(prefix) = name.strip_suffix(&format!(".{packed}")) else {
                continue;
            };
            let bad = |why: &str| EngineError::BadTensor {
                name: name.clone(),
                why: why.into(),
            };
            if shape.len() != 2 {
                return Err(bad("packed weight is not 2-D"));
            }
            let dims = match &scheme {
                HfQuantScheme::Gptq { bits, .. } => {
                    let inp = match st.info(&format!("{prefix}.g_idx")) {
                        Some(g) => g.numel(),
                        None => shape[0] * 32 / *bits as usize,
                    };
                    [shape[1], inp]
                }
                HfQuantScheme::Awq { .. } => [shape[1] * 8, shape[0]],
                HfQuantScheme::CompressedTensors { .. } => {
                    match read_tensor(st, &format!("{prefix}.weight_shape"))?
                        .as_ref()
                        .and_then(as_i64s)
                    {
                        Some(s) if s.len() == 2 => [s[0] as usize, s[1] as usize],
                        _ => {
                            let s = scheme.ct_scheme(prefix).expect("compressed-tensors");
                            [shape[0], shape[1] * 32 / s.num_bits as usize]
                        }
                    }
                }
            };
            modules.insert(prefix.to_string(), dims);
        }
        Ok(QuantizedModules { scheme, modules })
    }

    /// The checkpoint's tensor list as the GGUF plan should see it: each quantized
    /// module's tensors replaced by one `X.weight` of shape `[out, in]`.
    pub fn plan_tensors(&self, st: &SafetensorsModel) -> Vec<(String, Vec<usize>)> {
        let (packed, companions) = self.scheme.suffixes();
        let mut out = Vec::new();
        for t in st.tensors() {
            let hit = std::iter::once(packed)
                .chain(companions.iter().copied())
                .find_map(|s| {
                    t.name
                        .strip_suffix(&format!(".{s}"))
                        .filter(|p| self.modules.contains_key(*p))
                        .map(|p| (p, s == packed))
                });
            match hit {
                Some((p, true)) => {
                    let [o, i] = self.modules[p];
                    out.push((format!("{p}.weight"), vec![o, i]));
                }
                Some((_, false)) => {}
                None => out.push((t.name.clone(), t.shape.clone())),
            }
        }
        out
    }

    /// The module behind a plan source name `X.weight`, if it is quantized.
    pub fn module_of<'a>(&self, source: &'a str) -> Option<&'a str> {
        source
            .strip_suffix(".weight")
            .filter(|p| self.modules.contains_key(*p))
    }

    /// Decodes module `prefix` with the reference layouts.
    pub fn int_quantized(&self, st: &SafetensorsModel, prefix: &str) -> Result<IntQuantized> {
        let [out, inp] = self.modules[prefix];
        let fetch = |s: &str| read_tensor(st, &format!("{prefix}.{s}"));
        let need = |s: &str| -> Result<HfTensor> {
            fetch(s)?.ok_or_else(|| EngineError::MissingTensor(format!("{prefix}.{s}")))
        };
        let bad = |e: llmq_hfquant::Error| EngineError::BadTensor {
            name: prefix.to_string(),
            why: e.to_string(),
        };
        let words = |t: HfTensor, s: &str| -> Result<Vec<u32>> {
            t.to_u32_words().ok_or_else(|| EngineError::BadTensor {
                name: format!("{prefix}.{s}"),
                why: "not int32".into(),
            })
        };
        match &self.scheme {
            HfQuantScheme::Gptq {
                group_size, format, ..
            } => {
                let scales = f16_scales(need("scales")?, prefix)?;
                let n_groups = scales.shape.first().copied().unwrap_or(1);
                let g_idx = match fetch("g_idx")? {
                    Some(g) => g,
                    None => {
                        let gs = group_size.unwrap_or(inp);
                        let v: Vec<i32> = (0..inp).map(|i| (i / gs) as i32).collect();
                        HfTensor::from_i32(&[inp], &v)
                    }
                };
                let qweight = need("qweight")?;
                let bits = (qweight.shape[0] * 32 / inp.max(1)) as u8;
                // GPTQModel's `dynamic` may change the group size per module
                let gs = match group_size {
                    Some(g) if inp.div_ceil(*g) == n_groups => Some(*g),
                    _ if n_groups == 1 => None,
                    _ => Some(inp.div_ceil(n_groups)),
                };
                let tensors: HashMap<String, HfTensor> = [
                    ("qweight", qweight),
                    ("qzeros", need("qzeros")?),
                    ("scales", scales),
                    ("g_idx", g_idx),
                ]
                .into_iter()
                .map(|(k, v)| (format!("{prefix}.{k}"), v))
                .collect();
                let t = GptqTensors::from_hf_tensors(bits, |n| tensors.get(n).cloned(), prefix)
                    .map_err(bad)?;
                // `symmetric` does not enter the dequantization; false skips its check
                gptq::unpack(&t, gs, false, *format).map_err(bad)
            }
            HfQuantScheme::Awq { group_size } => {
                let t = awq::AwqTensors {
                    in_features: inp,
                    out_features: out,
                    group_size: *group_size,
                    qweight: words(need("qweight")?, "qweight")?,
                    qzeros: words(need("qzeros")?, "qzeros")?,
                    scales: f16_scales(need("scales")?, prefix)?
                        .to_f16_vec()
                        .unwrap_or_default(),
                };
                awq::unpack(&t).map_err(bad)
            }
            HfQuantScheme::CompressedTensors { .. } => {
                let scheme = self.scheme.ct_scheme(prefix).expect("compressed-tensors");
                let scale = f16_scales(need("weight_scale")?, prefix)?;
                let n_groups = scale.numel() / out.max(1);
                let t = CtTensors {
                    num_bits: scheme.num_bits,
                    out_features: out,
                    in_features: inp,
                    n_groups,
                    weight_packed: words(need("weight_packed")?, "weight_packed")?,
                    weight_scale: scale.to_f16_vec().unwrap_or_default(),
                    weight_zero_point: match fetch("weight_zero_point")? {
                        Some(z) if !scheme.symmetric => Some(words(z, "weight_zero_point")?),
                        _ => None,
                    },
                    weight_g_idx: fetch("weight_g_idx")?.and_then(|g| g.to_i32_vec()),
                };
                ct::unpack(&t, &scheme).map_err(bad)
            }
        }
    }

    /// Module `prefix` repacked for the kernels.
    pub fn matrix(&self, st: &SafetensorsModel, prefix: &str, act: IntAct) -> Result<WeightMatrix> {
        let q = self.int_quantized(st, prefix)?;
        int_matrix(&q, act).map_err(|e| EngineError::tensor(prefix, e))
    }
}

/// Repacks an [`IntQuantized`] weight into the kernels' block layout.
pub fn int_matrix(
    q: &IntQuantized,
    act: IntAct,
) -> std::result::Result<WeightMatrix, llmq_kernels::KernelError> {
    let g_idx = q.g_idx_or_default();
    WeightMatrix::from_int_groups(
        &IntGroups {
            bits: q.bits,
            rows: q.out_features,
            cols: q.in_features,
            q: &q.q,
            scales: &q.scales,
            zeros: &q.zeros,
            n_groups: q.n_groups(),
            group_of_col: &g_idx,
        },
        act,
    )
}
