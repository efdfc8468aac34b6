//! `quantize MODEL gguf --target-bpw X`: the measured bit allocator. It fills the
//! allocate stage's [`Allocation`] for GGUF (the streaming executor and the writer
//! do not change) in three steps:
//!
//! 1. **groups** ([`groups`]): embeddings, head, per block the attention and the MLP,
//!    shared experts apart, and each routed expert;
//! 2. **measure** ([`measure`]): each group's ΔKL against the original at each
//!    candidate type ([`CANDIDATES`]), everything else at the source's precision,
//!    streamed layer by layer over calibration windows;
//! 3. **choose** ([`chooser`]): one candidate per written group by the convex-hull
//!    greedy, within the byte budget `X · params / 8` of the **whole file** (header,
//!    metadata, alignment and the level's unquantized tensors included, so the real
//!    file's bits per weight are at most X).
//!
//! The ΔKLs of different groups are added as if independent (a first-order model;
//! measured interactions are not). GGUF holds one type per stacked expert tensor, so
//! the written allocation gives a block's routed experts one type (their ΔKLs summed,
//! per projection merged); the per-expert choice the same budget would give where
//! per-expert types can be stored (our engine) is reported beside it. Tensors the
//! base level (`-q`, default Q4_K_M) keeps unquantized stay so.
//!
//! Outputs that store one choice per Linear (EXL3, GPTQ, compressed-tensors) go
//! through [`linears`] instead, on finer groups: [`trellis`], [`int`].

pub mod chooser;
pub mod groups;
pub mod int;
pub mod linears;
pub mod measure;
mod reuse;
pub mod rounding;
pub mod trellis;

use crate::allocate::{Allocation, QuantSpec, TensorSpec};
use crate::error::{PipelineError, Result};
use crate::request::{CalibrationRequest, Method};
use crate::run::{Progress, TensorJob, TensorSource};
use chooser::Point;
use llmq_formats::gguf::GgufPlan;
use llmq_formats::GgmlType;
use std::collections::BTreeSet;
use std::path::Path;

/// The candidate types of every group (the k-quant family and Q8_0), cheapest first.
pub const CANDIDATES: [GgmlType; 5] = [
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8_0,
];

/// One group's measured curve and choice.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupChoice {
    pub label: String,
    /// the candidate chosen (its name; a tensor whose rows the type's block does not
    /// divide gets llama.cpp's fallback)
    pub chosen: String,
    /// bytes at each candidate
    pub bytes: Vec<u64>,
    /// ΔKL at each candidate
    pub delta_kl: Vec<f64>,
}

/// What the sizes of an [`AllocationReport`] count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeUnit {
    /// bytes of the whole GGUF file
    FileBytes,
    /// bits of the codes of the decoder's Linears (EXL3: `Σ numel·K`, GPTQ and
    /// compressed-tensors: `Σ numel·bits`; the head apart)
    DecoderBits,
}

/// What the allocator measured and chose.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationReport {
    pub target_bpw: f64,
    /// bytes the whole file may take
    pub budget_bytes: u64,
    /// bytes the planned file takes (its GGUF layout)
    pub file_bytes: u64,
    pub candidates: Vec<String>,
    pub windows: usize,
    pub tokens: usize,
    pub calibration_source: String,
    /// the written groups
    pub groups: Vec<GroupChoice>,
    /// MoE only: each expert's curve, and its choice where per-expert types can be
    /// stored (not in GGUF)
    pub experts: Vec<GroupChoice>,
    /// the sum of the chosen groups' ΔKL
    pub predicted_delta_kl: f64,
    /// what `budget_bytes`, `file_bytes` and the groups' `bytes` count
    pub unit: SizeUnit,
}

fn align(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Bytes of `rows` rows of a tensor with rows of `cols` at `ty`, padded to `alignment`.
fn tensor_bytes(cols: usize, rows: usize, ty: GgmlType) -> Result<u64> {
    ty.row_bytes(cols)
        .map(|b| (b * rows) as u64)
        .ok_or_else(|| {
            PipelineError::unsupported(
                format!("rows of {cols} values cannot be stored as {}", ty.name()),
                "This tensor cannot take part in --target-bpw",
            )
        })
}

/// Measures, chooses, and returns the allocation for `target_bpw` (jobs carry the
/// base level's types on entry).
#[allow(clippy::too_many_arguments)]
pub fn allocate(
    target_bpw: f64,
    measurements: Option<&Path>,
    model_path: &Path,
    jobs: &[TensorJob],
    plan: &GgufPlan,
    source: &dyn TensorSource,
    calibration: &CalibrationRequest,
    progress: &dyn Progress,
) -> Result<(Allocation, AllocationReport)> {
    let (groups, written) = groups::groups(jobs);
    let params: u64 = jobs.iter().map(|j| j.numel() as u64).sum();
    let budget = (target_bpw * params as f64 / 8.0).floor() as u64;
    let a = plan.alignment as u64;
    // bytes of everything the allocator does not decide
    let layout = plan
        .layout()
        .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?;
    let decided: BTreeSet<usize> = groups
        .iter()
        .flat_map(|g| g.members.iter().map(|m| m.job))
        .collect();
    let mut fixed = layout.total_size();
    for &j in &decided {
        let job = &jobs[j];
        let rows = job.numel() / job.row_len().max(1);
        fixed -= align(tensor_bytes(job.row_len(), rows, job.ty)?, a);
    }
    // the written groups' tensors and sizes at each candidate
    let mut w_jobs: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); written.len()];
    for g in &groups {
        w_jobs[g.written].extend(g.members.iter().map(|m| m.job));
    }
    let cand_bytes = |js: &BTreeSet<usize>| -> Result<Vec<u64>> {
        CANDIDATES
            .iter()
            .map(|&c| {
                js.iter().try_fold(0u64, |s, &j| {
                    let job = &jobs[j];
                    let n = job.row_len();
                    let ty = measure::candidate_for(n, c);
                    Ok(s + align(tensor_bytes(n, job.numel() / n.max(1), ty)?, a))
                })
            })
            .collect()
    };
    let w_bytes: Vec<Vec<u64>> = w_jobs.iter().map(cand_bytes).collect::<Result<_>>()?;
    let min_file = fixed + w_bytes.iter().map(|b| b[0]).sum::<u64>();
    if min_file > budget {
        return Err(PipelineError::invalid(
            format!(
                "--target-bpw {target_bpw} is below the smallest file the candidates give ({:.4} bpw)",
                min_file as f64 * 8.0 / params as f64
            ),
            format!(
                "Give --target-bpw of at least {:.2}",
                (min_file as f64 * 8.0 / params as f64 * 100.0).ceil() / 100.0
            ),
        ));
    }
    let ggml: Vec<rounding::Candidate> = CANDIDATES
        .iter()
        .map(|&c| rounding::Candidate::Ggml(c))
        .collect();
    let candidate_names: Vec<String> = ggml.iter().map(|c| c.name()).collect();
    let m = match measurements {
        Some(p) => {
            progress.message(&format!("Measured ΔKL from {}", p.display()));
            reuse::read(p, &groups, &candidate_names)?
        }
        None => measure::measure(
            model_path,
            jobs,
            &groups,
            &ggml,
            source,
            calibration,
            progress,
        )?,
    };
    let mut w_loss = vec![vec![0.0f64; CANDIDATES.len()]; written.len()];
    for (g, l) in groups.iter().zip(&m.loss) {
        for (c, v) in l.iter().enumerate() {
            w_loss[g.written][c] += v;
        }
    }
    let points = |bytes: &[Vec<u64>], loss: &[Vec<f64>]| -> Vec<Vec<Point>> {
        bytes
            .iter()
            .zip(loss)
            .map(|(b, l)| {
                b.iter()
                    .zip(l)
                    .map(|(&bytes, &loss)| Point { bytes, loss })
                    .collect()
            })
            .collect()
    };
    // the sizes above count every tensor padded to the alignment; the file's real
    // layout is checked, and the budget narrowed by any excess (a last tensor that
    // the layout leaves unpadded) until it fits
    let pts = points(&w_bytes, &w_loss);
    let mut room = budget - fixed;
    let (chosen, alloc, file_bytes) = loop {
        let chosen = chooser::choose(&pts, room).map_err(|e| {
            PipelineError::general(format!("allocation failed: {e:?}"), "Report this as a bug")
        })?;
        let mut alloc = Allocation::from_gguf_jobs(jobs);
        for (w, &c) in chosen.iter().enumerate() {
            for &j in &w_jobs[w] {
                let ty = measure::candidate_for(jobs[j].row_len(), CANDIDATES[c]);
                alloc.set(
                    &jobs[j].name,
                    TensorSpec {
                        method: Method::KQuant,
                        quant: QuantSpec::Ggml(ty),
                    },
                );
            }
        }
        let (mut js, mut p) = (jobs.to_vec(), plan.clone());
        alloc.apply_to_gguf(&mut js, &mut p)?;
        let size = p
            .layout()
            .map_err(|e| PipelineError::general(e.to_string(), "Report this as a bug"))?
            .total_size();
        match size.checked_sub(budget) {
            None | Some(0) => break (chosen, alloc, size),
            Some(over) if over < room => room -= over,
            Some(_) => {
                return Err(PipelineError::general(
                    format!("no allocation fits {budget} bytes"),
                    "Give a higher --target-bpw",
                ))
            }
        }
    };
    let names: Vec<String> = CANDIDATES.iter().map(|c| c.name().to_string()).collect();
    let report_groups = written
        .iter()
        .enumerate()
        .map(|(w, label)| GroupChoice {
            label: label.clone(),
            chosen: names[chosen[w]].clone(),
            bytes: w_bytes[w].clone(),
            delta_kl: w_loss[w].clone(),
        })
        .collect();
    let experts = expert_choices(jobs, &groups, &m.loss, &w_bytes, &chosen, &names, a)?;
    Ok((
        alloc,
        AllocationReport {
            target_bpw,
            budget_bytes: budget,
            file_bytes,
            candidates: names,
            windows: m.windows,
            tokens: m.tokens,
            calibration_source: m.source,
            groups: report_groups,
            experts,
            predicted_delta_kl: chosen.iter().enumerate().map(|(w, &c)| w_loss[w][c]).sum(),
            unit: SizeUnit::FileBytes,
        },
    ))
}

/// The per-expert allocation for the same budget as the written one: measured groups
/// instead of merged ones (experts sized by their rows).
fn expert_choices(
    jobs: &[TensorJob],
    groups: &[groups::Group],
    loss: &[Vec<f64>],
    w_bytes: &[Vec<u64>],
    w_chosen: &[usize],
    names: &[String],
    a: u64,
) -> Result<Vec<GroupChoice>> {
    if !groups.iter().any(|g| g.label.contains(".expert.")) {
        return Ok(Vec::new());
    }
    let mut bytes = Vec::with_capacity(groups.len());
    for g in groups {
        let mut b = Vec::with_capacity(CANDIDATES.len());
        for &c in &CANDIDATES {
            let mut s = 0u64;
            for m in &g.members {
                let job = &jobs[m.job];
                let n = job.row_len();
                let rows = match m.rows {
                    Some((r0, r1)) => r1 - r0,
                    None => job.numel() / n.max(1),
                };
                let t = tensor_bytes(n, rows, measure::candidate_for(n, c))?;
                s += if m.rows.is_some() { t } else { align(t, a) };
            }
            b.push(s);
        }
        bytes.push(b);
    }
    let budget: u64 = w_chosen
        .iter()
        .enumerate()
        .map(|(w, &c)| w_bytes[w][c])
        .sum();
    let pts: Vec<Vec<Point>> = bytes
        .iter()
        .zip(loss)
        .map(|(b, l)| {
            b.iter()
                .zip(l)
                .map(|(&bytes, &loss)| Point { bytes, loss })
                .collect()
        })
        .collect();
    let Ok(pick) = chooser::choose(&pts, budget) else {
        return Ok(Vec::new());
    };
    Ok(groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.label.contains(".expert."))
        .map(|(i, g)| GroupChoice {
            label: g.label.clone(),
            chosen: names[pick[i]].clone(),
            bytes: bytes[i].clone(),
            delta_kl: loss[i].clone(),
        })
        .collect())
}
