//! The measured allocator for outputs that store one choice per Linear: EXL3 (a
//! trellis K per tensor, [`super::trellis`]) and the integer layouts GPTQ and
//! compressed-tensors (bits per module, [`super::int`]). It gives every group of
//! Linears one candidate so that the decoder's bits per weight (`Σ numel·bits /
//! Σ numel` over the Linears of the blocks, the head apart, counting the codes as
//! exllamav3 counts `bits` and GPTQ names `bits`; group scales and zero points are
//! not counted) are at most X, with the least total measured ΔKL:
//!
//! 1. **groups** ([`super::groups`] at [`Granularity::Fine`], on the model's GGUF
//!    plan): per block the attention's input projections, its output, the MLP's
//!    gate/up and down, the same for the shared experts, and each routed expert;
//! 2. **measure** ([`super::measure`] with the format's [`Candidate`]s): each group's
//!    ΔKL at each candidate, streamed layer by layer against the original on
//!    calibration windows;
//! 3. **choose** ([`super::chooser`]): the convex-hull greedy over the points
//!    `(numel·bits, ΔKL)` within `⌊X · Σ numel⌋` bits. The plan's bits are the
//!    written folder's: never over, and no group's next hull point fits in what is
//!    left. Deterministic (fixed group order, integer sizes).
//!
//! By default a block's routed experts are one written group (their ΔKLs summed):
//! exllamav3 stacks the experts of a projection at one K, and vLLM's fused MoE
//! kernels take one bit width per layer. `per_expert` writes the per-expert choice
//! instead (our engine runs it; exllamav3 does not load it).

use super::chooser::{self, Point};
use super::groups::{self, Granularity, Group};
use super::rounding::Candidate;
use super::{measure, reuse, AllocationReport, GroupChoice};
use crate::allocate::TrellisTarget;
use crate::error::{PipelineError, Result};
use crate::request::CalibrationRequest;
use crate::run::{Progress, TensorJob};
use llmq_arch::GgufTensorSpec;
use llmq_formats::GgmlType;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// What the caller gives: the source folder, its GGUF-named tensor plan, and the
/// Linears the budget covers.
pub struct LinearInputs<'a> {
    pub model_dir: &'a Path,
    pub name: &'a str,
    pub specs: &'a HashMap<String, GgufTensorSpec>,
    pub targets: &'a [TrellisTarget],
}

/// The bits of every target (a candidate's [`Candidate::code_bits`]) and the report,
/// for `target_bpw` within the candidates' range (`format` names the output in
/// errors).
pub fn allocate_linears(
    target_bpw: f64,
    cands: &[Candidate],
    measurements: Option<&Path>,
    per_expert: bool,
    inputs: &LinearInputs<'_>,
    calibration: &CalibrationRequest,
    progress: &dyn Progress,
) -> Result<(BTreeMap<String, u32>, AllocationReport)> {
    let planned = crate::hf_source::plan(
        inputs.model_dir,
        inputs.name,
        crate::quantize::gguf_mix("Q4_K_M")?,
    )?;
    let (jobs, groups, written) = linear_groups(&planned.jobs, inputs)?;
    let names: Vec<String> = cands.iter().map(|c| c.name()).collect();
    let m = match measurements {
        Some(p) => {
            progress.message(&format!("Measured ΔKL from {}", p.display()));
            reuse::read(p, &groups, &names)?
        }
        None => measure::measure(
            inputs.model_dir,
            &jobs,
            &groups,
            cands,
            planned.source.as_ref(),
            calibration,
            progress,
        )?,
    };
    choose(
        target_bpw,
        cands,
        &Grouped {
            jobs: &jobs,
            groups: &groups,
            written,
        },
        &m,
        per_expert,
        inputs,
    )
}

/// The jobs and their measured groups, with the labels of the merged groups.
pub struct Grouped<'a> {
    pub jobs: &'a [TensorJob],
    pub groups: &'a [Group],
    pub written: Vec<String>,
}

/// The choice of one candidate (of `cands`) per written group from the measured
/// curves `m`, within `⌊target · Σ numel⌋` bits of the targets, and the bits of every
/// target.
pub fn choose(
    target_bpw: f64,
    cands: &[Candidate],
    grouped: &Grouped<'_>,
    m: &measure::Measured,
    per_expert: bool,
    inputs: &LinearInputs<'_>,
) -> Result<(BTreeMap<String, u32>, AllocationReport)> {
    let (jobs, groups) = (grouped.jobs, grouped.groups);
    let names: Vec<String> = cands.iter().map(|c| c.name()).collect();
    let ks: Vec<u32> = cands
        .iter()
        .map(|c| {
            c.code_bits().ok_or_else(|| {
                PipelineError::general("a GGML candidate per Linear", "Report this as a bug")
            })
        })
        .collect::<Result<_>>()?;
    let numel: u64 = inputs.targets.iter().map(|t| t.numel).sum();
    let budget = (target_bpw * numel as f64).floor() as u64;
    let g_numel: Vec<u64> = groups.iter().map(|g| group_numel(jobs, g)).collect();
    // the written groups: merged experts unless per_expert
    let (w_of, w_labels): (Vec<usize>, Vec<String>) = if per_expert {
        (
            (0..groups.len()).collect(),
            groups.iter().map(|g| g.label.clone()).collect(),
        )
    } else {
        (
            groups.iter().map(|g| g.written).collect(),
            grouped.written.clone(),
        )
    };
    let mut w_numel = vec![0u64; w_labels.len()];
    let mut w_loss = vec![vec![0.0f64; ks.len()]; w_labels.len()];
    for (gi, &w) in w_of.iter().enumerate() {
        w_numel[w] += g_numel[gi];
        for (c, v) in m.loss[gi].iter().enumerate() {
            w_loss[w][c] += v;
        }
    }
    let bits_of = |n: u64| -> Vec<u64> { ks.iter().map(|&k| n * k as u64).collect() };
    let pts = |n: &[u64], loss: &[Vec<f64>]| -> Vec<Vec<Point>> {
        n.iter()
            .zip(loss)
            .map(|(&n, l)| {
                bits_of(n)
                    .into_iter()
                    .zip(l)
                    .map(|(bytes, &loss)| Point { bytes, loss })
                    .collect()
            })
            .collect()
    };
    let chosen = chooser::choose(&pts(&w_numel, &w_loss), budget).map_err(|e| {
        PipelineError::invalid(
            format!("--target-bpw {target_bpw} cannot be met with the candidates {names:?}: {e:?}"),
            format!(
                "Give a --target-bpw within {} … {}",
                ks.iter().min().unwrap_or(&0),
                ks.iter().max().unwrap_or(&0)
            ),
        )
    })?;
    let mut k_of: BTreeMap<String, u32> = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        let k = ks[chosen[w_of[gi]]];
        for name in hf_names(jobs, g, inputs.specs)? {
            k_of.insert(name, k);
        }
    }
    let bits: u64 = inputs
        .targets
        .iter()
        .map(|t| {
            k_of.get(&t.name)
                .map(|&k| t.numel * k as u64)
                .ok_or_else(|| {
                    PipelineError::general(
                        format!("{} is in no measured group", t.name),
                        "Report this as a bug",
                    )
                })
        })
        .sum::<Result<u64>>()?;
    if bits > budget {
        return Err(PipelineError::general(
            format!("the allocation takes {bits} bits, over the budget {budget}"),
            "Report this as a bug",
        ));
    }
    let report_groups = w_labels
        .iter()
        .enumerate()
        .map(|(w, label)| GroupChoice {
            label: label.clone(),
            chosen: names[chosen[w]].clone(),
            bytes: bits_of(w_numel[w]),
            delta_kl: w_loss[w].clone(),
        })
        .collect();
    // MoE: each expert's curve, and its choice when experts are allocated apart
    let experts = if groups.iter().any(|g| g.label.contains(".expert.")) {
        let all: Vec<Vec<f64>> = m.loss.clone();
        let pick = chooser::choose(&pts(&g_numel, &all), budget).ok();
        groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.label.contains(".expert."))
            .map(|(i, g)| GroupChoice {
                label: g.label.clone(),
                chosen: pick.as_ref().map_or(String::new(), |p| names[p[i]].clone()),
                bytes: bits_of(g_numel[i]),
                delta_kl: m.loss[i].clone(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let predicted = chosen.iter().enumerate().map(|(w, &c)| w_loss[w][c]).sum();
    Ok((
        k_of,
        AllocationReport {
            target_bpw,
            budget_bytes: budget,
            file_bytes: bits,
            candidates: names,
            windows: m.windows,
            tokens: m.tokens,
            calibration_source: m.source.clone(),
            groups: report_groups,
            experts,
            predicted_delta_kl: predicted,
            unit: super::SizeUnit::DecoderBits,
        },
    ))
}

/// The jobs with only the budgeted Linears marked quantized (the rest, embeddings,
/// head and routers included, at F32 so no group takes them), and their groups
/// ([`Granularity::Fine`]).
pub fn linear_groups(
    jobs: &[TensorJob],
    inputs: &LinearInputs<'_>,
) -> Result<(Vec<TensorJob>, Vec<Group>, Vec<String>)> {
    let targets: BTreeSet<&str> = inputs.targets.iter().map(|t| t.name.as_str()).collect();
    let mut covered = 0usize;
    let jobs: Vec<TensorJob> = jobs
        .iter()
        .map(|j| {
            let mut j = j.clone();
            let inside = inputs.specs.get(&j.name).is_some_and(|s| {
                s.layer.is_some() && s.sources.iter().all(|n| targets.contains(n.as_str()))
            });
            if inside {
                covered += inputs.specs[&j.name].sources.len();
                j.ty = GgmlType::Q4K;
            } else {
                j.ty = GgmlType::F32;
            }
            j
        })
        .collect();
    if covered != targets.len() {
        return Err(PipelineError::unsupported(
            format!(
                "--target-bpw could group {covered} of the {} quantized Linears of this model",
                targets.len()
            ),
            "Quantize it with -q LEVEL instead",
        ));
    }
    let (g, w) = groups::groups_with(&jobs, Granularity::Fine);
    Ok((jobs, g, w))
}

/// Elements of a group (an expert's share of a stacked tensor, or whole tensors).
fn group_numel(jobs: &[TensorJob], g: &Group) -> u64 {
    g.members
        .iter()
        .map(|m| match m.rows {
            Some((r0, r1)) => ((r1 - r0) * jobs[m.job].row_len()) as u64,
            None => jobs[m.job].numel() as u64,
        })
        .sum()
}

/// The Hugging Face weights of a group: all sources of whole tensors, expert `e`'s
/// source of a stacked one.
fn hf_names(
    jobs: &[TensorJob],
    g: &Group,
    specs: &HashMap<String, GgufTensorSpec>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for m in &g.members {
        let job = &jobs[m.job];
        let spec = specs.get(&job.name).ok_or_else(|| {
            PipelineError::general(
                format!("{} is not planned", job.name),
                "Report this as a bug",
            )
        })?;
        match m.rows {
            None => out.extend(spec.sources.iter().cloned()),
            Some((r0, r1)) => {
                let per = r1 - r0;
                let e = r0.checked_div(per).unwrap_or(0);
                let name = spec.sources.get(e).ok_or_else(|| {
                    PipelineError::general(
                        format!("{} has no expert {e}", job.name),
                        "Report this as a bug",
                    )
                })?;
                out.push(name.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::Allocation;

    /// A 2-layer MoE: attention (q 256×256, o 256×256), 4 experts (up 128×256,
    /// down 256×128), as GGUF jobs with their HF sources.
    fn moe() -> (
        Vec<TensorJob>,
        HashMap<String, GgufTensorSpec>,
        Vec<TrellisTarget>,
    ) {
        let (mut jobs, mut specs, mut targets) = (Vec::new(), HashMap::new(), Vec::new());
        let mut add = |g: String, ne: Vec<u64>, sources: Vec<(String, usize, usize)>, l: usize| {
            jobs.push(TensorJob {
                name: g.clone(),
                shape_ne: ne.clone(),
                ty: GgmlType::Q4K,
                unit: l,
            });
            for (n, o, i) in &sources {
                targets.push(TrellisTarget {
                    name: n.clone(),
                    numel: (o * i) as u64,
                });
            }
            specs.insert(
                g.clone(),
                GgufTensorSpec {
                    gguf_name: g,
                    role: llmq_arch::TensorRole::AttnQ,
                    layer: Some(l),
                    sources: sources.iter().map(|s| s.0.clone()).collect(),
                    source_shapes: sources.iter().map(|s| vec![s.1, s.2]).collect(),
                    shape_ne: ne.iter().map(|&x| x as usize).collect(),
                    transform: llmq_arch::Transform::None,
                },
            );
        };
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            for (g, hf) in [
                ("attn_q", "self_attn.q_proj"),
                ("attn_output", "self_attn.o_proj"),
            ] {
                add(
                    format!("blk.{l}.{g}.weight"),
                    vec![256, 256],
                    vec![(format!("{p}.{hf}.weight"), 256, 256)],
                    l,
                );
            }
            for (g, hf, o, i) in [
                ("ffn_up_exps", "up_proj", 128, 256),
                ("ffn_down_exps", "down_proj", 256, 128),
            ] {
                add(
                    format!("blk.{l}.{g}.weight"),
                    vec![i as u64, o as u64, 4],
                    (0..4)
                        .map(|e| (format!("{p}.mlp.experts.{e}.{hf}.weight"), o, i))
                        .collect(),
                    l,
                );
            }
        }
        (jobs, specs, targets)
    }

    /// The allocation meets `⌊X·Σnumel⌋` bits, with no room left for a next hull step,
    /// is the same twice, and keeps one K (or bit width) per expert projection unless
    /// per-expert; EXL3's trellis K's and GPTQ's bit widths alike.
    #[test]
    fn exl3_choice_meets_the_budget_deterministically() {
        let (jobs, specs, targets) = moe();
        let inputs = LinearInputs {
            model_dir: Path::new("."),
            name: "t",
            specs: &specs,
            targets: &targets,
        };
        let (jobs, groups, written) = linear_groups(&jobs, &inputs).unwrap();
        // per layer: q, o apart, and 4 experts (merged into one written group)
        assert_eq!(groups.len(), 2 * (2 + 4));
        assert_eq!(written.len(), 2 * 3);
        let numel: u64 = targets.iter().map(|t| t.numel).sum();
        let trellis = |bpw| -> Vec<Candidate> {
            super::super::trellis::candidate_ks(bpw)
                .into_iter()
                .map(Candidate::Trellis)
                .collect()
        };
        let gptq = super::super::int::candidates(
            crate::writers::Layout::Gptq(llmq_hfquant::gptq::GptqFormat::V1),
            Some(128),
            true,
        );
        for (bpw, per_expert, cands) in [
            (3.5, false, trellis(3.5)),
            (3.5, true, trellis(3.5)),
            (2.25, true, trellis(2.25)),
            (4.0, false, trellis(4.0)),
            (7.9, true, trellis(7.9)),
            (2.5, false, gptq.clone()),
            (3.5, true, gptq.clone()),
            (5.0, false, gptq.clone()),
        ] {
            // a convex, decreasing curve per group, steeper for some groups
            let loss: Vec<Vec<f64>> = groups
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    cands
                        .iter()
                        .map(|c| {
                            (1.0 + i as f64 * 0.37) * 0.5f64.powi(c.code_bits().unwrap() as i32)
                        })
                        .collect()
                })
                .collect();
            let m = measure::Measured {
                loss,
                tokens: 10,
                windows: 1,
                source: "t".into(),
            };
            let grouped = Grouped {
                jobs: &jobs,
                groups: &groups,
                written: written.clone(),
            };
            let (k_of, r) = choose(bpw, &cands, &grouped, &m, per_expert, &inputs).unwrap();
            let (k2, r2) = choose(bpw, &cands, &grouped, &m, per_expert, &inputs).unwrap();
            assert_eq!((&k_of, &r), (&k2, &r2), "deterministic");
            let bits: u64 = targets.iter().map(|t| t.numel * k_of[&t.name] as u64).sum();
            let budget = (bpw * numel as f64).floor() as u64;
            assert_eq!(bits, r.file_bytes);
            assert_eq!(budget, r.budget_bytes);
            assert!(bits <= budget, "{bpw}: {bits} > {budget}");
            // within one step: no group can move to its next candidate in what is left
            let smallest_step = r
                .groups
                .iter()
                .filter(|g| g.chosen != *r.candidates.last().unwrap())
                .map(|g| {
                    let c = r.candidates.iter().position(|x| *x == g.chosen).unwrap();
                    g.bytes[c + 1] - g.bytes[c]
                })
                .min()
                .unwrap_or(u64::MAX);
            assert!(
                budget - bits < smallest_step,
                "{bpw}: {} left",
                budget - bits
            );
            // one width per expert projection unless per-expert
            if !per_expert {
                for l in 0..2 {
                    for hf in ["up_proj", "down_proj"] {
                        let ks: BTreeSet<u32> = (0..4)
                            .map(|e| k_of[&format!("model.layers.{l}.mlp.experts.{e}.{hf}.weight")])
                            .collect();
                        assert_eq!(ks.len(), 1, "{bpw}: layer {l} {hf}: {ks:?}");
                    }
                }
            }
            match cands[0] {
                Candidate::Trellis(_) => {
                    let a = if per_expert {
                        Allocation::trellis_from_map_per_expert(1, &k_of)
                    } else {
                        Allocation::trellis_from_map(1, &k_of)
                    };
                    assert!(a.is_ok());
                }
                _ => {
                    let base = crate::request::IntGrid {
                        bits: 4,
                        group_size: Some(128),
                        symmetric: true,
                        act_order: false,
                    };
                    let a =
                        super::super::int::allocation(crate::request::Method::Gptq, base, &k_of);
                    for t in &targets {
                        let g = a.int_grid(&t.name).unwrap();
                        assert_eq!(g.bits as u32, k_of[&t.name]);
                        assert_eq!((g.group_size, g.symmetric), (Some(128), true));
                    }
                }
            }
        }
    }
}
