//! Next-token sampling as llama.cpp's default chain applies it (`common/sampling.cpp`,
//! `src/llama-sampling.cpp`): repetition penalty over the last `repeat_last_n` tokens
//! (CTRL, Keskar et al. 2019: positive logits divided, negative multiplied), then top-k,
//! top-p (nucleus, Holtzman et al. 2019), min-p (relative to the best probability),
//! temperature, and a draw from a seeded ChaCha RNG. Temperature 0 is greedy.

use crate::ops::softmax;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Sampling settings (defaults are llama.cpp's).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 = off
    pub top_k: usize,
    /// 1.0 = off
    pub top_p: f32,
    /// 0.0 = off
    pub min_p: f32,
    /// 1.0 = off
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    /// OpenAI-style penalties (0 = off): presence subtracts once per seen token,
    /// frequency subtracts per occurrence
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

/// A sampler with its own random stream.
pub struct Sampler {
    pub params: SamplingParams,
    rng: ChaCha20Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = ChaCha20Rng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// Pick the next token from `logits`, given the tokens seen so far (prompt and
    /// output) for the penalties.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut l = logits.to_vec();
        apply_penalties(&mut l, history, p);
        if p.temperature <= 0.0 {
            return argmax(&l) as u32;
        }
        let mut cand: Vec<(usize, f32)> = l.iter().copied().enumerate().collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        // probabilities at temperature 1 for top-p / min-p, as llama.cpp's chain does
        let mut probs: Vec<f32> = cand.iter().map(|c| c.1).collect();
        softmax(&mut probs);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
            probs.truncate(keep);
        }
        if p.min_p > 0.0 {
            let thresh = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|q| **q >= thresh).count().max(1);
            cand.truncate(keep);
        }
        let mut w: Vec<f32> = cand.iter().map(|c| c.1 / p.temperature).collect();
        softmax(&mut w);
        let r: f32 = self.rng.gen();
        let mut acc = 0.0;
        for (c, q) in cand.iter().zip(&w) {
            acc += q;
            if r < acc {
                return c.0 as u32;
            }
        }
        cand.last().map(|c| c.0 as u32).unwrap_or(0)
    }
}

fn apply_penalties(l: &mut [f32], history: &[u32], p: &SamplingParams) {
    let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
    if p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts = std::collections::HashMap::new();
        for &t in recent {
            *counts.entry(t as usize).or_insert(0usize) += 1;
        }
        for (&t, &n) in &counts {
            if t >= l.len() {
                continue;
            }
            if p.repeat_penalty != 1.0 {
                l[t] = if l[t] > 0.0 {
                    l[t] / p.repeat_penalty
                } else {
                    l[t] * p.repeat_penalty
                };
            }
            l[t] -= n as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect()
    }

    #[test]
    fn greedy_and_seeded_draws_are_reproducible() {
        let l = logits();
        let mut g = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(g.sample(&l, &[]) as usize, argmax(&l));
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..Default::default()
            });
            (0..64).map(|_| s.sample(&l, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn filters_restrict_the_candidates() {
        let l = logits();
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|a, b| l[*b].total_cmp(&l[*a]));
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        });
        for _ in 0..200 {
            assert!(order[..3].contains(&(s.sample(&l, &[]) as usize)));
        }
        // a strong repeat penalty moves greedy away from the best token
        let mut r = Sampler::new(SamplingParams {
            temperature: 0.0,
            repeat_penalty: 100.0,
            ..Default::default()
        });
        assert_eq!(r.sample(&l, &[order[0] as u32]) as usize, order[1]);
        // min-p 1.0 keeps only the best token even at high temperature
        let mut m = Sampler::new(SamplingParams {
            temperature: 10.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 1.0,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(m.sample(&l, &[]) as usize, order[0]);
        }
    }
}
