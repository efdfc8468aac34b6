//! GPTQ on the floating-point grids (NVFP4, MXFP4, FP8; FP-Quant's scale search per
//! group) and MR-GPTQ (Egiazarian, Castro et al., arXiv 2509.23202: a block-Hadamard
//! rotation of the input dimension, then GPTQ in the rotated space) of every Linear
//! of one block, through `llmq_calib::fp_gptq`, on the Hessians the measure stage
//! collected from the partly quantized model. The codes of MR-GPTQ stay in the
//! rotated space (compressed-tensors stores the rotation as its `transform_config`);
//! the engine gets the dense `W'·R` back.
//!
//! Fallbacks, as the integer GPTQ's ([`super::gptq_block`]): a starved expert's gate
//! and up projections use the all-token Hessian of the MoE input; a projection with
//! no usable Hessian is rounded to nearest (MSE scale search) in the same space.

use super::blocks::rmse;
use super::gptq_block::{all_token_hessian, missing_experts};
use super::methods::BlockCx;
use super::MIN_EXPERT_TOKENS;
use crate::checkpoint::block_codec::FpModule;
use crate::error::{PipelineError, Result};
use crate::report::{CalibrationDetail, TensorReport};
use crate::request::{Method, QuantizeRequest};
use llmq_calib::fp_gptq::{mr_gptq_quantize, FpGptqConfig};
use llmq_calib::GptqError;
use llmq_engine::LinearStage;
use llmq_hfquant::fp_quantized::rtn_fp;
use llmq_hfquant::hadamard::hadamard_blocks;
use llmq_hfquant::FpScheme;
use std::collections::BTreeSet;

/// One Linear to quantize: its Hessian (none: round-to-nearest), the tokens behind
/// it, the method label and a note for the report.
struct Job<'h> {
    hess: Option<&'h [f64]>,
    tokens: u64,
    fallback: Option<(&'static str, String)>,
}

/// GPTQ or MR-GPTQ of every Linear of one block, each on the allocation's grid.
pub(super) fn quantize_block_fp(cx: BlockCx<'_>) -> Result<()> {
    let BlockCx {
        req,
        alloc,
        tensors,
        layer,
        col,
        top_k,
        fp_out,
        ..
    } = cx;
    let moe_all = all_token_hessian(col, top_k);
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut quantize = |hf: String, job: Job<'_>| -> Result<()> {
        if !done.insert(hf.clone()) {
            return Ok(());
        }
        let shape = tensors.shape(&hf);
        let (o, i) = (shape[0], shape[1]);
        let w = tensors.hf_f32(&hf)?;
        let (scheme, hadamard) = alloc.fp_grid(&hf)?;
        let spec = alloc.spec(&hf)?;
        let (m, st) = quantize_fp_one(req, &hf, &w, [o, i], (scheme, hadamard), spec.method, job)?;
        fp_out.push((hf, m, st));
        Ok(())
    };
    for (&(stage, expert, _), acc) in &col.sites {
        let h = acc.hess.as_ref().map(|h| h.clone().finish());
        let starved = expert.is_some() && acc.rows < MIN_EXPERT_TOKENS;
        for gguf in &acc.weights {
            for hf in tensors.hf_names(layer, gguf, expert) {
                let job = match (&h, &moe_all, stage) {
                    (Some(h), _, _) if !starved => Job {
                        hess: Some(h),
                        tokens: acc.rows,
                        fallback: None,
                    },
                    (_, Some((h, n)), LinearStage::FfnInput) => Job {
                        hess: Some(h),
                        tokens: acc.rows,
                        fallback: Some(("all-tokens-hessian", format!(
                            "expert got {} calibration tokens (< {MIN_EXPERT_TOKENS}): Hessian of all {n} tokens at the MoE input",
                            acc.rows
                        ))),
                    },
                    _ => Job {
                        hess: None,
                        tokens: acc.rows,
                        fallback: Some(("rtn:few-tokens", format!(
                            "{} calibration tokens (< {MIN_EXPERT_TOKENS} or no Hessian): round-to-nearest",
                            acc.rows
                        ))),
                    },
                };
                quantize(hf, job)?;
            }
        }
    }
    for (e, first, stage) in missing_experts(col) {
        let weights: &[&str] = if stage == LinearStage::FfnInput {
            &["ffn_gate_exps.weight", "ffn_up_exps.weight"]
        } else {
            &[first]
        };
        for gguf in weights {
            for hf in tensors.hf_names(layer, gguf, Some(e)) {
                let job = match (&moe_all, stage) {
                    (Some((h, n)), LinearStage::FfnInput) => Job {
                        hess: Some(h),
                        tokens: 0,
                        fallback: Some(("all-tokens-hessian", format!(
                            "expert {e} got no calibration tokens: Hessian of all {n} tokens at the MoE input"
                        ))),
                    },
                    _ => Job {
                        hess: None,
                        tokens: 0,
                        fallback: Some((
                            "rtn:no-tokens",
                            format!("expert {e} got no calibration tokens: round-to-nearest"),
                        )),
                    },
                };
                quantize(hf, job)?;
            }
        }
    }
    Ok(())
}

/// One Linear on `scheme` (rotated by `hadamard` when set): GPTQ against the job's
/// Hessian, or round-to-nearest with the MSE scale search without one.
fn quantize_fp_one(
    req: &QuantizeRequest,
    name: &str,
    w: &[f32],
    [o, i]: [usize; 2],
    (scheme, hadamard): (FpScheme, Option<usize>),
    method: Method,
    job: Job<'_>,
) -> Result<(FpModule, TensorReport)> {
    if let Some(g) = scheme.group_size().filter(|_| scheme != FpScheme::Fp8Block) {
        if !i.is_multiple_of(g) {
            return Err(PipelineError::unsupported(
                format!(
                    "{name} has {i} inputs, not whole groups of {g} ({})",
                    req.level
                ),
                "Use --method rtn, which keeps such Linears in full precision",
            ));
        }
    }
    if let Some(b) = hadamard.filter(|b| !i.is_multiple_of(*b)) {
        return Err(PipelineError::unsupported(
            format!("{name} has {i} inputs, not whole Hadamard blocks of {b}"),
            "Give a --hadamard-size that divides every Linear's input size (e.g. 64 or 32)",
        ));
    }
    let mut cfg = FpGptqConfig::new(scheme);
    cfg.damp_percent = req.damp_percent;
    let (q, damp, loss) = match job.hess {
        Some(h) => {
            let r = mr_gptq_quantize(name, w, o, i, h, &cfg, hadamard).map_err(|e| match e {
                GptqError::NotPositiveDefinite { .. } => PipelineError::general(
                    e.to_string(),
                    "Give more (or more varied) --calibration-data, raise --damp-percent, or use --method rtn",
                ),
                GptqError::NonFinite { .. } => PipelineError::general(
                    e.to_string(),
                    "The model's activations on the calibration data are not finite: check the model weights",
                ),
                e => PipelineError::general(e.to_string(), "Report this as a bug"),
            })?;
            (r.quantized, Some(r.damp_percent), Some(r.loss))
        }
        None => {
            let mut wr = w.to_vec();
            if let Some(b) = hadamard {
                wr.chunks_exact_mut(i)
                    .for_each(|row| hadamard_blocks(row, b));
            }
            (rtn_fp(&wr, o, i, scheme, true), None, None)
        }
    };
    let m = FpModule { q, hadamard };
    let (r, rel) = rmse(w, &m.dense());
    if !r.is_finite() {
        return Err(PipelineError::validation(
            format!("tensor {name}: quantization produced non-finite values"),
            "Report this as a bug",
        ));
    }
    let (label, note) = match job.fallback {
        Some((l, n)) if l.starts_with("rtn") => (l.to_string(), Some(n)),
        Some((l, n)) => (format!("{}:{l}", method.name()), Some(n)),
        None => (method.name().to_string(), None),
    };
    let report = TensorReport {
        name: name.to_string(),
        shape: [o, i],
        quant: match hadamard {
            Some(b) => format!("{} hadamard{b}", req.level),
            None => req.level.clone(),
        },
        method: label,
        rmse: Some(r),
        rel_rmse: Some(rel),
        sha256: None,
        calibration: Some(CalibrationDetail {
            tokens: job.tokens,
            damp_percent: damp,
            loss,
            note,
            ..Default::default()
        }),
    };
    Ok((m, report))
}
