//! The calibration hooks (GPTQ, AWQ, imatrix in `llmq-pipeline`): run one block alone
//! over given hidden states with an observer of every Linear input
//! ([`Model::forward_block`]), and put quantized weights or rescaled norms back into
//! a block ([`Model::replace_weight`], [`Model::replace_vector`]) before the next block
//! is calibrated.

use super::attention::{Attention, Qkv};
use super::load::check_dims;
use super::mla::{split_kv_b, MlaQuery};
use super::mlp::{FeedForward, GateUp, Mlp, Moe};
use super::{KvCache, Logits, Model, SeqStep};
use crate::backend::{Backend, Linear, TokenMap};
use crate::calib::{LinearObserver, Tap};
use crate::error::{EngineError, Result};
use llmq_kernels::WeightMatrix;

/// `blk.N.rest` → (N, rest).
fn split_block_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, tail) = rest.split_once('.')?;
    Some((n.parse().ok()?, tail))
}

/// The error for a block of a layer-streamed model that is not loaded now.
fn not_loaded(li: usize) -> EngineError {
    EngineError::Source(format!(
        "block {li} of this layer-streamed model is not loaded"
    ))
}

/// Put `w` in `slot`, if it has the slot's shape.
fn swap<B: Backend>(be: &B, name: &str, slot: &mut Linear<B>, w: WeightMatrix) -> Result<()> {
    check_dims(name, &w, slot.out_features(), slot.in_features())?;
    *slot = Linear::new(be, w);
    Ok(())
}

/// Put the rows of `w` (all heads stacked) into the per-head `slots`.
fn swap_heads<B: Backend>(
    be: &B,
    name: &str,
    slots: &mut [Linear<B>],
    w: WeightMatrix,
) -> Result<()> {
    let per = slots.first().map(|s| s.out_features()).unwrap_or(0);
    let cols = slots.first().map(|s| s.in_features()).unwrap_or(0);
    check_dims(name, &w, per * slots.len(), cols)?;
    for (h, s) in slots.iter_mut().enumerate() {
        *s = Linear::new(be, w.row_range(h * per, per));
    }
    Ok(())
}

impl<B: Backend> Model<B> {
    /// Run block `layer` alone over `hidden` (`[Σ seq_lens, n_embd]`, the sequences one
    /// after another), in place: every sequence is independent, with positions from 0
    /// and no cache kept. `observer` sees the input rows of every Linear product.
    pub fn forward_block(
        &self,
        layer: usize,
        hidden: &mut [f32],
        seq_lens: &[usize],
        observer: Option<&mut dyn LinearObserver>,
    ) -> Result<()> {
        let mut x = self.be.upload(hidden.to_vec());
        self.forward_block_buf(layer, &mut x, seq_lens, observer)?;
        hidden.copy_from_slice(&self.be.to_host(&x));
        Ok(())
    }

    /// [`Model::forward_block`] on hidden states already on the backend (a GPU's
    /// calibration keeps them there between blocks): `hidden` is replaced by the
    /// block's output.
    pub fn forward_block_buf(
        &self,
        layer: usize,
        hidden: &mut B::Buf,
        seq_lens: &[usize],
        observer: Option<&mut dyn LinearObserver>,
    ) -> Result<()> {
        let d = self.hp.n_embd;
        let total: usize = seq_lens.iter().sum();
        if layer >= self.layers.len() {
            return Err(EngineError::Source(format!(
                "block {layer} does not exist (the model has {})",
                self.layers.len()
            )));
        }
        let held = self.be.len(hidden);
        if held != total * d {
            return Err(EngineError::Source(format!(
                "hidden holds {held} values, {total} tokens x {d} need {}",
                total * d
            )));
        }
        let mut tok_seq = Vec::with_capacity(total);
        let mut tok_pos = Vec::with_capacity(total);
        for (s, &n) in seq_lens.iter().enumerate() {
            tok_seq.extend(std::iter::repeat_n(s, n));
            tok_pos.extend(0..n);
        }
        let mut caches: Vec<KvCache<B>> = seq_lens
            .iter()
            .map(|&n| KvCache::new(self, n.max(1)))
            .collect();
        let mut seqs: Vec<SeqStep<'_, B>> = caches
            .iter_mut()
            .map(|c| SeqStep {
                tokens: &[],
                cache: c,
                logits: Logits::None,
            })
            .collect();
        let mut tap = Tap {
            obs: observer,
            layer,
        };
        let tokens = TokenMap {
            seq: &tok_seq,
            pos: &tok_pos,
        };
        self.layer_forward(layer, hidden, &mut seqs, tokens, &mut tap)
    }

    /// Replace a weight matrix (GGUF name and shape, e.g. `blk.3.attn_q.weight`
    /// `[out, in]`, a whole stacked `ffn_*_exps` tensor or MLA's `attn_k_b` /
    /// `attn_v_b` over all heads): calibration puts block i's quantized weights in
    /// before block i+1 is calibrated.
    pub fn replace_weight(&mut self, name: &str, w: WeightMatrix) -> Result<()> {
        let (li, suffix) = split_block_name(name)
            .filter(|(li, _)| *li < self.layers.len())
            .ok_or_else(|| EngineError::MissingTensor(name.into()))?;
        let d = self.hp.n_embd;
        let n_head = self.hp.n_head;
        let be = &self.be;
        let layer = self.layers[li].as_mut().ok_or_else(|| not_loaded(li))?;
        let missing = || EngineError::MissingTensor(name.to_string());
        match (&mut layer.attn, suffix) {
            (Attention::Standard(a), "attn_q.weight") => {
                return match &mut a.qkv {
                    Qkv::Separate { q, .. } => swap(be, name, q, w),
                    Qkv::Fused(_) => Err(missing()),
                }
            }
            (Attention::Standard(a), "attn_k.weight") => {
                return match &mut a.qkv {
                    Qkv::Separate { k, .. } => swap(be, name, k, w),
                    Qkv::Fused(_) => Err(missing()),
                }
            }
            (Attention::Standard(a), "attn_v.weight") => {
                return match &mut a.qkv {
                    Qkv::Separate { v, .. } => swap(be, name, v, w),
                    Qkv::Fused(_) => Err(missing()),
                }
            }
            (Attention::Standard(a), "attn_qkv.weight") => {
                return match &mut a.qkv {
                    Qkv::Fused(qkv) => swap(be, name, qkv, w),
                    Qkv::Separate { .. } => Err(missing()),
                }
            }
            (Attention::Standard(a), "attn_output.weight") => return swap(be, name, &mut a.wo, w),
            (Attention::Mla(m), "attn_q.weight") => {
                return match &mut m.query {
                    MlaQuery::Direct(q) => swap(be, name, q, w),
                    MlaQuery::LowRank { .. } => Err(missing()),
                }
            }
            (Attention::Mla(m), "attn_q_a.weight") => {
                return match &mut m.query {
                    MlaQuery::LowRank { a, .. } => swap(be, name, a, w),
                    MlaQuery::Direct(_) => Err(missing()),
                }
            }
            (Attention::Mla(m), "attn_q_b.weight") => {
                return match &mut m.query {
                    MlaQuery::LowRank { b, .. } => swap(be, name, b, w),
                    MlaQuery::Direct(_) => Err(missing()),
                }
            }
            (Attention::Mla(m), "attn_kv_a_mqa.weight") => return swap(be, name, &mut m.wkv_a, w),
            (Attention::Mla(m), "attn_k_b.weight") => return swap_heads(be, name, &mut m.k_b, w),
            (Attention::Mla(m), "attn_v_b.weight") => return swap_heads(be, name, &mut m.v_b, w),
            (Attention::Mla(m), "attn_kv_b.weight") => {
                let (nope, vdim) = (m.k_b[0].in_features(), m.v_b[0].out_features());
                let lora = m.k_b[0].out_features();
                check_dims(name, &w, n_head * (nope + vdim), lora)?;
                let (kb, vb) = split_kv_b(&w, n_head, nope, vdim);
                m.k_b = kb.into_iter().map(|w| Linear::new(be, w)).collect();
                m.v_b = vb.into_iter().map(|w| Linear::new(be, w)).collect();
                return Ok(());
            }
            (Attention::Mla(m), "attn_output.weight") => return swap(be, name, &mut m.wo, w),
            _ => {}
        }
        match (&mut layer.ffn, suffix) {
            (FeedForward::Dense(m), "ffn_gate.weight") => swap_gate(be, name, m, w),
            (FeedForward::Dense(m), "ffn_up.weight") => swap_up(be, name, m, w),
            (FeedForward::Dense(m), "ffn_down.weight") => swap(be, name, &mut m.down, w),
            (
                FeedForward::Moe(Moe {
                    shared: Some(m), ..
                }),
                "ffn_gate_shexp.weight",
            ) => swap_gate(be, name, m, w),
            (
                FeedForward::Moe(Moe {
                    shared: Some(m), ..
                }),
                "ffn_up_shexp.weight",
            ) => swap_up(be, name, m, w),
            (
                FeedForward::Moe(Moe {
                    shared: Some(m), ..
                }),
                "ffn_down_shexp.weight",
            ) => swap(be, name, &mut m.down, w),
            (
                FeedForward::Moe(moe),
                "ffn_gate_exps.weight" | "ffn_up_exps.weight" | "ffn_down_exps.weight",
            ) => {
                let ff = moe.params.n_ff_exp;
                let (per, cols) = if suffix == "ffn_down_exps.weight" {
                    (d, ff)
                } else {
                    (ff, d)
                };
                check_dims(name, &w, per * moe.experts.len(), cols)?;
                for (e, m) in moe.experts.iter_mut().enumerate() {
                    let part = Linear::new(be, w.row_range(e * per, per));
                    match (suffix, &mut m.gate_up) {
                        ("ffn_gate_exps.weight", GateUp::Separate { gate, .. }) => *gate = part,
                        ("ffn_up_exps.weight", GateUp::Separate { up, .. }) => *up = part,
                        ("ffn_down_exps.weight", _) => m.down = part,
                        // experts are loaded with separate gate and up
                        _ => return Err(missing()),
                    }
                }
                Ok(())
            }
            _ => Err(missing()),
        }
    }

    /// Replace a per-channel vector of a block (norm weights, biases), GGUF name.
    pub fn replace_vector(&mut self, name: &str, v: Vec<f32>) -> Result<()> {
        let (li, suffix) = split_block_name(name)
            .filter(|(li, _)| *li < self.layers.len())
            .ok_or_else(|| EngineError::MissingTensor(name.into()))?;
        let be = &self.be;
        let layer = self.layers[li].as_mut().ok_or_else(|| not_loaded(li))?;
        let slot: Option<&mut B::Buf> = match suffix {
            "attn_norm.weight" => Some(&mut layer.attn_norm),
            "ffn_norm.weight" => Some(&mut layer.ffn_norm),
            "post_attention_norm.weight" => layer.post_attn_norm.as_mut(),
            "post_ffw_norm.weight" => layer.post_ffn_norm.as_mut(),
            _ => match (&mut layer.attn, suffix) {
                (Attention::Standard(a), "attn_q.bias") => a.bq.as_mut(),
                (Attention::Standard(a), "attn_k.bias") => a.bk.as_mut(),
                (Attention::Standard(a), "attn_v.bias") => a.bv.as_mut(),
                (Attention::Standard(a), "attn_q_norm.weight") => a.q_norm.as_mut(),
                (Attention::Standard(a), "attn_k_norm.weight") => a.k_norm.as_mut(),
                (Attention::Mla(m), "attn_q_a_norm.weight") => match &mut m.query {
                    MlaQuery::LowRank { norm, .. } => Some(norm),
                    MlaQuery::Direct(_) => None,
                },
                (Attention::Mla(m), "attn_kv_a_norm.weight") => Some(&mut m.kv_a_norm),
                _ => None,
            },
        };
        let slot = slot.ok_or_else(|| EngineError::MissingTensor(name.into()))?;
        if be.len(slot) != v.len() {
            return Err(EngineError::BadShape {
                name: name.into(),
                got: vec![v.len()],
                want: vec![be.len(slot)],
            });
        }
        *slot = be.upload(v);
        Ok(())
    }
}

/// Replace the gate projection of a gated MLP (none in a fused gate|up).
fn swap_gate<B: Backend>(be: &B, name: &str, m: &mut Mlp<B>, w: WeightMatrix) -> Result<()> {
    match &mut m.gate_up {
        GateUp::Separate { gate, .. } => swap(be, name, gate, w),
        GateUp::Fused(_) => Err(EngineError::MissingTensor(name.to_string())),
    }
}

/// Replace the up projection (the whole fused gate|up where fused: its GGUF name is
/// `ffn_up`).
fn swap_up<B: Backend>(be: &B, name: &str, m: &mut Mlp<B>, w: WeightMatrix) -> Result<()> {
    match &mut m.gate_up {
        GateUp::Separate { up, .. } => swap(be, name, up, w),
        GateUp::Fused(gate_up) => swap(be, name, gate_up, w),
    }
}
