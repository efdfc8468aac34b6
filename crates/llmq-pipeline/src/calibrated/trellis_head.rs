//! The output head of an EXL3 folder, trellis-coded as exllamav3 codes it (its
//! `lm_head` Linear at `head_bits`, default 6; `conversion/allocation.py`): at the K the
//! allocation gives it, with the Hessian of its input — the last block's output on the
//! calibration samples through the final norm. A head tied to the embeddings, or one
//! whose sizes are not multiples of 128, stays as stored (`head_bits: 16`).

use super::activations::ActStore;
use super::trellis_block::code_linear;
use super::Tensors;
use crate::allocate::Allocation;
use crate::error::Result;
use crate::report::TensorReport;
use llmq_arch::TensorRole;
use llmq_calib::HessianAccumulator;
use llmq_engine::Model;
use llmq_trellis::quantize::Exl3Linear;

/// The weight name of the head to code: the source's own head tensor (not the
/// embeddings it may be tied to), 2-D with both sizes multiples of 128.
pub(crate) fn head_weight(tensors: &Tensors) -> Option<String> {
    let embd = tensors
        .specs
        .values()
        .find(|s| s.role == TensorRole::TokenEmbd)
        .and_then(|s| s.sources.first());
    let head = tensors
        .specs
        .values()
        .find(|s| s.role == TensorRole::Output)?;
    let name = head.sources.first()?;
    let shape = tensors.shape(name);
    (head.sources.len() == 1
        && Some(name) != embd
        && shape.len() == 2
        && shape.iter().all(|d| d % 128 == 0))
    .then(|| name.clone())
}

/// Code head `name` at the allocation's K with the Hessian of the final-normed
/// activations in `store` (the last block's output).
pub(super) fn code_head(
    model: &Model,
    store: &mut ActStore,
    alloc: &Allocation,
    tensors: &Tensors,
    name: &str,
) -> Result<(Exl3Linear, TensorReport)> {
    let d = store.d;
    let mut acc = HessianAccumulator::new(d);
    let mut x = Vec::new();
    let mut rows = 0u64;
    for s in 0..store.lens.len() {
        store.read(s, &mut x)?;
        let n = x.len() / d;
        let normed = model.output_normed(std::mem::take(&mut x));
        acc.add(&normed, n);
        rows += n as u64;
    }
    let h = acc.finish();
    code_linear(tensors, name, alloc.trellis_k(name)?, Some(&h), rows, None)
}
