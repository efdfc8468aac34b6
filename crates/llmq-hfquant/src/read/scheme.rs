//! The quantization scheme of a Hugging Face checkpoint, from `quantization_config` in
//! `config.json` (or `quantize_config.json` for old AutoGPTQ folders): GPTQ
//! (`checkpoint_format` `gptq` = v1, `gptq_v2`), AutoAWQ GEMM, or compressed-tensors
//! config groups (`pack-quantized`, `int-quantized` / `naive-quantized` integer weights,
//! `dense`). Keys as in `shared/docs/reference-facts.md` §5a–5c and the writers of this
//! crate ([`crate::gptq::GptqConfig`], [`crate::awq::quantization_config`],
//! [`crate::compressed_tensors::quantization_config`]).

use crate::compressed_tensors::{CtStrategy, CtWeightScheme};
use crate::fp_quantized::FpScheme;
use crate::gptq::GptqFormat;
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// How a compressed-tensors config group stores its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtFormat {
    /// `pack-quantized`: `weight_packed` int32 words
    PackQuantized,
    /// `int-quantized` / `naive-quantized`: `weight` as signed int8 codes
    IntQuantized,
    /// `dense`: float weights
    Dense,
    /// `nvfp4-pack-quantized`, `mxfp4-pack-quantized` or `float-quantized`: floating-point
    /// codes ([`crate::ct_fp`]), dequantized when read
    Float(FpScheme),
}

/// One compressed-tensors config group.
#[derive(Clone, Debug, PartialEq)]
pub struct CtGroup {
    /// `targets` (`Linear`, module names, `re:` patterns)
    pub targets: Vec<String>,
    pub format: CtFormat,
    /// `None` for a `dense` group
    pub scheme: Option<CtWeightScheme>,
}

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
        groups: Vec<CtGroup>,
        /// the online input rotation of its `transform_config`, if any
        /// ([`super::transform`])
        rotation: Option<super::transform::InputRotation>,
    },
}

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::UnsupportedCheckpoint(format!(
        "{what} (supported: GPTQ formats gptq/gptq_v2, AWQ version gemm, compressed-tensors \
         format pack-quantized, int-quantized or dense with integer weights)"
    ))
}

fn bad_config(what: impl std::fmt::Display) -> Error {
    Error::Config(what.to_string())
}

fn get_i64(v: &Value, keys: &[&str]) -> Option<i64> {
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

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(crate::error::io_err(path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
}

impl HfQuantScheme {
    /// The scheme of the checkpoint in `dir`, `None` for an unquantized one.
    pub fn detect(dir: &Path) -> Result<Option<HfQuantScheme>> {
        let qc = match read_json(&dir.join("config.json"))?
            .and_then(|c| c.get("quantization_config").cloned())
        {
            // transformers' own MXFP4 packing (GPT-OSS): `*_blocks` / `*_scales` tensors
            // the architecture's tensor plan decodes (`llmq_arch::Transform::Mxfp4`);
            // everything else is dense
            Some(q) if get_str(&q, &["quant_method"]) == Some("mxfp4") => return Ok(None),
            Some(q) => q,
            None => match read_json(&dir.join("quantize_config.json"))? {
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
            "gptq" => gptq(qc),
            "awq" => awq(qc),
            "compressed-tensors" | "compressed_tensors" => compressed_tensors(qc),
            m => Err(unsupported(format!("quant_method `{m}`"))),
        }
    }

    /// The short name of the format (`gptq`, `awq`, `compressed-tensors`).
    pub fn format_name(&self) -> &'static str {
        match self {
            HfQuantScheme::Gptq { .. } => "gptq",
            HfQuantScheme::Awq { .. } => "awq",
            HfQuantScheme::CompressedTensors { .. } => "compressed-tensors",
        }
    }

    /// The online input rotation (compressed-tensors `transform_config`), if any.
    pub fn rotation(&self) -> Option<&super::transform::InputRotation> {
        match self {
            HfQuantScheme::CompressedTensors { rotation, .. } => rotation.as_ref(),
            _ => None,
        }
    }

    /// The compressed-tensors config group that applies to `module` (the first whose
    /// targets match, else the first group).
    pub fn ct_group(&self, module: &str) -> Option<&CtGroup> {
        let HfQuantScheme::CompressedTensors { groups, .. } = self else {
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
            .find(|g| g.targets.iter().any(|t| matches(t)))
            .or(groups.first())
    }
}

fn gptq(qc: &Value) -> Result<HfQuantScheme> {
    if qc.get("is_marlin_format").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("GPTQ in Marlin format (is_marlin_format)"));
    }
    let fmt = get_str(qc, &["checkpoint_format", "format"]).unwrap_or("gptq");
    let format = GptqFormat::from_checkpoint_format(fmt)
        .ok_or_else(|| unsupported(format!("GPTQ checkpoint_format `{fmt}`")))?;
    let bits = get_i64(qc, &["bits", "w_bit"]).unwrap_or(4);
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
        group_size: group_size_of(get_i64(qc, &["group_size", "q_group_size"]))?,
        format,
    })
}

fn awq(qc: &Value) -> Result<HfQuantScheme> {
    let version = get_str(qc, &["version"])
        .unwrap_or("gemm")
        .to_ascii_lowercase();
    if version != "gemm" {
        return Err(unsupported(format!("AWQ version `{version}`")));
    }
    let bits = get_i64(qc, &["bits", "w_bit"]).unwrap_or(4);
    if bits != 4 {
        return Err(unsupported(format!("AWQ with {bits} bits")));
    }
    if qc.get("zero_point").and_then(Value::as_bool) == Some(false) {
        return Err(unsupported("AWQ without zero points"));
    }
    let gs = group_size_of(get_i64(qc, &["group_size", "q_group_size"]))?
        .ok_or_else(|| unsupported("AWQ without a group size"))?;
    Ok(HfQuantScheme::Awq { group_size: gs })
}

fn compressed_tensors(qc: &Value) -> Result<HfQuantScheme> {
    let top_format = get_str(qc, &["format"]);
    let groups = qc
        .get("config_groups")
        .and_then(Value::as_object)
        .ok_or_else(|| bad_config("compressed-tensors without config_groups"))?;
    let mut out = Vec::new();
    for (gname, g) in groups {
        let format = match get_str(g, &["format"]).or(top_format).unwrap_or("dense") {
            "pack-quantized" => CtFormat::PackQuantized,
            "int-quantized" | "naive-quantized" => CtFormat::IntQuantized,
            "dense" => CtFormat::Dense,
            f @ ("nvfp4-pack-quantized" | "mxfp4-pack-quantized" | "float-quantized") => {
                let fp = g
                    .get("weights")
                    .and_then(crate::ct_fp::scheme_of)
                    .filter(|s| crate::ct_fp::format_name(*s) == f)
                    .ok_or_else(|| {
                        unsupported(format!(
                            "compressed-tensors `{f}` weights of config group {gname} (supported: NVFP4, MXFP4, FP8 E4M3 per channel, per tensor or 128x128 blocks)"
                        ))
                    })?;
                CtFormat::Float(fp)
            }
            f => {
                return Err(unsupported(format!(
                    "compressed-tensors format `{f}` (config group {gname})"
                )))
            }
        };
        // FP8's dynamic activation quantization (vLLM's W8A8-FP8) is computed by our
        // engine in full precision: the weights are what the checkpoint stores
        let dynamic_act = matches!(format, CtFormat::Float(_))
            && g["input_activations"]["dynamic"].as_bool() == Some(true);
        if g.get("input_activations").is_some_and(|a| !a.is_null()) && !dynamic_act {
            return Err(unsupported(format!(
                "compressed-tensors with quantized input activations (config group {gname})"
            )));
        }
        let targets = g
            .get("targets")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec!["Linear".to_string()]);
        let scheme = if matches!(format, CtFormat::Dense | CtFormat::Float(_)) {
            None
        } else {
            Some(ct_weights(g, gname)?)
        };
        out.push(CtGroup {
            targets,
            format,
            scheme,
        });
    }
    if out.is_empty() {
        return Err(bad_config("compressed-tensors with no config groups"));
    }
    let rotation = super::transform::input_rotation(qc)?;
    Ok(HfQuantScheme::CompressedTensors {
        groups: out,
        rotation,
    })
}

fn ct_weights(g: &Value, gname: &str) -> Result<CtWeightScheme> {
    let w = g
        .get("weights")
        .filter(|w| !w.is_null())
        .ok_or_else(|| bad_config(format!("config group {gname} has no weights")))?;
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
    let bits = get_i64(w, &["num_bits"]).unwrap_or(8);
    if !(2..=8).contains(&bits) {
        return Err(unsupported(format!(
            "compressed-tensors {bits}-bit weights"
        )));
    }
    let strategy = match get_str(w, &["strategy"]).unwrap_or("tensor") {
        "group" => {
            CtStrategy::Group(group_size_of(get_i64(w, &["group_size"]))?.ok_or_else(|| {
                bad_config(format!(
                    "config group {gname}: group strategy without group_size"
                ))
            })?)
        }
        "channel" => CtStrategy::Channel,
        s => {
            return Err(unsupported(format!(
                "compressed-tensors weight strategy `{s}` (config group {gname})"
            )))
        }
    };
    Ok(CtWeightScheme {
        num_bits: bits as u8,
        symmetric: w.get("symmetric").and_then(Value::as_bool).unwrap_or(true),
        strategy,
    })
}
