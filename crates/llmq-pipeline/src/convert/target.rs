//! The target of a conversion: format, and the grid `-q LEVEL`, `--group-size` and
//! `--checkpoint-format` ask for. Whatever is not given is taken from the source, so
//! that a plain `convert MODEL FORMAT` keeps the source's grid where the format can.

use super::grid::IntGrid;
use crate::error::{PipelineError, Result};
use llmq_arch::mix::Mix;
use llmq_hfquant::gptq::GptqFormat;
use llmq_hfquant::IntQuantized;

/// The output formats of `convert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetFormat {
    Gguf,
    Gptq,
    Awq,
    CompressedTensors,
}

impl TargetFormat {
    pub fn name(self) -> &'static str {
        match self {
            TargetFormat::Gguf => "gguf",
            TargetFormat::Gptq => "gptq",
            TargetFormat::Awq => "awq",
            TargetFormat::CompressedTensors => "compressed-tensors",
        }
    }
}

/// An integer target's grid before the source is known (`None` = as the source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GridSpec {
    pub bits: Option<u8>,
    pub group_size: Option<Option<usize>>,
    pub symmetric: Option<bool>,
}

/// A parsed target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `None`: the GGUF type that holds the source exactly, if there is one
    Gguf(Option<Mix>),
    Gptq(GridSpec, GptqFormat),
    Awq(GridSpec),
    CompressedTensors(GridSpec),
}

fn bad_level(fmt: &str, level: &str, allowed: &str) -> PipelineError {
    PipelineError::invalid(
        format!("unknown {fmt} quantization level `{level}`"),
        format!("Use one of: {allowed}"),
    )
}

impl Target {
    /// Parses `FORMAT -q LEVEL --group-size G --checkpoint-format F`.
    pub fn parse(
        format: TargetFormat,
        level: Option<&str>,
        group_size: Option<i64>,
        checkpoint_format: Option<&str>,
    ) -> Result<Target> {
        let group = match group_size {
            None => None,
            Some(-1) => Some(None),
            Some(g) if g > 0 => Some(Some(g as usize)),
            Some(g) => {
                return Err(PipelineError::invalid(
                    format!("--group-size {g} is not valid"),
                    "Use 32, 64, 128 or -1 (per channel)",
                ))
            }
        };
        if checkpoint_format.is_some() && format != TargetFormat::Gptq {
            return Err(PipelineError::invalid(
                "--checkpoint-format applies to gptq only",
                "Drop --checkpoint-format",
            ));
        }
        let level = level.map(str::trim);
        Ok(match format {
            TargetFormat::Gguf => {
                if group.is_some() {
                    return Err(PipelineError::invalid(
                        "--group-size does not apply to gguf (its block sizes are fixed)",
                        "Drop --group-size",
                    ));
                }
                let mix = level
                    .map(|l| {
                        Mix::from_name(l).ok_or_else(|| {
                            let all: Vec<&str> = Mix::all().map(|m| m.name()).collect();
                            bad_level("GGUF", l, &all.join(", "))
                        })
                    })
                    .transpose()?;
                Target::Gguf(mix)
            }
            TargetFormat::Gptq => {
                let bits = level
                    .map(|l| match l.to_ascii_lowercase().as_str() {
                        "2bit" => Ok(2),
                        "3bit" => Ok(3),
                        "4bit" => Ok(4),
                        "8bit" => Ok(8),
                        _ => Err(bad_level("GPTQ", l, "2bit, 3bit, 4bit, 8bit")),
                    })
                    .transpose()?;
                let name = checkpoint_format.unwrap_or("gptq");
                let fmt = GptqFormat::from_name(name).ok_or_else(|| {
                    PipelineError::invalid(
                        format!("--checkpoint-format `{name}` is not supported"),
                        "Use gptq (v1) or gptq_v2",
                    )
                })?;
                let spec = GridSpec {
                    bits,
                    group_size: group,
                    symmetric: None,
                };
                Target::Gptq(spec, fmt)
            }
            TargetFormat::Awq => {
                if let Some(l) = level {
                    if !l.eq_ignore_ascii_case("4bit") {
                        return Err(bad_level("AWQ", l, "4bit"));
                    }
                }
                Target::Awq(GridSpec {
                    bits: Some(4),
                    group_size: group,
                    symmetric: Some(false),
                })
            }
            TargetFormat::CompressedTensors => {
                let preset = level
                    .map(|l| {
                        llmq_hfquant::compressed_tensors::CtPreset::from_name(l).ok_or_else(|| {
                            bad_level("compressed-tensors", l, "W4A16, W4A16_ASYM, W8A16")
                        })
                    })
                    .transpose()?;
                let spec = match preset {
                    Some(p) => {
                        let s = p.scheme();
                        GridSpec {
                            bits: Some(s.num_bits),
                            group_size: Some(group.unwrap_or(Some(128))),
                            symmetric: Some(s.symmetric),
                        }
                    }
                    None => GridSpec {
                        bits: None,
                        group_size: group,
                        symmetric: None,
                    },
                };
                Target::CompressedTensors(spec)
            }
        })
    }

    pub fn format(&self) -> TargetFormat {
        match self {
            Target::Gguf(_) => TargetFormat::Gguf,
            Target::Gptq(..) => TargetFormat::Gptq,
            Target::Awq(_) => TargetFormat::Awq,
            Target::CompressedTensors(_) => TargetFormat::CompressedTensors,
        }
    }
}

/// The source's grid: bits, group size of its first module, symmetric when every
/// module is.
pub fn source_grid(modules: &[&IntQuantized]) -> Option<IntGrid> {
    let first = modules.first()?;
    Some(IntGrid {
        bits: first.bits,
        group_size: first.group_size,
        symmetric: modules.iter().all(|q| q.symmetric),
        allow_g_idx: true,
    })
}

/// The target grid of an integer format for this source.
pub fn resolve_grid(target: &Target, source: IntGrid) -> Result<IntGrid> {
    let (spec, allowed_bits, allow_g_idx): (&GridSpec, &[u8], bool) = match target {
        Target::Gptq(s, _) => (s, &[2, 3, 4, 8], true),
        Target::Awq(s) => (s, &[4], false),
        Target::CompressedTensors(s) => (s, &[2, 3, 4, 5, 6, 7, 8], false),
        Target::Gguf(_) => unreachable!("gguf has no integer grid"),
    };
    let mut bits = spec.bits.unwrap_or(source.bits);
    if spec.bits.is_none() && !allowed_bits.contains(&bits) {
        // the smallest width that holds the source codes
        bits = *allowed_bits.iter().find(|&&b| b >= bits).unwrap_or(&8);
    }
    let mut group_size = spec.group_size.unwrap_or(source.group_size);
    if matches!(target, Target::Awq(_)) && group_size.is_none() {
        // AWQ needs groups: 128 holds per-channel scales exactly
        group_size = Some(128);
    }
    Ok(IntGrid {
        bits,
        group_size,
        symmetric: spec.symmetric.unwrap_or(source.symmetric),
        allow_g_idx,
    })
}

/// A short description of a grid, e.g. `4bit g128 sym`.
pub fn describe_grid(g: &IntGrid) -> String {
    format!(
        "{}bit {} {}",
        g.bits,
        g.group_size
            .map_or("per-channel".to_string(), |s| format!("g{s}")),
        if g.symmetric { "sym" } else { "asym" }
    )
}

/// The `-q` level a grid corresponds to in the target's naming.
pub fn level_name(target: &Target, g: &IntGrid) -> String {
    match target {
        Target::CompressedTensors(_) if g.group_size == Some(128) => match (g.bits, g.symmetric) {
            (4, true) => "W4A16".into(),
            (4, false) => "W4A16_ASYM".into(),
            (8, true) => "W8A16".into(),
            _ => describe_grid(g).replace(' ', "-"),
        },
        Target::CompressedTensors(_) => describe_grid(g).replace(' ', "-"),
        _ => format!("{}bit", g.bits),
    }
}
