//! The quantized modules of a safetensors checkpoint and their decoding into
//! [`IntQuantized`], the inverse of the layouts' `pack` functions: GPTQ
//! (`qweight/qzeros/scales/g_idx`, [`crate::gptq::unpack`]), AutoAWQ GEMM
//! (`qweight/qzeros/scales`, [`crate::awq::unpack`]), compressed-tensors
//! `pack-quantized` (`weight_packed/weight_scale/weight_zero_point/weight_shape`,
//! [`crate::compressed_tensors::unpack`]) and `int-quantized` (`weight` as signed int8
//! codes with `weight_scale` and an optional `weight_zero_point`, dequantized as
//! `(q - zp) * scale` by compressed-tensors' `_dequantize`).
//!
//! Each quantized module `X` is presented as a virtual `X.weight` of shape
//! `[out, in]` ([`QuantizedModules::plan_tensors`]); every other tensor (embeddings,
//! norms, `lm_head`, ignored modules, biases) is left as it is.

use super::scheme::{CtFormat, HfQuantScheme};
use crate::compressed_tensors::{self as ct, CtStrategy, CtTensors};
use crate::gptq::{self, GptqTensors};
use crate::{awq, Dtype, Error, FpQuantized, FpScheme, HfTensor, IntQuantized, Result};
use half::{bf16, f16};
use llmq_formats::safetensors::{SafetensorsModel, StDtype};
use std::collections::{BTreeMap, HashMap};

/// How one module is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gptq,
    Awq,
    CtPacked,
    CtInt,
    /// compressed-tensors floating-point codes ([`crate::ct_fp`])
    CtFp(FpScheme),
}

impl Kind {
    /// `(packed tensor suffix, companion suffixes)`.
    fn suffixes(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Kind::Gptq => ("qweight", &["qzeros", "scales", "g_idx"]),
            Kind::Awq => ("qweight", &["qzeros", "scales"]),
            Kind::CtPacked => (
                "weight_packed",
                &[
                    "weight_scale",
                    "weight_zero_point",
                    "weight_g_idx",
                    "weight_shape",
                ],
            ),
            Kind::CtInt => (
                "weight",
                &["weight_scale", "weight_zero_point", "weight_g_idx"],
            ),
            Kind::CtFp(s) if s.is_fp4() => (
                "weight_packed",
                &["weight_scale", "weight_global_scale", "input_global_scale"],
            ),
            Kind::CtFp(_) => ("weight", &["weight_scale", "input_scale"]),
        }
    }
}

/// The quantized modules of a checkpoint, by module name (`model.layers.0.mlp.up_proj`).
pub struct QuantizedModules {
    pub scheme: HfQuantScheme,
    /// module → (`[out, in]`, layout)
    modules: BTreeMap<String, ([usize; 2], Kind)>,
}

fn tensor_err(name: &str, why: impl Into<String>) -> Error {
    Error::Tensor {
        name: name.to_string(),
        why: why.into(),
    }
}

/// A stored tensor as an [`HfTensor`]; bf16 is widened to f16 (scales are kept in f16
/// by every layout), other float and integer dtypes are kept.
pub fn read_tensor(st: &SafetensorsModel, name: &str) -> Result<Option<HfTensor>> {
    if st.info(name).is_none() {
        return Ok(None);
    }
    let v = st.get(name).map_err(|e| tensor_err(name, e.to_string()))?;
    let shape = v.info.shape.clone();
    let t = match v.info.dtype {
        StDtype::F16 => HfTensor::from_raw(Dtype::F16, &shape, v.bytes.to_vec()),
        StDtype::F32 => HfTensor::from_raw(Dtype::F32, &shape, v.bytes.to_vec()),
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
        StDtype::Other("I8") => HfTensor::from_raw(Dtype::I8, &shape, v.bytes.to_vec()),
        StDtype::Other("U8") => HfTensor::from_raw(Dtype::U8, &shape, v.bytes.to_vec()),
        StDtype::Other("F8_E4M3") => HfTensor::from_raw(Dtype::F8E4M3, &shape, v.bytes.to_vec()),
        StDtype::Other(d) => {
            return Err(tensor_err(
                name,
                format!("dtype {d} where int32 / f16 was expected"),
            ))
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
        _ => Err(tensor_err(name, "scales are not floating point")),
    }
}

fn as_i64s(t: &HfTensor) -> Option<Vec<i64>> {
    t.to_i64_vec()
        .or_else(|| {
            t.to_i32_vec()
                .map(|v| v.into_iter().map(i64::from).collect())
        })
        .or_else(|| {
            t.to_i8_vec()
                .map(|v| v.into_iter().map(i64::from).collect())
        })
}

impl QuantizedModules {
    /// Finds the quantized modules among the checkpoint's tensors.
    pub fn scan(scheme: HfQuantScheme, st: &SafetensorsModel) -> Result<QuantizedModules> {
        let mut modules = BTreeMap::new();
        for info in st.tensors() {
            let (name, shape) = (&info.name, &info.shape);
            let found = match &scheme {
                HfQuantScheme::Gptq { .. } => {
                    name.strip_suffix(".qweight").map(|p| (p, Kind::Gptq))
                }
                HfQuantScheme::Awq { .. } => name.strip_suffix(".qweight").map(|p| (p, Kind::Awq)),
                HfQuantScheme::CompressedTensors { .. }
                    if fp_module(&scheme, st, name).is_some() =>
                {
                    fp_module(&scheme, st, name)
                }
                HfQuantScheme::CompressedTensors { .. } => {
                    if let Some(p) = name.strip_suffix(".weight_packed") {
                        Some((p, Kind::CtPacked))
                    } else {
                        name.strip_suffix(".weight")
                            .filter(|p| {
                                info.dtype == StDtype::Other("I8")
                                    && st.info(&format!("{p}.weight_scale")).is_some()
                            })
                            .map(|p| (p, Kind::CtInt))
                    }
                }
            };
            let Some((prefix, kind)) = found else {
                continue;
            };
            if shape.len() != 2 {
                return Err(tensor_err(name, "packed weight is not 2-D"));
            }
            let dims = match (&scheme, kind) {
                (HfQuantScheme::Gptq { bits, .. }, _) => {
                    let inp = match st.info(&format!("{prefix}.g_idx")) {
                        Some(g) => g.numel(),
                        None => shape[0] * 32 / *bits as usize,
                    };
                    [shape[1], inp]
                }
                (_, Kind::Awq) => [shape[1] * 8, shape[0]],
                (_, Kind::CtInt) => [shape[0], shape[1]],
                (_, Kind::CtFp(s)) if s.is_fp4() => [shape[0], shape[1] * 2],
                (_, Kind::CtFp(_)) => [shape[0], shape[1]],
                _ => match read_tensor(st, &format!("{prefix}.weight_shape"))?
                    .as_ref()
                    .and_then(as_i64s)
                {
                    Some(s) if s.len() == 2 => [s[0] as usize, s[1] as usize],
                    _ => {
                        let bits = ct_bits(&scheme, prefix)?;
                        [shape[0], shape[1] * 32 / bits as usize]
                    }
                },
            };
            modules.insert(prefix.to_string(), (dims, kind));
        }
        if let Some(r) = scheme.rotation() {
            // the rotation is folded into floating-point modules as they are decoded
            for (prefix, ([_, inp], kind)) in &modules {
                if !matches!(kind, Kind::CtFp(_)) || !inp.is_multiple_of(r.block) {
                    return Err(Error::UnsupportedCheckpoint(format!(
                        "{prefix}: an input rotation of block {} on a module that is not floating-point coded or whose {inp} inputs are not whole blocks",
                        r.block
                    )));
                }
            }
        }
        Ok(QuantizedModules { scheme, modules })
    }

    /// The checkpoint's tensor list with each quantized module's tensors replaced by
    /// one `X.weight` of shape `[out, in]`, in the checkpoint's order.
    pub fn plan_tensors(&self, st: &SafetensorsModel) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for t in st.tensors() {
            match self.owner(&t.name) {
                Some((p, true)) => {
                    let [o, i] = self.modules[p].0;
                    out.push((format!("{p}.weight"), vec![o, i]));
                }
                Some((_, false)) => {}
                None => out.push((t.name.clone(), t.shape.clone())),
            }
        }
        out
    }

    /// The quantized module a stored tensor belongs to, and whether it is the packed
    /// weight itself (`true`) or a companion (`false`).
    pub fn owner<'a>(&self, name: &'a str) -> Option<(&'a str, bool)> {
        if let Some(r) = self.scheme.rotation() {
            // the rotation's own tensor, `<module>.<scheme>_input.weight`
            let module = name
                .strip_suffix(".weight")
                .and_then(|n| n.strip_suffix("_input"))
                .and_then(|n| n.strip_suffix(r.name.as_str()))
                .and_then(|n| n.strip_suffix('.'));
            if let Some(m) = module.filter(|m| self.modules.contains_key(*m)) {
                return Some((m, false));
            }
        }
        let (prefix, suffix) = name.rsplit_once('.')?;
        let (_, kind) = self.modules.get(prefix)?;
        let (packed, companions) = kind.suffixes();
        if suffix == packed {
            Some((prefix, true))
        } else {
            companions.contains(&suffix).then_some((prefix, false))
        }
    }

    /// The module behind a plan name `X.weight`, if it is quantized.
    pub fn module_of<'a>(&self, source: &'a str) -> Option<&'a str> {
        source
            .strip_suffix(".weight")
            .filter(|p| self.modules.contains_key(*p))
    }

    /// The quantized modules and their `[out, in]`.
    pub fn modules(&self) -> impl Iterator<Item = (&str, [usize; 2])> {
        self.modules.iter().map(|(k, (d, _))| (k.as_str(), *d))
    }

    /// Whether module `prefix` holds floating-point codes (read with
    /// [`QuantizedModules::fp_quantized`], not as integers).
    pub fn is_fp(&self, prefix: &str) -> bool {
        matches!(self.modules.get(prefix), Some((_, Kind::CtFp(_))))
    }

    /// Decodes a floating-point module ([`QuantizedModules::is_fp`]).
    pub fn fp_quantized(&self, st: &SafetensorsModel, prefix: &str) -> Result<FpQuantized> {
        let Some(&([out, inp], Kind::CtFp(scheme))) = self.modules.get(prefix) else {
            return Err(tensor_err(prefix, "not a floating-point quantized module"));
        };
        let get = |n: &str| read_tensor(st, n).ok().flatten();
        crate::ct_fp::unpack(&get, prefix, scheme, out, inp)
    }

    /// `[out, in]` of module `prefix`.
    pub fn dims(&self, prefix: &str) -> Option<[usize; 2]> {
        self.modules.get(prefix).map(|(d, _)| *d)
    }

    /// The Hadamard block of the input rotation module `prefix`'s codes are stored
    /// under ([`super::transform`]), if any.
    pub fn rotation_block(&self, prefix: &str) -> Option<usize> {
        let r = self.scheme.rotation()?;
        self.modules.contains_key(prefix).then_some(r.block)
    }

    /// The dense weight of floating-point module `prefix` in the original input
    /// space: its codes dequantized, and the input rotation folded in (`W'·R`, exact
    /// up to f32 rounding: the layer computes `W'·(R·x)`).
    pub fn fp_dense(&self, st: &SafetensorsModel, prefix: &str) -> Result<Vec<f32>> {
        let q = self.fp_quantized(st, prefix)?;
        let deq = q.dequantize();
        Ok(match self.rotation_block(prefix) {
            Some(b) => crate::hadamard::unrotate(&deq, q.in_features, b),
            None => deq,
        })
    }

    /// The values of module `prefix`, row-major `[out, in]`, whatever its codes (a
    /// rotation folded in).
    pub fn dequantize(&self, st: &SafetensorsModel, prefix: &str) -> Result<Vec<f32>> {
        if self.is_fp(prefix) {
            self.fp_dense(st, prefix)
        } else {
            Ok(self.int_quantized(st, prefix)?.dequantize())
        }
    }

    /// Decodes module `prefix` with the reference layouts. `symmetric` is set when
    /// every zero point is `2^(bits-1)`.
    pub fn int_quantized(&self, st: &SafetensorsModel, prefix: &str) -> Result<IntQuantized> {
        let ([out, inp], kind) = *self
            .modules
            .get(prefix)
            .ok_or_else(|| tensor_err(prefix, "not a quantized module"))?;
        let fetch = |s: &str| read_tensor(st, &format!("{prefix}.{s}"));
        let need = |s: &str| -> Result<HfTensor> {
            fetch(s)?.ok_or_else(|| tensor_err(&format!("{prefix}.{s}"), "missing"))
        };
        let words = |t: HfTensor, s: &str| -> Result<Vec<u32>> {
            t.to_u32_words()
                .ok_or_else(|| tensor_err(&format!("{prefix}.{s}"), "not int32"))
        };
        let bad = |e: Error| tensor_err(prefix, e.to_string());
        let mut q = match (&self.scheme, kind) {
            (
                HfQuantScheme::Gptq {
                    group_size, format, ..
                },
                _,
            ) => {
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
                // `symmetric` is decided below from the zero points
                gptq::unpack(&t, gs, false, *format).map_err(bad)?
            }
            (HfQuantScheme::Awq { group_size }, _) => {
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
                awq::unpack(&t).map_err(bad)?
            }
            (_, Kind::CtPacked) => {
                let scheme = self.ct_scheme(prefix)?;
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
                ct::unpack(&t, &scheme).map_err(bad)?
            }
            _ => self.ct_int(prefix, out, inp, &fetch)?,
        };
        let mid = 1u8 << (q.bits - 1);
        q.symmetric = q.zeros.iter().all(|&z| z == mid);
        Ok(q)
    }

    fn ct_scheme(&self, prefix: &str) -> Result<ct::CtWeightScheme> {
        self.scheme
            .ct_group(prefix)
            .and_then(|g| g.scheme)
            .ok_or_else(|| tensor_err(prefix, "no quantized config group applies"))
    }

    /// `int-quantized`: signed int8 codes, zero points signed too.
    fn ct_int(
        &self,
        prefix: &str,
        out: usize,
        inp: usize,
        fetch: &dyn Fn(&str) -> Result<Option<HfTensor>>,
    ) -> Result<IntQuantized> {
        let scheme = self.ct_scheme(prefix)?;
        let name = |s: &str| format!("{prefix}.{s}");
        let bits = scheme.num_bits;
        let mid = 1i64 << (bits - 1);
        let maxq = (1i64 << bits) - 1;
        let to_code = |v: i64, what: &str| -> Result<u8> {
            let c = v + mid;
            if (0..=maxq).contains(&c) {
                Ok(c as u8)
            } else {
                Err(tensor_err(
                    &name(what),
                    format!("value {v} outside {bits} bits"),
                ))
            }
        };
        let w = fetch("weight")?.ok_or_else(|| tensor_err(&name("weight"), "missing"))?;
        let codes = as_i64s(&w).ok_or_else(|| tensor_err(&name("weight"), "not int8"))?;
        let q = codes
            .into_iter()
            .map(|v| to_code(v, "weight"))
            .collect::<Result<Vec<u8>>>()?;
        let scale = f16_scales(
            fetch("weight_scale")?.ok_or_else(|| tensor_err(&name("weight_scale"), "missing"))?,
            prefix,
        )?
        .to_f16_vec()
        .unwrap_or_default();
        // strategy "tensor": one scale for the whole matrix, i.e. one per row
        let (scales, group_size) = match (scale.len(), scheme.strategy) {
            (1, _) => (vec![scale[0]; out], None),
            (_, CtStrategy::Group(g)) => (scale, Some(g)),
            (_, CtStrategy::Channel) => (scale, None),
        };
        let ng = scales.len() / out.max(1);
        let zeros = match fetch("weight_zero_point")? {
            Some(z) if !scheme.symmetric => {
                let v = as_i64s(&z)
                    .ok_or_else(|| tensor_err(&name("weight_zero_point"), "not an integer"))?;
                let v: Vec<i64> = if v.len() == 1 {
                    vec![v[0]; out * ng]
                } else {
                    v
                };
                v.into_iter()
                    .map(|z| to_code(z, "weight_zero_point"))
                    .collect::<Result<Vec<u8>>>()?
            }
            _ => vec![mid as u8; out * ng],
        };
        let r = IntQuantized {
            bits,
            group_size,
            symmetric: scheme.symmetric,
            out_features: out,
            in_features: inp,
            q,
            scales,
            zeros,
            g_idx: fetch("weight_g_idx")?
                .and_then(|g| g.to_i32_vec())
                .map(|g| g.into_iter().map(|x| x as u32).collect()),
        };
        r.validate()
            .map_err(|e| tensor_err(prefix, e.to_string()))?;
        Ok(r)
    }
}

/// `(module, kind)` when `name` is the code tensor of a module whose config group is a
/// floating-point one.
fn fp_module<'a>(
    scheme: &HfQuantScheme,
    st: &SafetensorsModel,
    name: &'a str,
) -> Option<(&'a str, Kind)> {
    let (prefix, suffix) = name.rsplit_once('.')?;
    let CtFormat::Float(s) = scheme.ct_group(prefix)?.format else {
        return None;
    };
    let codes = if s.is_fp4() {
        suffix == "weight_packed"
    } else {
        // FP8 codes are `weight` in F8_E4M3 beside a scale (ignored modules stay float)
        suffix == "weight"
            && st.info(name)?.dtype == StDtype::Other("F8_E4M3")
            && st.info(&format!("{prefix}.weight_scale")).is_some()
    };
    codes.then_some((prefix, Kind::CtFp(s)))
}

fn ct_bits(scheme: &HfQuantScheme, prefix: &str) -> Result<u8> {
    scheme
        .ct_group(prefix)
        .and_then(|g| (g.format != CtFormat::Dense).then_some(g.scheme?.num_bits))
        .ok_or_else(|| tensor_err(prefix, "no quantized config group applies"))
}
