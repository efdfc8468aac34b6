//! GPTQ (Frantar et al., arXiv 2210.17323) or round-to-nearest of every Linear of one
//! block, with the MoE fallbacks: a starved expert is GPTQ'd with the all-token
//! Hessian of the MoE input, and a down projection that saw no tokens is rounded.
//! The tensors of a block are independent once its Hessians are measured: they are
//! solved concurrently (q/k/v on their shared Hessian, gate/up on theirs, every
//! expert apart), and reported in a fixed order, so the output does not depend on
//! the thread count.

use super::blocks::{quantize_one, Calib};
use super::methods::BlockCx;
use super::observe::{Collector, SiteAcc, SiteKey};
use super::MIN_EXPERT_TOKENS;
use crate::error::Result;
use crate::report::TensorReport;
use crate::request::Method;
use llmq_engine::LinearStage;
use llmq_hfquant::IntQuantized;
use rayon::prelude::*;
use std::collections::BTreeSet;

/// The all-token Hessian of the MoE input (`Σ_e rows_e·H_e / n`) and the token
/// count, the fallback for experts with too few tokens.
pub(super) fn all_token_hessian(col: &Collector, top_k: usize) -> Option<(Vec<f64>, u64)> {
    let mut sum: Option<Vec<f64>> = None;
    let mut n = 0u64;
    for ((stage, e, _), acc) in &col.sites {
        if *stage == LinearStage::FfnInput && e.is_some() {
            if let Some(h) = &acc.hess {
                // finished: 2/rows · XᵀX; re-weight by rows
                let hv = finished(h);
                let s = sum.get_or_insert_with(|| vec![0.0; hv.len()]);
                s.iter_mut()
                    .zip(hv.iter())
                    .for_each(|(a, b)| *a += b * acc.rows as f64);
                n += acc.rows;
            }
        }
    }
    let mut s = sum?;
    if n == 0 {
        return None;
    }
    // Σ rows_e·H_e = 2·Σ X_eᵀX_e = 2·top_k·XᵀX over n/top_k tokens → mean over tokens
    s.iter_mut().for_each(|v| *v /= n as f64);
    Some((s, n / top_k as u64))
}

/// With `--calibrate-all-experts`: the expert's statistics cover all tokens; the
/// report keeps the count the router sent it.
fn all_experts_note(col: &Collector, expert: Option<usize>, rows: u64) -> Option<String> {
    let e = expert.filter(|_| col.all_experts)?;
    let routed = col.expert_tokens.get(e).copied().unwrap_or(0);
    Some(format!(
        "calibrated on all {rows} tokens (--calibrate-all-experts); the router sent it {routed}"
    ))
}

/// Experts that never fired (not reported as sites): `(expert, first weight, stage)`.
pub(super) fn missing_experts(col: &Collector) -> Vec<(usize, &'static str, LinearStage)> {
    let mut missing = Vec::new();
    for e in 0..col.expert_tokens.len() {
        for (stage, first) in [
            (LinearStage::FfnInput, "ffn_gate_exps.weight"),
            (LinearStage::FfnDown, "ffn_down_exps.weight"),
        ] {
            if !col.sites.contains_key(&(stage, Some(e), first)) {
                missing.push((e, first, stage));
            }
        }
    }
    missing
}

/// GPTQ (`gptq`) or round-to-nearest of every Linear of one block; each tensor's grid
/// and method come from the allocation.
pub(super) fn quantize_block_gptq(cx: BlockCx<'_>, gptq: bool) -> Result<()> {
    let BlockCx {
        req,
        alloc,
        tensors,
        layer,
        col,
        top_k,
        out,
        ..
    } = cx;
    // all-token Hessian of the MoE input (fallback for starved experts)
    let moe_all = if gptq {
        all_token_hessian(col, top_k)
    } else {
        None
    };
    let mut done: BTreeSet<String> = BTreeSet::new();
    // sites that were seen
    let mut jobs: Vec<(SiteKey, &SiteAcc)> = col.sites.iter().map(|(k, v)| (*k, v)).collect();
    let missing = missing_experts(col);
    jobs.sort_by_key(|(k, _)| *k);
    // 1. every tensor's task, in the order the results are reported (each HF weight
    // once, at the first site that names it)
    let mut groups: Vec<(Option<&SiteAcc>, Vec<Task>)> = Vec::new();
    for (key, acc) in jobs {
        let (stage, expert, _) = key;
        let mut tasks = Vec::new();
        for gguf in &acc.weights {
            for hf in tensors.hf_names(layer, gguf, expert) {
                if !done.insert(hf.clone()) {
                    continue;
                }
                let starved = expert.is_some() && acc.rows < MIN_EXPERT_TOKENS;
                let spec = alloc.spec(&hf)?;
                let has_h = acc.hess.is_some();
                let (calib, label, note) = match spec.method {
                    Method::Rtn => (HSel::None, "rtn".to_string(), None),
                    Method::Gptq if has_h && !starved => (HSel::Site, "gptq".to_string(), None),
                    Method::Gptq => match (&moe_all, stage) {
                        (Some((_, n)), LinearStage::FfnInput) => (
                            HSel::MoeAll,
                            "gptq:all-tokens-hessian".to_string(),
                            Some(format!(
                                "expert got {} calibration tokens (< {MIN_EXPERT_TOKENS}): Hessian of all {n} tokens at the MoE input",
                                acc.rows
                            )),
                        ),
                        _ => (
                            HSel::None,
                            "rtn:few-tokens".to_string(),
                            Some(format!(
                                "expert got {} calibration tokens (< {MIN_EXPERT_TOKENS}): round-to-nearest",
                                acc.rows
                            )),
                        ),
                    },
                    _ => (HSel::None, "rtn".to_string(), None),
                };
                let note = note.or_else(|| all_experts_note(col, expert, acc.rows));
                tasks.push(Task {
                    hf,
                    calib,
                    tokens: acc.rows,
                    label,
                    note,
                });
            }
        }
        groups.push((Some(acc), tasks));
    }
    let mut rest = Vec::new();
    for (e, first, stage) in missing {
        let weights: &[&str] = if stage == LinearStage::FfnInput {
            &["ffn_gate_exps.weight", "ffn_up_exps.weight"]
        } else {
            &[first]
        };
        for gguf in weights {
            for hf in tensors.hf_names(layer, gguf, Some(e)) {
                if !done.insert(hf.clone()) {
                    continue;
                }
                let spec = alloc.spec(&hf)?;
                let (calib, label, note) = match (&moe_all, stage, spec.method) {
                    (Some((_, n)), LinearStage::FfnInput, Method::Gptq) => (
                        HSel::MoeAll,
                        "gptq:all-tokens-hessian".to_string(),
                        Some(format!(
                            "expert {e} got no calibration tokens: Hessian of all {n} tokens at the MoE input"
                        )),
                    ),
                    (_, _, Method::Rtn) => (HSel::None, "rtn".to_string(), None),
                    _ => (
                        HSel::None,
                        "rtn:no-tokens".to_string(),
                        Some(format!(
                            "expert {e} got no calibration tokens: round-to-nearest"
                        )),
                    ),
                };
                rest.push(Task {
                    hf,
                    calib,
                    tokens: 0,
                    label,
                    note,
                });
            }
        }
    }
    groups.push((None, rest));
    // 2. solve: sites concurrently, and the tensors of a site concurrently (each solve
    // is sequential and deterministic, so the results do not depend on the schedule);
    // rayon's pool bounds the concurrency by the thread count
    let moe_h = moe_all.as_ref().map(|(h, _)| h.as_slice());
    let solved: Vec<Vec<Result<(String, IntQuantized, TensorReport)>>> = groups
        .into_par_iter()
        .map(|(acc, tasks)| {
            let h_site = acc.and_then(|a| a.hess.as_ref().map(finished));
            tasks
                .into_par_iter()
                .map(|t| {
                    let shape = tensors.shape(&t.hf);
                    let (o, i) = (shape[0], shape[1]);
                    let w = tensors.hf_f32(&t.hf)?;
                    let calib = match (t.calib, &h_site, moe_h) {
                        (HSel::Site, Some(h), _) => Calib::Hessian(h),
                        (HSel::MoeAll, _, Some(h)) => Calib::Hessian(h),
                        _ => Calib::None,
                    };
                    let grid = alloc.int_grid(&t.hf)?;
                    let (q, st) =
                        quantize_one(req, grid, &t.hf, &w, o, i, calib, t.tokens, t.label, t.note)?;
                    Ok((t.hf, q, st))
                })
                .collect()
        })
        .collect();
    // 3. in task order; the first failure in that order is reported
    for r in solved.into_iter().flatten() {
        out.push(r?);
    }
    Ok(())
}

/// A site's Hessian, finished where it was accumulated
/// ([`Collector::finish_hessians`]; finished here if it was not).
fn finished(h: &llmq_calib::HessianAccumulator) -> std::borrow::Cow<'_, [f64]> {
    match h.finished() {
        Some(v) => std::borrow::Cow::Borrowed(v),
        None => std::borrow::Cow::Owned(h.clone().finish()),
    }
}

/// Which Hessian a tensor's task uses.
#[derive(Clone, Copy)]
enum HSel {
    /// its site's
    Site,
    /// all tokens at the MoE input (a starved expert's gate/up)
    MoeAll,
    /// none: round-to-nearest
    None,
}

/// One tensor to quantize.
struct Task {
    hf: String,
    calib: HSel,
    tokens: u64,
    label: String,
    note: Option<String>,
}
