//! Trellis coding (QTIP, Tseng et al., arXiv 2406.11235, as exllamav3's EXL3 runs it) of
//! every Linear of one block: each weight with the calibration Hessian of its input
//! (`2/n·XᵀX`, the measure stage GPTQ uses) through `llmq_trellis::quantize::quantize_linear`
//! (random signs and 128-Hadamards on both sides, block LDL, LDLQ over 16-row strips,
//! tail-biting Viterbi), at the K the allocation gives it. The report carries the
//! reconstruction error against the source and the proxy error `tr(EHEᵀ)/tr(WHWᵀ)`.
//!
//! Refused (exit 8): routed experts (EXL3 needs one K per stacked projection and this
//! executor has no per-expert allocation yet) and Linears whose dimensions are not
//! multiples of 128 (EXL3 pads them; the engine's loader does not crop yet).

use super::blocks::rmse;
use super::methods::BlockCx;
use crate::error::{PipelineError, Result};
use crate::report::{CalibrationDetail, TensorReport};
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

/// Trellis coding of every Linear of one block, each at the allocation's K.
pub(super) fn quantize_block_trellis(cx: BlockCx<'_>) -> Result<()> {
    let BlockCx {
        alloc,
        tensors,
        layer,
        col,
        trellis_out,
        ..
    } = cx;
    let mut done: BTreeSet<String> = BTreeSet::new();
    for ((_, expert, _), acc) in &col.sites {
        if let Some(e) = expert {
            return Err(PipelineError::unsupported(
                format!(
                    "layer {layer} expert {e}: exl3 output of mixture-of-experts models is not implemented (EXL3 needs one K per stacked expert projection; no per-expert allocation yet)"
                ),
                "Quantize this model to gguf, gptq or awq",
            ));
        }
        let h = acc.hess.as_ref().map(|h| h.clone().finish());
        for gguf in &acc.weights {
            for hf in tensors.hf_names(layer, gguf, None) {
                if !done.insert(hf.clone()) {
                    continue;
                }
                let shape = tensors.shape(&hf);
                let (o, i) = (shape[0], shape[1]);
                if o % 128 != 0 || i % 128 != 0 {
                    return Err(PipelineError::unsupported(
                        format!(
                            "{hf} is {o}x{i}: exl3 output of Linears whose sizes are not multiples of 128 is not implemented"
                        ),
                        "Quantize this model to gguf, gptq or awq",
                    ));
                }
                let k = alloc.trellis_k(&hf)?;
                let w = tensors.hf_f32(&hf)?;
                let cfg = Exl3Config::new(k, CODEBOOK, seed_of(&hf));
                let q = quantize_linear(&w, o, i, h.as_deref(), &cfg).map_err(|e| {
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
                let report = TensorReport {
                    name: hf.clone(),
                    shape: [o, i],
                    quant: format!("trellis K={k} {}", CODEBOOK.name()),
                    method: if q.proxy_err.is_some() {
                        "trellis".to_string()
                    } else {
                        "trellis:no-hessian".to_string()
                    },
                    rmse: Some(r),
                    rel_rmse: Some(rel),
                    sha256: None,
                    calibration: Some(CalibrationDetail {
                        tokens: acc.rows,
                        proxy_err: q.proxy_err,
                        note: q.proxy_err.is_none().then(|| {
                            "the Hessian carried no signal: tiles coded without LDLQ".to_string()
                        }),
                        ..Default::default()
                    }),
                };
                trellis_out.push((hf, q, report));
            }
        }
    }
    Ok(())
}
