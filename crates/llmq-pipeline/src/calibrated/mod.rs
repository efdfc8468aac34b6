//! `quantize MODEL gptq|awq|compressed-tensors -q LEVEL`: calibrated integer
//! quantization into Hugging Face checkpoints (GPTQModel / AutoAWQ GEMM /
//! compressed-tensors pack-quantized layouts, `llmq_hfquant`).
//!
//! The driver is block-sequential, as GPTQ (arXiv 2210.17323, §4 "Step 3") and AWQ
//! (arXiv 2306.00978) run it: calibration samples are embedded, then for each block
//! i: (1) block i runs on the stored outputs of block i−1 with a
//! [`LinearObserver`] that accumulates what the quantizers need per distinct Linear
//! input (`H = 2/n·XᵀX` for GPTQ — q/k/v share one, gate/up share one —, `mean|x|`
//! and a row sample for AWQ, and the tokens routed to every expert); (2) every Linear
//! of the block is quantized; (3) its dequantized weights (and, for AWQ, the norms
//! the scales were folded into) are put back into the engine and block i runs again,
//! so block i+1 is calibrated on the *quantized* model's activations.
//!
//! Activations are held in bf16, in memory up to half the RAM budget and in a
//! temporary file beyond it. The engine is layer-streamed: it holds the embeddings
//! until the samples are embedded, then only block i, loaded from the source when
//! block i starts and dropped (with its mapped source pages) when it is done;
//! `memory_need` checks the largest block, its Hessians and the activations against
//! the RAM budget before the run starts (exit 5).
//!
//! Checkpoints (unless `--no-checkpoints`; [`crate::checkpoint::blocks`]): after block
//! i is quantized and has run again with its quantized weights, the checkpoint
//! records (a) block i's quantized modules (the integers, scales, zero points and
//! g_idx the writers pack) with their report lines, the norms AWQ folded its scales
//! into and the modules kept in full precision (routers), and (b) the bf16
//! activations that feed block i+1 — only the latest snapshot is kept; round-to-
//! nearest needs none, its activations stay the embeddings. Nothing else carries
//! over between blocks (the engine's weights of block i are read only by block i;
//! observer statistics and expert token counts are per block). Files are written
//! under temporary names, fsynced and renamed, the state file last. `--resume`
//! checks the fingerprint (source files, format and quantizer options, calibration
//! tokens, output folder; a mismatch is a checkpoint error, exit 7), reloads blocks
//! 0..=i and the snapshot, and continues with block i+1. Every step is
//! deterministic (ordered maps, fixed batch order), so the output is byte-identical
//! to an uninterrupted run. The checkpoint is removed once the output is in place.
//!
//! Fallbacks, all reported per tensor:
//! * a routed expert that got fewer than [`MIN_EXPERT_TOKENS`] tokens is GPTQ'd with
//!   the Hessian of *all* tokens at the MoE input (`Σ_e X_eᵀX_e / (top_k·n)`: every
//!   token reaches exactly `top_k` experts), and its down projection, whose input
//!   never existed, falls back to round-to-nearest;
//! * AWQ: an expert with too few tokens gets no scale/clip search (RTN with AWQ's
//!   quantizer); the MoE input is not scaled (the router shares it), only clipped.
//! * a Hessian that is not positive definite gets dampening ×10 per retry up to
//!   `max_damp_percent`, then an error naming the tensor.
//!
//! The modules follow the stages: `calibration` (calibrate), `observe` and
//! `activations` (measure), `blocks` with the registry entries of `methods`
//! (`gptq_block` / `awq_block` / `fp_block` (GPTQ, MR-GPTQ on the floating-point grids) /
//! `trellis_block`: quantize, each tensor on the grid the allocation gives it), `write`
//! with the layout registry `formats` (write; `write_fp` for the floating-point grids,
//! `write_exl3` for EXL3), `validate`, and
//! `driver`, the executor [`crate::driver`] hands block-sequential methods to;
//! `imatrix` reuses the calibrate and measure stages for GGUF importance matrices.

mod activations;
mod awq_block;
mod blocks;
pub(crate) mod calibration;
#[cfg(feature = "cuda")]
mod device_acts;
#[cfg(feature = "cuda")]
mod device_awq;
#[cfg(feature = "cuda")]
mod device_blocks;
#[cfg(feature = "cuda")]
mod device_imatrix;
#[cfg(feature = "cuda")]
mod device_observe;
mod driver;
mod formats;
mod fp_block;
mod gptq_block;
mod imatrix;
mod memory_need;
mod methods;
mod observe;
mod trellis_block;
mod trellis_head;
mod validate;
mod write;
mod write_exl3;
mod write_fp;
mod write_stream;

use blocks::QModule;
pub(crate) use driver::quantize_blocks;
pub use imatrix::collect_imatrix;

use crate::error::{PipelineError, Result};
use llmq_arch::{apply_transform, ExpertView, GgufTensorSpec, Transform, UnfusedExperts};
use llmq_formats::safetensors::SafetensorsModel;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Experts with fewer routed calibration tokens than this use the fallback.
pub const MIN_EXPERT_TOKENS: u64 = 16;
/// Rows kept per Linear input for AWQ's searches (AutoAWQ's clip search uses 512
/// tokens; its scale search uses all, which costs too much on CPUs).
pub const AWQ_SAMPLE_ROWS: usize = 512;

pub(crate) fn engine_err(e: llmq_engine::EngineError) -> PipelineError {
    match e {
        llmq_engine::EngineError::UnsupportedArch(a) => PipelineError::unsupported(
            format!("architecture `{a}` is not supported by the calibration engine"),
            "Use gguf output, or one of the supported architectures",
        ),
        e @ llmq_engine::EngineError::UnsupportedValue { .. } => PipelineError::unsupported(
            e.to_string(),
            "This model uses a setting the calibration engine does not compute yet",
        ),
        e @ llmq_engine::EngineError::UnsupportedType { .. } => PipelineError::unsupported(
            e.to_string(),
            "Calibrate from the original Hugging Face checkpoint instead",
        ),
        e @ (llmq_engine::EngineError::Device(_)
        | llmq_engine::EngineError::UnsupportedOnDevice { .. }) => {
            PipelineError::unsupported(e.to_string(), "Calibrate on the CPU")
        }
        // missing or misshapen tensors, non-finite weights, unusable metadata
        e => PipelineError::validation(
            e.to_string(),
            "The model files are corrupt or inconsistent with config.json; re-download them",
        ),
    }
}

pub(super) fn hf_err(e: llmq_hfquant::Error) -> PipelineError {
    PipelineError::general(e.to_string(), "Report this as a bug")
}

/// HF-side view of the model: the GGUF plan (engine names) and the safetensors.
pub(super) struct Tensors {
    pub(super) st: SafetensorsModel,
    /// GGUF name → spec
    pub(super) specs: HashMap<String, GgufTensorSpec>,
    /// GPT-OSS: per-expert views of the fused expert tensors, the names the output
    /// is written under (`llmq_arch::gpt_oss_unfused`); empty for other families
    pub(super) unfused: UnfusedExperts,
    /// the fused tensors of the block views were last cut from (GGUF name → values):
    /// one decode serves all experts of a tensor, whatever order they are asked in
    pub(super) fused_cache: Mutex<HashMap<String, Arc<Vec<f32>>>>,
}

impl Tensors {
    pub(super) fn new(
        st: SafetensorsModel,
        specs: HashMap<String, GgufTensorSpec>,
        unfused: UnfusedExperts,
    ) -> Tensors {
        Tensors {
            st,
            specs,
            unfused,
            fused_cache: Mutex::new(HashMap::new()),
        }
    }
    pub(super) fn hf_f32(&self, name: &str) -> Result<Vec<f32>> {
        if let Some(view) = self.unfused.views.get(name) {
            return self.view_f32(view);
        }
        self.st.f32(name).map_err(|e| {
            PipelineError::general(format!("tensor {name}: {e}"), "Check the model files")
        })
    }
    /// A per-expert view's values: its slice of the fused tensor, transformed
    /// (de-interleaved, transposed, MXFP4 decoded) as the plan's fused spec says.
    fn view_f32(&self, view: &ExpertView) -> Result<Vec<f32>> {
        let mut cache = self.fused_cache.lock().unwrap_or_else(|p| p.into_inner());
        let spec = &self.unfused.fused[&view.fused];
        if !cache.contains_key(&view.fused) {
            // only one block's fused tensors are kept
            let fused = &self.unfused.fused;
            cache.retain(|n, _| fused.get(n).map(|s| s.layer) == Some(spec.layer));
            let srcs = spec
                .sources
                .iter()
                .map(|n| {
                    let view = self.st.get(n);
                    match view {
                        // MXFP4 `*_blocks` / `*_scales`: bytes, decoded by the transform
                        Ok(v) if spec.transform.reads_bytes() => v.u8_as_f32(),
                        Ok(v) => v.to_f32(),
                        Err(e) => Err(e),
                    }
                    .map_err(|e| {
                        PipelineError::general(format!("tensor {n}: {e}"), "Check the model files")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let vals = apply_transform(spec, &srcs)
                .map_err(|e| PipelineError::validation(e.to_string(), "Check the model files"))?;
            cache.insert(view.fused.clone(), Arc::new(vals));
        }
        let all = cache.get(&view.fused).cloned().unwrap_or_default();
        view.slice(&all).map(<[f32]>::to_vec).ok_or_else(|| {
            PipelineError::general(
                format!(
                    "{}: expert {} is outside {}",
                    view.name, view.expert, view.fused
                ),
                "Report this as a bug",
            )
        })
    }
    /// The dtype a per-expert view is written in: its fused source's when that is a
    /// float, else bf16 (MXFP4 values are exact in bf16).
    pub(super) fn view_dtype(&self, view: &ExpertView) -> llmq_formats::safetensors::StDtype {
        use llmq_formats::safetensors::StDtype;
        let src = self.unfused.fused[&view.fused].sources.first();
        match src.and_then(|n| self.st.info(n)).map(|i| i.dtype) {
            Some(d @ (StDtype::F32 | StDtype::F16 | StDtype::BF16)) => d,
            _ => StDtype::BF16,
        }
    }
    pub(super) fn shape(&self, name: &str) -> Vec<usize> {
        if let Some(view) = self.unfused.views.get(name) {
            return view.shape.clone();
        }
        self.st
            .info(name)
            .map(|i| i.shape.clone())
            .unwrap_or_default()
    }
    /// HF weight names behind an engine site weight (`attn_q.weight`, expert e).
    pub(super) fn hf_names(&self, layer: usize, gguf: &str, expert: Option<usize>) -> Vec<String> {
        let Some(spec) = self.specs.get(&format!("blk.{layer}.{gguf}")) else {
            return Vec::new();
        };
        match (&spec.transform, expert) {
            (Transform::Stack, Some(e)) => spec.sources.get(e).cloned().into_iter().collect(),
            _ => spec.sources.clone(),
        }
    }
    pub(super) fn spec(&self, layer: usize, gguf: &str) -> Option<&GgufTensorSpec> {
        self.specs.get(&format!("blk.{layer}.{gguf}"))
    }
    /// Drop the mapped pages of block `layer`'s source tensors from the resident set
    /// (re-read from the file if touched again, as the writer does).
    pub(super) fn release_block(&self, layer: usize) {
        for spec in self.specs.values().filter(|s| s.layer == Some(layer)) {
            for s in &spec.sources {
                self.st.release(s);
            }
        }
    }
}

pub(super) fn module_of(weight: &str) -> &str {
    weight.strip_suffix(".weight").unwrap_or(weight)
}
