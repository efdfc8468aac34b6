//! Mixture-of-experts routing: which experts a token goes to, with what weight, from
//! its router logits. Softmax (Mixtral, Qwen3-MoE) or sigmoid scoring (DeepSeek-V3,
//! arXiv 2412.19437) with an optional correction bias that steers the choice but not
//! the weights, group-limited top-k (a group scores the sum of its two best biased
//! scores), renormalization and scaling of the chosen weights.

use crate::hparams::{Gating, MoeParams};
use crate::ops::{sigmoid, softmax};

/// Choose experts for one token from its router logits: `(expert, weight)` pairs.
pub fn route(logits: &[f32], bias: Option<&[f32]>, p: &MoeParams) -> Vec<(usize, f32)> {
    let n = logits.len();
    let probs: Vec<f32> = match p.gating {
        Gating::Softmax => {
            let mut v = logits.to_vec();
            softmax(&mut v);
            v
        }
        Gating::Sigmoid => logits.iter().map(|l| sigmoid(*l)).collect(),
    };
    let mut sel: Vec<f32> = match bias {
        Some(b) => probs.iter().zip(b).map(|(p, b)| p + b).collect(),
        None => probs.clone(),
    };
    if p.n_group > 1 && p.topk_group < p.n_group {
        // a group's score is the sum of its two best biased scores
        let per = n / p.n_group;
        let mut gscore: Vec<(usize, f32)> = (0..p.n_group)
            .map(|g| {
                let mut v: Vec<f32> = sel[g * per..(g + 1) * per].to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                (g, v.iter().take(2).sum())
            })
            .collect();
        gscore.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for &(g, _) in &gscore[p.topk_group..] {
            sel[g * per..(g + 1) * per].fill(f32::NEG_INFINITY);
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
    order.truncate(p.n_expert_used);
    let mut w: Vec<f32> = order.iter().map(|&e| probs[e]).collect();
    if p.norm_weights {
        let s: f32 = w.iter().sum();
        if s > 0.0 {
            w.iter_mut().for_each(|x| *x /= s);
        }
    }
    w.iter_mut().for_each(|x| *x *= p.weights_scale);
    order.into_iter().zip(w).collect()
}
