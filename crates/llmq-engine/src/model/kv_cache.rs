//! The state of a sequence across forward steps, and what a step asks for: the KV cache
//! (per layer, the keys and values of every position so far, in the backend's memory;
//! standard attention caches `n_head_kv * head_dim` values of K and of V per position,
//! MLA one row of `[normalized latent | roped shared key]` in `k`, `v` staying empty),
//! and the [`SeqStep`] of new tokens with the [`Logits`] wanted back.

use crate::backend::{Backend, Cpu, KvView};

/// One layer's cached keys and values.
pub(super) struct LayerCache<B: Backend> {
    pub k: B::Buf,
    pub v: B::Buf,
}

impl<B: Backend> Clone for LayerCache<B> {
    fn clone(&self) -> Self {
        LayerCache {
            k: self.k.clone(),
            v: self.v.clone(),
        }
    }
}

/// The KV cache of one sequence.
pub struct KvCache<B: Backend = Cpu> {
    layers: Vec<LayerCache<B>>,
    len: usize,
    max_len: usize,
}

impl<B: Backend> Clone for KvCache<B> {
    fn clone(&self) -> Self {
        KvCache {
            layers: self.layers.clone(),
            len: self.len,
            max_len: self.max_len,
        }
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache of `n_layer` layers, `kw` / `vw` values per position of K / V.
    pub(super) fn empty(be: &B, n_layer: usize, max_len: usize, kw: usize, vw: usize) -> Self {
        KvCache {
            layers: (0..n_layer)
                .map(|_| LayerCache {
                    k: be.cache_buf(max_len, kw),
                    v: be.cache_buf(max_len, vw),
                })
                .collect(),
            len: 0,
            max_len,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Keep the first `n` positions (K / V rows of `kw` / `vw` values).
    pub(super) fn truncate_rows(&mut self, be: &B, n: usize, kw: usize, vw: usize) {
        if n >= self.len {
            return;
        }
        for l in &mut self.layers {
            be.truncate_rows(&mut l.k, kw, n);
            be.truncate_rows(&mut l.v, vw, n);
        }
        self.len = n;
    }

    /// Count `n` positions the forward pass has appended to every layer.
    pub(super) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// Which logits a sequence wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// New tokens of one sequence for a forward step.
pub struct SeqStep<'a, B: Backend = Cpu> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache<B>,
    pub logits: Logits,
}

/// Which buffer of a layer's cache to append to.
#[derive(Clone, Copy)]
pub(super) enum Part {
    K,
    V,
}

/// Append each token's row of `rows` (rows of `width`, one per token, tokens of one
/// sequence contiguous and in position order) to its sequence's layer `li` cache.
pub(super) fn append<B: Backend>(
    be: &B,
    seqs: &mut [SeqStep<'_, B>],
    li: usize,
    seq_of: &[usize],
    part: Part,
    rows: &B::Buf,
    width: usize,
) {
    let mut start = 0;
    while start < seq_of.len() {
        let s = seq_of[start];
        let end = start + seq_of[start..].iter().take_while(|&&x| x == s).count();
        let c = &mut seqs[s].cache.layers[li];
        let dst = match part {
            Part::K => &mut c.k,
            Part::V => &mut c.v,
        };
        be.append_rows(dst, rows, width, start..end);
        start = end;
    }
}

/// Every sequence's layer `li` cache, as attention reads it.
pub(super) fn views<'a, B: Backend>(seqs: &'a [SeqStep<'_, B>], li: usize) -> Vec<KvView<'a, B>> {
    seqs.iter()
        .map(|s| {
            let l = &s.cache.layers[li];
            KvView { k: &l.k, v: &l.v }
        })
        .collect()
}
