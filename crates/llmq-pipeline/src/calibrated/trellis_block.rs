//! Trellis coding (QTIP, Tseng et al., arXiv 2406.11235, as exllamav3's EXL3 runs it) of
//! every Linear of one block: each weight with the calibration Hessian of its input
//! (`2/n·XᵀX`, the measure stage GPTQ uses) through `llmq_trellis::quantize::quantize_linear`
//! (random signs and 128-Hadamards on both sides, block LDL, LDLQ over 16-row strips,
//! tail-biting Viterbi), at the K the allocation gives it. The report carries the
//! reconstruction error against the source and the proxy error `tr(EHEᵀ)/tr(WHWᵀ)`.
//!
//! Routed experts are coded one by one (exllamav3 stores them per expert, at one K per
//! projection: the allocation's business); starved experts fall back as GPTQ's do.
//! Refused (exit 8): Linears whose dimensions are not multiples of 128 (EXL3 pads them;
//! the engine's loader does not crop yet).

use super::blocks::rmse;
use super::gptq_block::{all_token_hessian, missing_experts};
use super::methods::BlockCx;
use super::{Tensors, MIN_EXPERT_TOKENS};
use crate::error::{PipelineError, Result};
use crate::report::{CalibrationDetail, TensorReport};
use llmq_engine::LinearStage;
use llmq_trellis::decode::reconstruct;
use llmq_trellis::quantize::{quantize_linear, Exl3Config, Exl3Linear};
use llmq_trellis::Codebook;
use std::collections::BTreeSet;

/// The codebook every tensor is coded with (exllamav3's default).
pub(crate) const CODEBOOK: Codebook = Codebook::Mul1;

/// Per-tensor seed of the sign vectors: FNV-1a of the module name, so a tensor's
/// coding does not depend on which other tensors are quantized.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The Hugging Face weight (`out × in`, row-major) an EXL3 linear decodes to.
pub(crate) fn dequantize(q: &Exl3Linear) -> Vec<f32> {
    let r = reconstruct(&q.trellis, &q.suh, &q.svh, q.k, q.codebook);
    let (o, i) = (q.out_features, q.in_features);
    let mut w = vec![0f32; o * i];
    for ii in 0..i {
        for oo in 0..o {
            w[oo * i + ii] = r[ii * o + oo];
        }
    }
    w
}

/// Trellis coding of one Linear `hf` (`o × i`) at K=`k` with Hessian `h` (none: the
/// tiles are coded without LDLQ), with its report (`tokens` behind the Hessian, a note).
pub(super) fn code_linear(
    tensors: &Tensors,
    hf: &str,
    k: u32,
    h: Option<&[f64]>,
    tokens: u64,
    note: Option<String>,
) -> Result<(Exl3Linear, TensorReport)> {
    let shape = tensors.shape(hf);
    let (o, i) = (shape[0], shape[1]);
    if o % 128 != 0 || i % 128 != 0 {
        return Err(PipelineError::unsupported(
            format!(
                "{hf} is {o}x{i}: exl3 output of Linears whose sizes are not multiples of 128 is not implemented"
            ),
            "Quantize this model to gguf, gptq or awq",
        ));
    }
    let w = tensors.hf_f32(hf)?;
    let cfg = Exl3Config::new(k, CODEBOOK, seed_of(hf));
    let q = quantize_linear(&w, o, i, h, &cfg).map_err(|e| {
        PipelineError::general(
            format!("tensor {hf}: {e}"),
            "Give more (or more varied) --calibration-data",
        )
    })?;
    let (r, rel) = rmse(&w, &dequantize(&q));
    if !r.is_finite() {
        return Err(PipelineError::validation(
            format!("tensor {hf}: trellis coding produced non-finite values"),
            "Report this as a bug",
        ));
    }
    let calibrated = q.proxy_err.is_some();
    let report = TensorReport {
        name: hf.to_string(),
        shape: [o, i],
        quant: format!("trellis K={k} {}", CODEBOOK.name()),
        method: if calibrated {
            "trellis".to_string()
        } else {
            "trellis:no-hessian".to_string()
        },
        rmse: Some(r),
        rel_rmse: Some(rel),
        sha256: None,
        calibration: Some(CalibrationDetail {
            tokens,
            proxy_err: q.proxy_err,
            note: note.or_else(|| {
                (!calibrated)
                    .then(|| "the Hessian carried no signal: tiles coded without LDLQ".to_string())
            }),
            ..Default::default()
        }),
    };
    Ok((q, report))
}

/// Trellis coding of every Linear of one block, each at the allocation's K. A routed
/// expert's gate/up with fewer than [`MIN_EXPERT_TOKENS`] tokens (or none) uses the
/// all-token Hessian of the MoE input; its down projection, without tokens of its
/// own, is coded without a Hessian (exllamav3's uncalibrated fallback).
pub(super) fn quantize_block_trellis(cx: BlockCx<'_>) -> Result<()> {
    let BlockCx {
        alloc,
        tensors,
        layer,
        col,
        top_k,
        trellis_out,
        ..
    } = cx;
    let moe_all = all_token_hessian(col, top_k);
    let mut done: BTreeSet<String> = BTreeSet::new();
    for ((stage, expert, _), acc) in &col.sites {
        let starved = expert.is_some() && acc.rows < MIN_EXPERT_TOKENS;
        let h = acc.hess.as_ref().map(|h| h.clone().finish());
        for gguf in &acc.weights {
            for hf in tensors.hf_names(layer, gguf, *expert) {
                if !done.insert(hf.clone()) {
                    continue;
                }
                let k = alloc.trellis_k(&hf)?;
                let (h, tokens, note) = if !starved {
                    (h.as_deref(), acc.rows, None)
                } else {
                    fallback(
                        &moe_all,
                        *stage,
                        &format!("expert got {} calibration tokens", acc.rows),
                    )
                };
                trellis_out.push(with_name(
                    hf.clone(),
                    code_linear(tensors, &hf, k, h, tokens, note)?,
                ));
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
                if !done.insert(hf.clone()) {
                    continue;
                }
                let k = alloc.trellis_k(&hf)?;
                let (h, tokens, note) = fallback(
                    &moe_all,
                    stage,
                    &format!("expert {e} got no calibration tokens"),
                );
                trellis_out.push(with_name(
                    hf.clone(),
                    code_linear(tensors, &hf, k, h, tokens, note)?,
                ));
            }
        }
    }
    Ok(())
}

fn with_name(hf: String, (q, r): (Exl3Linear, TensorReport)) -> (String, Exl3Linear, TensorReport) {
    (hf, q, r)
}

/// The Hessian, token count and note of a starved expert's Linear: the all-token
/// Hessian of the MoE input for gate/up, none for down.
fn fallback<'a>(
    moe_all: &'a Option<(Vec<f64>, u64)>,
    stage: LinearStage,
    why: &str,
) -> (Option<&'a [f64]>, u64, Option<String>) {
    match (moe_all, stage) {
        (Some((h, n)), LinearStage::FfnInput) => (
            Some(h.as_slice()),
            *n,
            Some(format!(
                "{why} (< {MIN_EXPERT_TOKENS}): Hessian of all {n} tokens at the MoE input"
            )),
        ),
        _ => (
            None,
            0,
            Some(format!(
                "{why} (< {MIN_EXPERT_TOKENS}): coded without a Hessian"
            )),
        ),
    }
}
