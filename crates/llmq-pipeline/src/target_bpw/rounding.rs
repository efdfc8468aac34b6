//! The candidates the measured allocator rounds a group to, and the rounding of one
//! tensor to a candidate other than a GGML type: a trellis code at K bits (QTIP,
//! Tseng et al., arXiv 2406.11235, through `llmq_trellis::quantize::quantize_linear`
//! with exllamav3's settings), decoded back to f32, or an integer grid (GPTQ /
//! compressed-tensors output: round-to-nearest on the min-max group grid,
//! `llmq_hfquant::rtn`, without the Hessian the written GPTQ uses, as the trellis
//! measure leaves out LDLQ), dequantized.
//!
//! The measurement codes a tensor **without a Hessian** (`H = I`: random signs and
//! 128-Hadamards on both sides and the tail-biting Viterbi, but no LDLQ), so it
//! scores plain trellis rounding at each K; the written output adds LDLQ on top,
//! which lowers every group's error. A stacked expert tensor (`[E, rows, cols]`) is
//! coded expert by expert, as EXL3 stores it. Tensors come in the GGUF plan's layout
//! (llama's q/k rows permuted for RoPE); a permutation of the rows codes a matrix of
//! the same statistics.

use crate::error::{PipelineError, Result};
use crate::request::IntGrid;
use crate::run::TensorJob;
use llmq_formats::GgmlType;
use llmq_trellis::decode::reconstruct;
use llmq_trellis::quantize::{quantize_linear, Exl3Config};
use llmq_trellis::Codebook;
use rayon::prelude::*;

/// One candidate quantization of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Candidate {
    /// a GGML type (GGUF output)
    Ggml(GgmlType),
    /// a trellis code of K bits per weight (EXL3 output)
    Trellis(u32),
    /// an integer grid (GPTQ, compressed-tensors output)
    Int(IntGrid),
}

impl Candidate {
    /// Its name in reports and `--measurements` files (`Q4_K`, `K4`).
    pub fn name(self) -> String {
        match self {
            Candidate::Ggml(t) => t.name().to_string(),
            Candidate::Trellis(k) => format!("K{k}"),
            Candidate::Int(g) => format!("{}bit", g.bits),
        }
    }

    /// The bits per weight of its codes (`None`: a GGML type, sized by its blocks).
    pub fn code_bits(self) -> Option<u32> {
        match self {
            Candidate::Ggml(_) => None,
            Candidate::Trellis(k) => Some(k),
            Candidate::Int(g) => Some(g.bits as u32),
        }
    }
}

/// FNV-1a of a name and an index: the sign vectors' seed, fixed per tensor and expert.
fn seed_of(name: &str, expert: usize) -> u64 {
    name.bytes()
        .chain(expert.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}

/// `orig` (the job's values, rows of `shape_ne[0]`) rounded to `cand` and decoded.
pub fn round(job: &TensorJob, cand: Candidate, orig: &[f32]) -> Result<Vec<f32>> {
    match cand {
        Candidate::Trellis(k) => trellis_round(job, k, orig),
        Candidate::Int(g) => int_round(job, g, orig),
        Candidate::Ggml(_) => Err(PipelineError::general(
            "GGML candidates are rounded by the measure stage",
            "Report this as a bug",
        )),
    }
}

/// Round-to-nearest on `grid` of every row of the job (an expert's rows are rows like
/// any other: groups run along a row), dequantized.
fn int_round(job: &TensorJob, grid: IntGrid, orig: &[f32]) -> Result<Vec<f32>> {
    let cols = job.row_len();
    let rows = orig.len() / cols.max(1);
    let cfg = llmq_hfquant::rtn::RtnConfig {
        bits: grid.bits,
        group_size: grid.group_size,
        symmetric: grid.symmetric,
    };
    let q = llmq_hfquant::rtn::quantize_rtn(orig, rows, cols, &cfg).map_err(|e| {
        PipelineError::general(format!("tensor {}: {e}", job.name), "Report this as a bug")
    })?;
    Ok(q.dequantize())
}

/// Trellis code at K of every `rows × cols` matrix of the job (one per expert).
fn trellis_round(job: &TensorJob, k: u32, orig: &[f32]) -> Result<Vec<f32>> {
    let cols = job.row_len();
    let rows = job.shape_ne.get(1).copied().unwrap_or(1) as usize;
    if !cols.is_multiple_of(128) || !rows.is_multiple_of(128) {
        return Err(PipelineError::unsupported(
            format!(
                "{} is {rows}x{cols}: exl3 output of Linears whose sizes are not multiples of 128 is not implemented",
                job.name
            ),
            "Quantize this model to gguf, gptq or awq",
        ));
    }
    let per = rows * cols;
    let mats: Vec<Result<Vec<f32>>> = orig
        .par_chunks(per)
        .enumerate()
        .map(|(e, w)| {
            let cfg = Exl3Config::new(k, Codebook::Mul1, seed_of(&job.name, e));
            let q = quantize_linear(w, rows, cols, None, &cfg).map_err(|err| {
                PipelineError::general(
                    format!("tensor {}: {err}", job.name),
                    "Report this as a bug",
                )
            })?;
            // `reconstruct` gives the weight transposed (`in × out`)
            let r = reconstruct(&q.trellis, &q.suh, &q.svh, q.k, q.codebook);
            let mut out = vec![0f32; per];
            for i in 0..cols {
                for o in 0..rows {
                    out[o * cols + i] = r[i * rows + o];
                }
            }
            Ok(out)
        })
        .collect();
    let mut out = Vec::with_capacity(orig.len());
    for m in mats {
        out.extend(m?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trellis_rounding_error_falls_with_k() {
        let job = TensorJob {
            name: "blk.0.attn_q.weight".into(),
            shape_ne: vec![128, 128],
            ty: GgmlType::F32,
            unit: 0,
        };
        let w: Vec<f32> = (0..128 * 128)
            .map(|i| ((i as f32 * 0.618).fract() - 0.5) * (1.0 + (i % 7) as f32))
            .collect();
        let err = |k| {
            let r = round(&job, Candidate::Trellis(k), &w).unwrap();
            assert_eq!(r.len(), w.len());
            w.iter().zip(&r).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
        };
        let (e2, e3, e4) = (err(2), err(3), err(4));
        assert!(e3 < e2 * 0.5 && e4 < e3 * 0.5, "{e2} {e3} {e4}");
        assert_eq!(Candidate::Trellis(3).name(), "K3");
        assert_eq!(Candidate::Ggml(GgmlType::Q4K).name(), "Q4_K");
    }

    /// The integer candidate is the RTN grid's own dequantization, and its error falls
    /// with the bits.
    #[test]
    fn int_rounding_is_the_rtn_grid() {
        let job = TensorJob {
            name: "blk.0.ffn_up_exps.weight".into(),
            shape_ne: vec![256, 8, 2],
            ty: GgmlType::F32,
            unit: 0,
        };
        let w: Vec<f32> = (0..256 * 16)
            .map(|i| ((i as f32 * 0.618).fract() - 0.5) * (1.0 + (i % 5) as f32))
            .collect();
        let grid = |bits| IntGrid {
            bits,
            group_size: Some(128),
            symmetric: true,
            act_order: false,
        };
        let cfg = llmq_hfquant::rtn::RtnConfig {
            bits: 4,
            group_size: Some(128),
            symmetric: true,
        };
        let want = llmq_hfquant::rtn::quantize_rtn(&w, 16, 256, &cfg)
            .unwrap()
            .dequantize();
        assert_eq!(round(&job, Candidate::Int(grid(4)), &w).unwrap(), want);
        let err = |b| {
            let r = round(&job, Candidate::Int(grid(b)), &w).unwrap();
            w.iter().zip(&r).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
        };
        assert!(err(2) > err(3) && err(3) > err(4) && err(4) > err(8));
        assert_eq!(Candidate::Int(grid(3)).name(), "3bit");
        assert_eq!(Candidate::Int(grid(3)).code_bits(), Some(3));
    }
}
