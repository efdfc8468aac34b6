//! Tail-biting Viterbi encoder for the bitshift trellis (QTIP, Tseng et al., arXiv 2406.11235,
//! §3 and Algorithm 4; exllamav3 `quant/quantize_tiles_kernel.cuh`).
//!
//! A trellis has `L`-bit states and appends `K` bits per step: `state_t = (state_{t−1} << K |
//! code_t) mod 2^L`. Viterbi runs over the `2^(L−K)` *nodes* (the low `L−K` bits of a state); a
//! state is an edge from node `state >> K` to node `state mod 2^(L−K)`, and costs
//! `(table[state] − w_t)²`. The ring is closed (tail-biting) as QTIP's Algorithm 4 does: a first pass
//! over the sequence rotated by half its length, with a free start, is traced back to find the node
//! before position 0; a second pass is then run from that node and traced back from the same node.
//! [`Encoder::encode_closed`] is exact for a given boundary node (the minimum over all boundary nodes
//! is the exact tail-biting optimum, which the tests check against exhaustive search).
//!
//! Forward passes keep only the minimum cost per node and step, vectorised (AVX2 where the CPU has
//! it): for K ≤ 4 eight nodes at a time with their minimum in registers over all `2^K`
//! predecessors, for larger K a contiguous pass per predecessor block; the traceback recomputes the `2^K`
//! candidates of the one node it visits per step with the same arithmetic, so no argmin is kept.

use crate::codebook::Codebook;
use crate::TrellisError;
use llmq_quant::isa::Isa;

/// A trellis shape and its value table (`2^L` entries).
#[derive(Debug, Clone)]
pub struct Encoder {
    l: u32,
    k: u32,
    table: Vec<f32>,
}

/// Work buffers of one encoding (one per thread).
#[derive(Debug, Default)]
pub struct Scratch {
    costs: Vec<f32>,
}

/// An encoded sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// `state_t` for every position.
    pub states: Vec<u16>,
    /// `table[state_t]`.
    pub values: Vec<f32>,
    /// `Σ (values_t − w_t)²`.
    pub cost: f32,
}

impl Encoder {
    /// EXL3's trellis: L = 16, `k` bits per weight (1…8), `cb`'s values.
    pub fn new(k: u32, cb: Codebook) -> Result<Encoder, TrellisError> {
        Encoder::with_table(16, k, cb.table())
    }

    /// Any trellis with `2·k ≤ l ≤ 16` and a table of `2^l` values (small ones for tests).
    pub fn with_table(l: u32, k: u32, table: Vec<f32>) -> Result<Encoder, TrellisError> {
        if k == 0 || 2 * k > l || l > 16 || table.len() != 1 << l {
            return Err(TrellisError::BadTrellis { l, k });
        }
        Ok(Encoder { l, k, table })
    }

    /// Bits per weight.
    pub fn k(&self) -> u32 {
        self.k
    }

    fn nodes(&self) -> usize {
        1 << (self.l - self.k)
    }

    /// Tail-biting encoding of `w` (positions in stream order; even length ≥ 2) by QTIP's two
    /// passes, as exllamav3 does.
    pub fn encode(&self, w: &[f32], s: &mut Scratch) -> Encoded {
        let n = w.len();
        let roll = n / 2;
        self.forward(w, roll, None, s);
        let end = argmin(&s.costs[n * self.nodes()..]);
        // trace back from the end (position roll − 1) to position 0: its predecessor is the
        // node before position 0
        let boundary = self.trace(w, roll, end, s, n - roll).0;
        self.encode_closed(w, boundary, s)
    }

    /// The best sequence whose node before position 0 and node at the last position are both
    /// `boundary` (exact).
    pub fn encode_closed(&self, w: &[f32], boundary: usize, s: &mut Scratch) -> Encoded {
        let n = w.len();
        self.forward(w, 0, Some(boundary), s);
        let cost = s.costs[n * self.nodes() + boundary];
        let (_, states) = self.trace(w, 0, boundary, s, n);
        let values = states.iter().map(|&st| self.table[st as usize]).collect();
        Encoded {
            states,
            values,
            cost,
        }
    }

    /// Fills `s.costs` with `n + 1` rows of `nodes` costs: row 0 the start (0 everywhere, or 0 at
    /// `start` and +∞ elsewhere), row i+1 after ring position `(i + roll) mod n`.
    fn forward(&self, w: &[f32], roll: usize, start: Option<usize>, s: &mut Scratch) {
        let (n, nodes) = (w.len(), self.nodes());
        s.costs.resize((n + 1) * nodes, 0.0);
        match start {
            None => s.costs[..nodes].fill(0.0),
            Some(b) => {
                s.costs[..nodes].fill(f32::INFINITY);
                s.costs[b] = 0.0;
            }
        }
        let isa = Isa::detect();
        for i in 0..n {
            let wi = w[(i + roll) % n];
            let (done, rest) = s.costs.split_at_mut((i + 1) * nodes);
            let prev = &done[i * nodes..];
            let next = &mut rest[..nodes];
            step(isa, self, prev, next, wi);
        }
    }

    /// Traces back `steps` positions from node `end` at the last forward row; returns the node
    /// before the earliest traced position and the states of the traced positions (in ring order,
    /// indexed by true position when `steps == n` and `roll == 0`).
    fn trace(
        &self,
        w: &[f32],
        roll: usize,
        end: usize,
        s: &Scratch,
        steps: usize,
    ) -> (usize, Vec<u16>) {
        let (n, nodes, k, lk) = (w.len(), self.nodes(), self.k, self.l - self.k);
        let mut states = vec![0u16; steps];
        let mut node = end;
        for i in (n - steps..n).rev() {
            let wi = w[(i + roll) % n];
            let prev = &s.costs[i * nodes..(i + 1) * nodes];
            let target = s.costs[(i + 1) * nodes + node];
            let mut best = (f32::INFINITY, 0usize);
            for top in 0..1usize << k {
                let state = (top << lk) | node;
                let pred = state >> k;
                let d = self.table[state] - wi;
                let c = prev[pred] + d * d;
                // the forward pass kept exactly one of these sums: take the first that equals it
                if c == target {
                    best = (c, state);
                    break;
                }
                if c < best.0 {
                    best = (c, state);
                }
            }
            states[i - (n - steps)] = best.1 as u16;
            node = best.1 >> k;
        }
        (node, states)
    }

    /// Encodes many 256-weight tiles (`tiles.len()` a multiple of 256) in parallel.
    pub fn encode_tiles(&self, tiles: &[f32]) -> (Vec<u16>, Vec<f32>) {
        use rayon::prelude::*;
        let results: Vec<Encoded> = tiles
            .par_chunks(256)
            .map_init(Scratch::default, |s, t| self.encode(t, s))
            .collect();
        let mut states = Vec::with_capacity(tiles.len());
        let mut values = Vec::with_capacity(tiles.len());
        for r in results {
            states.extend_from_slice(&r.states);
            values.extend_from_slice(&r.values);
        }
        (states, values)
    }
}

fn argmin(c: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in c.iter().enumerate() {
        if v < c[best] {
            best = i;
        }
    }
    best
}

fn step(isa: Isa, e: &Encoder, prev: &[f32], next: &mut [f32], w: f32) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (Isa::detect).
        unsafe { step_avx2(e, prev, next, w) };
        return;
    }
    let _ = isa;
    step_body(e, prev, next, w);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn step_avx2(e: &Encoder, prev: &[f32], next: &mut [f32], w: f32) {
    step_body(e, prev, next, w)
}

/// `next[n] = min over top of prev[state >> k] + (table[state] − w)²`, `state = top << (l−k) | n`.
#[inline(always)]
fn step_body(e: &Encoder, prev: &[f32], next: &mut [f32], w: f32) {
    match e.k {
        1 => step_k::<1>(&e.table, prev, next, w),
        2 => step_k::<2>(&e.table, prev, next, w),
        3 => step_k::<3>(&e.table, prev, next, w),
        4 => step_k::<4>(&e.table, prev, next, w),
        k => step_wide(&e.table, prev, next, w, k as usize),
    }
}

/// Large fan-out (K ≥ 5): one contiguous pass over the states of each predecessor block,
/// `next` updated in place (streams the table instead of striding through it).
#[inline(always)]
fn step_wide(table: &[f32], prev: &[f32], next: &mut [f32], w: f32, k: usize) {
    let nodes = next.len();
    let fan = 1usize << k;
    next.fill(f32::INFINITY);
    for top in 0..fan {
        let base = top * nodes;
        let tab = &table[base..base + nodes];
        let pre = &prev[base >> k..(base >> k) + (nodes >> k)];
        for ((nx, tb), &cp) in next
            .chunks_exact_mut(fan)
            .zip(tab.chunks_exact(fan))
            .zip(pre)
        {
            for (o, &t) in nx.iter_mut().zip(tb) {
                let d = t - w;
                let c = cp + d * d;
                *o = if c < *o { c } else { *o };
            }
        }
    }
}

/// Eight consecutive nodes at a time, their running minimum kept in registers over all `2^K`
/// predecessors (`nodes` is a multiple of 8 because `l − k ≥ k` and the smallest trellis the
/// encoder accepts has `l − k ≥ 3`; smaller ones take the scalar tail).
#[inline(always)]
fn step_k<const K: usize>(table: &[f32], prev: &[f32], next: &mut [f32], w: f32) {
    let nodes = next.len();
    let fan = 1usize << K;
    let full = nodes / 8 * 8;
    for n0 in (0..full).step_by(8) {
        let mut acc = [f32::INFINITY; 8];
        for top in 0..fan {
            let s0 = top * nodes + n0;
            let tb = &table[s0..s0 + 8];
            if K >= 3 {
                let cp = prev[s0 >> K];
                for i in 0..8 {
                    let d = tb[i] - w;
                    let c = cp + d * d;
                    acc[i] = if c < acc[i] { c } else { acc[i] };
                }
            } else {
                // s0 is a multiple of 8: the eight states have 8 >> K predecessors
                let pv = &prev[s0 >> K..(s0 >> K) + (8 >> K)];
                for i in 0..8 {
                    let d = tb[i] - w;
                    let c = pv[i >> K] + d * d;
                    acc[i] = if c < acc[i] { c } else { acc[i] };
                }
            }
        }
        next[n0..n0 + 8].copy_from_slice(&acc);
    }
    for (n, o) in next.iter_mut().enumerate().skip(full) {
        let mut best = f32::INFINITY;
        for top in 0..fan {
            let s = top * nodes + n;
            let d = table[s] - w;
            let c = prev[s >> K] + d * d;
            best = if c < best { c } else { best };
        }
        *o = best;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn gaussian(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.gen::<f64>().max(1e-12), rng.gen());
                ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
            })
            .collect()
    }

    /// Exhaustive search over every code stream of a ring of `n` steps.
    fn brute_force(l: u32, k: u32, table: &[f32], w: &[f32]) -> f32 {
        let n = w.len();
        let total = n as u32 * k;
        let mut best = f32::INFINITY;
        for stream in 0u64..1 << total {
            let bit = |p: u32| ((stream >> (total - 1 - (p % total))) & 1) as usize;
            let mut cost = 0f32;
            for (t, &wt) in w.iter().enumerate() {
                let end = (t as u32 + 1) * k + total;
                let mut s = 0usize;
                for p in end - l..end {
                    s = (s << 1) | bit(p);
                }
                let d = table[s] - wt;
                cost += d * d;
            }
            best = best.min(cost);
        }
        best
    }

    #[test]
    fn closed_rings_match_exhaustive_search() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(l, k, n) in &[
            (4u32, 1u32, 10usize),
            (6, 2, 6),
            (6, 3, 5),
            (8, 4, 4),
            (5, 2, 7),
        ] {
            for _ in 0..3 {
                let table = gaussian(&mut rng, 1 << l);
                let w = gaussian(&mut rng, n);
                let e = Encoder::with_table(l, k, table.clone()).unwrap();
                let mut s = Scratch::default();
                let exact = (0..1usize << (l - k))
                    .map(|b| e.encode_closed(&w, b, &mut s))
                    .min_by(|a, b| a.cost.total_cmp(&b.cost))
                    .unwrap();
                let brute = brute_force(l, k, &table, &w);
                assert!(
                    (exact.cost - brute).abs() <= 1e-5 * brute.max(1.0),
                    "l{l} k{k}: {} vs {brute}",
                    exact.cost
                );
                // the states form a valid ring and their values give the reported cost
                for t in 0..n {
                    let prev = exact.states[(t + n - 1) % n] as usize;
                    let cur = exact.states[t] as usize;
                    assert_eq!(
                        (prev << k) & ((1 << l) - 1) & !((1 << k) - 1),
                        cur & !((1 << k) - 1)
                    );
                }
                let c: f32 = exact
                    .values
                    .iter()
                    .zip(&w)
                    .map(|(v, x)| (v - x) * (v - x))
                    .sum();
                assert!((c - exact.cost).abs() < 1e-4);
                // the two-pass ring is a valid ring, never better than the optimum
                let two = e.encode(&w, &mut s);
                assert!(two.cost >= brute - 1e-5);
            }
        }
    }

    /// Mean squared error on i.i.d. Gaussian tiles against QTIP's Table 2 (tail-biting, T = 256,
    /// L = 12 there: K=2 0.0733, K=3 0.0198, K=4 0.0055; L = 16 should do at least about as well).
    #[test]
    fn gaussian_mse_matches_the_paper() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (k, bound) in [(2u32, 0.080f64), (3, 0.0215), (4, 0.0060)] {
            let e = Encoder::new(k, Codebook::Mcg).unwrap();
            let tiles = gaussian(&mut rng, 256 * 6);
            let (states, values) = e.encode_tiles(&tiles);
            let mse = values
                .iter()
                .zip(&tiles)
                .map(|(v, x)| ((v - x) as f64).powi(2))
                .sum::<f64>()
                / tiles.len() as f64;
            assert!(mse < bound, "k{k}: mse {mse}");
            // consecutive states overlap in 16 − k bits, round the ring
            for t in states.chunks(256) {
                for i in 0..256 {
                    let (p, c) = (t[(i + 255) % 256] as u32, t[i] as u32);
                    assert_eq!((p << k) & 0xffff, c & !((1 << k) - 1) & 0xffff);
                }
            }
        }
    }
}
