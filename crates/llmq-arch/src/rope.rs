//! RoPE scaling (`rope_parameters` of transformers ≥ 5, legacy `rope_scaling`): the
//! variants' parameters and the per-pair inverse frequencies and cos/sin scaling they
//! imply, computed as transformers' `modeling_rope_utils` does:
//! * `linear` (position interpolation, Chen et al. 2023, arXiv 2306.15595): every
//!   frequency divided by `factor`;
//! * `llama3` (Llama 3.1): low frequencies divided by `factor`, high ones kept, a smooth
//!   ramp between `low_freq_factor` and `high_freq_factor` wavelengths;
//! * `yarn` (Peng et al. 2023, arXiv 2309.00071): NTK-by-parts ramp between `beta_fast`
//!   and `beta_slow` rotations, cos/sin scaled by `attention_factor` (default
//!   `0.1·ln(factor) + 1`, or DeepSeek's `mscale`/`mscale_all_dim` ratio).
//!
//! * `longrope` (Phi-3.5 / Phi-4-mini, Ding et al. 2024, arXiv 2402.13753): per-pair
//!   `short_factor`s while the sequence fits `original_max_position_embeddings`, cos/sin
//!   scaled by `sqrt(1 + ln(factor) / ln(original))`; a forward call whose sequence
//!   reaches past the original length rotates all its positions with `long_factor`
//!   (transformers' `longrope_frequency_update`; [`RopeScaling::for_length`]).
//!
//! * `dynamic` (NTK-aware): plain RoPE up to `max_position_embeddings`; a forward call
//!   whose sequence reaches `L` past it raises the base to
//!   `base · (factor·L/max − (factor − 1))^(n/(n−2))` (transformers'
//!   `_compute_dynamic_ntk_parameters`; [`RopeScaling::for_length`]). transformers keeps
//!   a raised base across later, shorter calls of one model object; we recompute per
//!   call, which is the same for growing sequences (generation) and whole windows.
//!
//! A variant is described by per-pair *frequency factors* `f_i`: pair `i` of an
//! `n_rot`-dim rotation turns at `base^(-2i/n_rot) / f_i` radians per position (what
//! llama.cpp's `rope_freqs.weight` holds), plus a factor on cos and sin. An unknown type
//! is refused ([`ArchError::UnsupportedValue`]).

use crate::ArchError;
use serde_json::Value;

/// YaRN parameters, as in transformers' `_compute_yarn_parameters`.
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// cos/sin multiplier; `None`: derived from `factor`, `mscale`, `mscale_all_dim`
    pub attention_factor: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// round the correction range outwards to whole dimensions (default true)
    pub truncate: bool,
}

/// How a layer's RoPE frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// plain RoPE (`default`, or no parameters)
    Default,
    /// every frequency divided by `factor`
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    Yarn(Yarn),
    /// dynamic NTK within `max_position_embeddings` (plain RoPE there)
    Dynamic {
        factor: f64,
        max_position_embeddings: usize,
    },
    /// LongRoPE in its short regime (see the module notes)
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        /// cos/sin multiplier
        attention_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// `0.1·mscale·ln(scale) + 1` for `scale > 1`, else 1 (YaRN Eq. 21, transformers'
/// `yarn_get_mscale`).
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

fn num(p: &Value, key: &str) -> Result<Option<f64>, ArchError> {
    match p.get(key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| ArchError::BadValue {
            key: key.into(),
            why: format!("expected a number, found {v}"),
        }),
    }
}

fn req(p: &Value, key: &str, rope_type: &str) -> Result<f64, ArchError> {
    num(p, key)?.ok_or_else(|| ArchError::MissingKey(format!("{key} (rope_type {rope_type})")))
}

fn positive(key: &str, x: f64) -> Result<f64, ArchError> {
    if x > 0.0 && x.is_finite() {
        Ok(x)
    } else {
        Err(ArchError::BadValue {
            key: key.into(),
            why: format!("must be a positive number, found {x}"),
        })
    }
}

impl RopeScaling {
    /// The scaling a rope parameter dict describes (`rope_type`, else legacy `type`).
    /// `top` is the whole config: legacy configs keep `original_max_position_embeddings`
    /// there, and YaRN without `factor` uses `max_position_embeddings` over it.
    pub fn from_params(p: &Value, top: &Value) -> Result<RopeScaling, ArchError> {
        let ty = match p.get("rope_type").or_else(|| p.get("type")) {
            None | Some(Value::Null) => return Ok(RopeScaling::Default),
            Some(Value::String(s)) => s.as_str(),
            Some(v) => {
                return Err(ArchError::UnsupportedValue {
                    key: "rope_type".into(),
                    value: v.to_string(),
                })
            }
        };
        let orig = |ty: &str| -> Result<f64, ArchError> {
            match num(p, "original_max_position_embeddings")? {
                Some(x) => Ok(x),
                None => req(top, "original_max_position_embeddings", ty),
            }
        };
        Ok(match ty {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: positive("factor", req(p, "factor", ty)?)?,
            },
            "llama3" => {
                let s = RopeScaling::Llama3 {
                    factor: positive("factor", req(p, "factor", ty)?)?,
                    low_freq_factor: req(p, "low_freq_factor", ty)?,
                    high_freq_factor: req(p, "high_freq_factor", ty)?,
                    original_max_position_embeddings: positive(
                        "original_max_position_embeddings",
                        orig(ty)?,
                    )?,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor: l,
                    high_freq_factor: h,
                    ..
                } = s
                {
                    if h <= l {
                        return Err(ArchError::BadValue {
                            key: "high_freq_factor".into(),
                            why: format!("{h} is not above low_freq_factor {l}"),
                        });
                    }
                }
                s
            }
            "yarn" => {
                let original = positive("original_max_position_embeddings", orig(ty)?)?;
                let factor = match num(p, "factor")? {
                    Some(f) => f,
                    None => req(top, "max_position_embeddings", ty)? / original,
                };
                // transformers: `get("beta_fast") or 32` (a 0 also takes the default)
                let beta = |k: &str, d: f64| -> Result<f64, ArchError> {
                    Ok(num(p, k)?.filter(|x| *x != 0.0).unwrap_or(d))
                };
                RopeScaling::Yarn(Yarn {
                    factor: positive("factor", factor)?,
                    original_max_position_embeddings: original,
                    beta_fast: beta("beta_fast", 32.0)?,
                    beta_slow: beta("beta_slow", 1.0)?,
                    attention_factor: num(p, "attention_factor")?,
                    mscale: num(p, "mscale")?,
                    mscale_all_dim: num(p, "mscale_all_dim")?,
                    truncate: top
                        .get("rope_parameters")
                        .or_else(|| top.get("rope_scaling"))
                        .and_then(|r| r.get("truncate"))
                        .or_else(|| p.get("truncate"))
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                })
            }
            "dynamic" => RopeScaling::Dynamic {
                factor: positive("factor", req(p, "factor", ty)?)?,
                max_position_embeddings: positive(
                    "max_position_embeddings",
                    req(top, "max_position_embeddings", ty)?,
                )? as usize,
            },
            "longrope" | "su" => {
                let original = orig(ty)?;
                let factor = match num(p, "factor")? {
                    Some(f) => f,
                    None => req(top, "max_position_embeddings", ty)? / original,
                };
                let attention_factor = match num(p, "attention_factor")? {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / original.ln()).sqrt(),
                };
                let list = |k: &str| -> Result<Vec<f64>, ArchError> {
                    let bad = || ArchError::BadValue {
                        key: k.into(),
                        why: "expected a list of positive numbers".into(),
                    };
                    let a = p
                        .get(k)
                        .and_then(Value::as_array)
                        .ok_or_else(|| ArchError::MissingKey(format!("{k} (rope_type {ty})")))?;
                    a.iter()
                        .map(|x| x.as_f64().filter(|v| *v > 0.0).ok_or_else(bad))
                        .collect()
                };
                RopeScaling::LongRope {
                    short_factor: list("short_factor")?,
                    long_factor: list("long_factor")?,
                    attention_factor,
                    original_max_position_embeddings: positive(
                        "original_max_position_embeddings",
                        original,
                    )? as usize,
                }
            }
            other => {
                return Err(ArchError::UnsupportedValue {
                    key: "rope_type".into(),
                    value: format!("\"{other}\""),
                })
            }
        })
    }

    /// The transformers name of the variant.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn(_) => "yarn",
            RopeScaling::LongRope { .. } => "longrope",
            RopeScaling::Dynamic { .. } => "dynamic",
        }
    }

    /// Per-pair frequency factors `f_i` (`n_rot / 2` of them) for RoPE base `base`:
    /// pair `i` turns at `base^(-2i/n_rot) / f_i`. `None` for `default` and `linear`
    /// (whose uniform factor is a position scale).
    pub fn freq_factors(&self, base: f64, n_rot: usize) -> Option<Vec<f32>> {
        let inv = |i: usize| base.powf(-((2 * i) as f64) / n_rot as f64);
        match self {
            RopeScaling::Default | RopeScaling::Linear { .. } | RopeScaling::Dynamic { .. } => None,
            RopeScaling::LongRope { short_factor, .. } => Some(
                short_factor
                    .iter()
                    .take(n_rot / 2)
                    .map(|f| *f as f32)
                    .collect(),
            ),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                Some(
                    (0..n_rot / 2)
                        .map(|i| {
                            let wavelen = 2.0 * std::f64::consts::PI / inv(i);
                            let f = if wavelen < high_wavelen {
                                1.0
                            } else if wavelen > low_wavelen {
                                *factor
                            } else {
                                let smooth = (old / wavelen - low_freq_factor)
                                    / (high_freq_factor - low_freq_factor);
                                1.0 / ((1.0 - smooth) / factor + smooth)
                            };
                            f as f32
                        })
                        .collect(),
                )
            }
            RopeScaling::Yarn(y) => {
                let dim = n_rot as f64;
                let corr = |rot: f64| {
                    dim * (y.original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI))
                        .ln()
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (corr(y.beta_fast), corr(y.beta_slow));
                if y.truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(dim - 1.0);
                if low == high {
                    high += 0.001;
                }
                Some(
                    (0..n_rot / 2)
                        .map(|i| {
                            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                            let extrapolation = 1.0 - ramp;
                            let scale = (1.0 - extrapolation) / y.factor + extrapolation;
                            (1.0 / scale) as f32
                        })
                        .collect(),
                )
            }
        }
    }

    /// The rotation of a forward call whose sequence reaches `seq_len` positions (the
    /// largest position + 1), where it differs from the fixed one: `(base, frequency
    /// factors)`. `None`: the fixed rotation applies (every variant but LongRoPE past its
    /// original length and dynamic NTK past `max_position_embeddings`).
    pub fn for_length(
        &self,
        base: f64,
        n_rot: usize,
        seq_len: usize,
    ) -> Option<(f64, Option<Vec<f32>>)> {
        match self {
            RopeScaling::LongRope {
                long_factor,
                original_max_position_embeddings,
                ..
            } if seq_len > *original_max_position_embeddings => Some((
                base,
                Some(
                    long_factor
                        .iter()
                        .take(n_rot / 2)
                        .map(|f| *f as f32)
                        .collect(),
                ),
            )),
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } if seq_len > *max_position_embeddings && n_rot > 2 => {
                let grown =
                    factor * seq_len as f64 / *max_position_embeddings as f64 - (factor - 1.0);
                let n = n_rot as f64;
                Some((base * grown.powf(n / (n - 2.0)), None))
            }
            _ => None,
        }
    }

    /// The sequence length past which [`RopeScaling::for_length`] changes the rotation
    /// (a reader that computes only the fixed rotation must refuse longer sequences).
    /// `None`: never.
    pub fn exact_positions(&self) -> Option<usize> {
        match self {
            RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => Some(*original_max_position_embeddings),
            RopeScaling::Dynamic {
                max_position_embeddings,
                ..
            } => Some(*max_position_embeddings),
            _ => None,
        }
    }

    /// The uniform position scale (`linear`'s factor; 1 otherwise).
    pub fn position_scale(&self) -> f64 {
        match self {
            RopeScaling::Linear { factor } => *factor,
            _ => 1.0,
        }
    }

    /// The factor on cos and sin (transformers' `attention_scaling`): YaRN's; 1 otherwise.
    pub fn attention_factor(&self) -> f64 {
        match self {
            RopeScaling::Yarn(y) => match (y.attention_factor, y.mscale, y.mscale_all_dim) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                    yarn_get_mscale(y.factor, m) / yarn_get_mscale(y.factor, a)
                }
                _ => yarn_get_mscale(y.factor, 1.0),
            },
            RopeScaling::LongRope {
                attention_factor, ..
            } => *attention_factor,
            _ => 1.0,
        }
    }

    /// The factor on the softmax scale of MLA models (transformers' `yarn_apply_mscale`):
    /// `mscale(factor, mscale_all_dim)²` for YaRN with `mscale_all_dim`, else 1.
    pub fn mla_softmax_factor(&self) -> f64 {
        match self {
            RopeScaling::Yarn(Yarn {
                factor,
                mscale_all_dim: Some(a),
                ..
            }) if *a != 0.0 => {
                let m = yarn_get_mscale(*factor, *a);
                m * m
            }
            _ => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_and_unimplemented_types_name_the_key_and_value() {
        for ty in ["ntk-by-parts", "fancy"] {
            let e = RopeScaling::from_params(&json!({"rope_type": ty, "factor": 2.0}), &json!({}))
                .unwrap_err();
            let s = e.to_string();
            assert!(s.contains("rope_type") && s.contains(ty), "{s}");
        }
    }

    #[test]
    fn dynamic_is_plain_rope_within_the_trained_context() {
        let s = RopeScaling::from_params(
            &json!({"rope_type":"dynamic","factor":2.0}),
            &json!({"max_position_embeddings": 128}),
        )
        .unwrap();
        assert_eq!(s.freq_factors(10000.0, 64), None);
        assert_eq!(s.position_scale(), 1.0);
        assert_eq!(s.attention_factor(), 1.0);
        assert_eq!(s.exact_positions(), Some(128));
    }

    #[test]
    fn llama3_factors_follow_the_wavelength_bands() {
        let s = RopeScaling::from_params(
            &json!({"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
                    "high_freq_factor":4.0,"original_max_position_embeddings":64}),
            &json!({}),
        )
        .unwrap();
        let f = s.freq_factors(10000.0, 64).unwrap();
        assert_eq!(f.len(), 32);
        // the fastest pair (wavelength 2π < 16) is kept, the slowest (> 64) divided by 8
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
        assert!(f.iter().any(|x| *x > 1.0 && *x < 8.0), "{f:?}");
    }

    #[test]
    fn yarn_attention_factor_and_deepseek_mscale() {
        let top = json!({"max_position_embeddings": 256});
        let s = RopeScaling::from_params(
            &json!({"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":64}),
            &top,
        )
        .unwrap();
        assert!((s.attention_factor() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        assert_eq!(s.mla_softmax_factor(), 1.0);
        let f = s.freq_factors(10000.0, 32).unwrap();
        assert_eq!(f[0], 1.0);
        assert_eq!(*f.last().unwrap(), 4.0);
        let d = RopeScaling::from_params(
            &json!({"type":"yarn","factor":40.0,"mscale":1.0,"mscale_all_dim":1.0,
                    "original_max_position_embeddings":4096}),
            &top,
        )
        .unwrap();
        assert!((d.attention_factor() - 1.0).abs() < 1e-12);
        let m = 0.1 * 40f64.ln() + 1.0;
        assert!((d.mla_softmax_factor() - m * m).abs() < 1e-12);
        // no factor: max_position_embeddings / original
        let n = RopeScaling::from_params(
            &json!({"rope_type":"yarn","original_max_position_embeddings":64}),
            &top,
        )
        .unwrap();
        assert!(matches!(n, RopeScaling::Yarn(Yarn { factor, .. }) if factor == 4.0));
    }
}
