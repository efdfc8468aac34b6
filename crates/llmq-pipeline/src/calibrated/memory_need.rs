//! The memory a layer-streamed calibrated run needs, from the plan's tensor shapes,
//! before anything is loaded: the largest block (its weights as loaded, their f32
//! working copies while it is quantized and put back, the concurrent solves), its
//! Hessians (GPTQ, trellis) or AWQ row samples, one batch's intermediate
//! activations, the calibration activations held in memory (bf16; spilled to disk
//! beyond half the budget, then not counted), and the quantized modules: one block's
//! where they are packed to disk as the block finishes (the integer layouts,
//! [`super::write_stream`]), every block's where the writer packs them at the end.
//! Hessians are finished where they were accumulated; each solve in flight holds the
//! Cholesky factor and its inverse (two `[in, in]` f64). A run whose need exceeds the RAM budget
//! (`--ram-budget-gb`, or the available memory) is refused with exit 5 and the
//! numbers.

use super::methods::Needs;
use super::Tensors;
use crate::error::{PipelineError, Result};
use llmq_arch::TensorRole;
use llmq_formats::safetensors::StDtype;
use std::collections::{BTreeMap, HashMap};

/// Rows of every Linear input AWQ keeps (see [`super::AWQ_SAMPLE_ROWS`]).
const AWQ_ROWS: u64 = super::AWQ_SAMPLE_ROWS as u64;

/// The need of one block, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct BlockNeed {
    /// weights as loaded, plus f32 working and dequantized copies
    pub(super) weights: u64,
    /// Hessians (accumulators, finished in place, and each solve's Cholesky factor
    /// and inverse)
    pub(super) hessians: u64,
    /// the tensors being solved at once, and one batch's intermediate activations
    pub(super) work: u64,
}

impl BlockNeed {
    fn total(&self) -> u64 {
        self.weights + self.hessians + self.work
    }
}

/// The need of a whole run, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RunNeed {
    /// the largest block and its need
    pub(super) layer: usize,
    pub(super) block: BlockNeed,
    /// calibration activations held in memory (0 when spilled)
    pub(super) activations: u64,
    /// quantized modules held until written: the largest block's when streamed, else
    /// all blocks'
    pub(super) modules: u64,
    /// the token embeddings, held while the samples are embedded (before any block)
    pub(super) embeddings: u64,
}

impl RunNeed {
    /// The peak: the embedding stage or the largest block, whichever is more.
    pub(super) fn total(&self) -> u64 {
        (self.activations + self.modules + self.block.total())
            .max(self.activations + self.embeddings)
    }
}

fn dtype_bytes(d: StDtype) -> u64 {
    match d {
        StDtype::F32 => 4,
        StDtype::F16 | StDtype::BF16 => 2,
        _ => 1,
    }
}

/// The Hessian shared by a weight's input (q/k/v share one, gate/up share one).
fn input_key(role: TensorRole) -> TensorRole {
    match role {
        TensorRole::AttnK | TensorRole::AttnV | TensorRole::AttnQkv => TensorRole::AttnQ,
        TensorRole::FfnUp => TensorRole::FfnGate,
        TensorRole::FfnUpExps => TensorRole::FfnGateExps,
        TensorRole::FfnUpShexp => TensorRole::FfnGateShexp,
        r => r,
    }
}

/// The need of quantizing with `needs`, `threads` solves at once, over samples of
/// `lens` tokens in batches of at most `batch_tokens`, activations `spilled` or not,
/// the quantized modules `streamed` to disk block by block or held to the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_need(
    tensors: &Tensors,
    needs: Needs,
    lens: &[usize],
    batch_tokens: usize,
    d: usize,
    threads: usize,
    spilled: bool,
    streamed: bool,
) -> RunNeed {
    let mut blocks: BTreeMap<usize, Vec<&llmq_arch::GgufTensorSpec>> = BTreeMap::new();
    let mut embeddings = 0u64;
    let bytes_of = |spec: &llmq_arch::GgufTensorSpec| -> u64 {
        let b = spec
            .sources
            .first()
            .and_then(|s| tensors.st.info(s))
            .map_or(2, |i| dtype_bytes(i.dtype));
        spec.n_elements() as u64 * b
    };
    for spec in tensors.specs.values() {
        match spec.layer {
            Some(l) => blocks.entry(l).or_default().push(spec),
            None if spec.role == TensorRole::TokenEmbd => embeddings += bytes_of(spec),
            None => {}
        }
    }
    let tokens: u64 = lens.iter().map(|&l| l as u64).sum();
    let max_len = lens.iter().copied().max().unwrap_or(0) as u64;
    let batch = (batch_tokens as u64).min(tokens).max(max_len);
    let threads = threads.max(1) as u64;
    let mut best = (0usize, BlockNeed::default());
    let mut modules = 0u64;
    let mut block_modules_max = 0u64;
    for (&layer, specs) in &blocks {
        let mut block_modules = 0u64;
        let mut loaded = 0u64;
        let mut params = 0u64;
        let mut largest = 0u64;
        let mut widest = d as u64;
        let mut inputs: HashMap<TensorRole, (u64, u64)> = HashMap::new();
        let mut linears = 0u64;
        // every Linear's input width (one per expert)
        let mut widths: Vec<u64> = Vec::new();
        for spec in specs {
            loaded += bytes_of(spec);
            params += spec.n_elements() as u64;
            if spec.shape_ne.len() < 2 || spec.role == TensorRole::FfnGateInp {
                continue;
            }
            let cols = spec.shape_ne[0] as u64;
            let rows = spec.shape_ne[1] as u64;
            let experts = spec.shape_ne.get(2).copied().unwrap_or(1) as u64;
            block_modules += cols * rows * experts * 9 / 8;
            linears += experts;
            widths.extend(std::iter::repeat_n(cols, experts as usize));
            largest = largest.max(cols * rows);
            widest = widest.max(rows).max(cols);
            let e = inputs
                .entry(input_key(spec.role))
                .or_insert((cols, experts));
            e.0 = e.0.max(cols);
        }
        // loaded copy, then per weight: f32 read, dequantized f32, the engine's f32
        let weights = loaded + params * 12;
        let per_input: Vec<u64> = inputs
            .values()
            .map(|&(cols, experts)| {
                let one = if needs.hessian {
                    cols * cols * 8
                } else if needs.awq_stats {
                    AWQ_ROWS * cols * 4 + cols * 8
                } else {
                    0
                };
                one * experts
            })
            .collect();
        // no more solves in flight than the block has Linears: the widest ones
        let threads = threads.min(linears.max(1));
        widths.sort_unstable_by(|a, b| b.cmp(a));
        let solving: u64 = widths.iter().take(threads as usize).map(|w| w * w).sum();
        modules += block_modules;
        block_modules_max = block_modules_max.max(block_modules);
        let hessians = per_input.iter().sum::<u64>() + if needs.hessian { solving * 16 } else { 0 };
        // the solves in flight (f32 weight, solver copy, dequantized copy, codes) and
        // one batch through the block (hidden state, norms, widest intermediate ×3)
        let work = threads * largest * 13 + batch * (4 * d as u64 + 3 * widest) * 4;
        let need = BlockNeed {
            weights,
            hessians,
            work,
        };
        if need.total() > best.1.total() {
            best = (layer, need);
        }
    }
    RunNeed {
        layer: best.0,
        block: best.1,
        activations: if spilled { 0 } else { tokens * d as u64 * 2 },
        modules: if streamed { block_modules_max } else { modules },
        embeddings,
    }
}

/// Exit 5 unless `need` fits `budget` bytes.
pub(super) fn check_fits(need: &RunNeed, budget: u64, explicit: bool) -> Result<()> {
    if need.total() <= budget {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    Err(PipelineError::oom(
        format!(
            "calibrated quantization needs about {:.2} GB but the RAM budget ({}) is {:.2} GB: \
             block {} needs {:.2} GB (weights and their working copies {:.2} GB, Hessians or \
             activation samples {:.2} GB, solves in flight and one batch {:.2} GB), the \
             calibration activations held in memory {:.2} GB, the quantized modules held \
             until written {:.2} GB",
            gb(need.total()),
            if explicit {
                "--ram-budget-gb"
            } else {
                "available memory"
            },
            gb(budget),
            need.layer,
            gb(need.block.total()),
            gb(need.block.weights),
            gb(need.block.hessians),
            gb(need.block.work),
            gb(need.activations),
            gb(need.modules),
        ),
        "Raise --ram-budget-gb or free memory; fewer or shorter calibration samples \
         (--calibration-samples, --calibration-seq-len) lower the activations and batch \
         memory, fewer threads (RAYON_NUM_THREADS) the solves in flight",
    ))
}
