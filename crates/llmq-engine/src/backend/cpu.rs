//! The CPU backend: buffers are host `Vec<f32>`, weights stay where they were loaded
//! (memory-mapped GGUF bytes or owned buffers, no copy) and products run on
//! `llmq_kernels::matmul` (packed-block dot products over every weight type, threaded).
//! Element-wise math is `crate::ops`; attention is in `cpu_attention`.

use super::api::{Activation, AttnShape, Backend, KvView, MlaShape, Rope, Routing, TokenMap};
use super::cpu_attention;
use crate::hparams::MoeParams;
use crate::ops::{
    axpy, gelu_tanh, rms_norm, rms_norm_rows, rope_apply, rope_table, silu, RopeFreqScaling,
};
use llmq_kernels::{matmul, WeightMatrix};
use std::borrow::Cow;
use std::ops::Range;

/// f32 compute on the host, threaded with rayon.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Weight = WeightMatrix;

    fn upload(&self, v: Vec<f32>) -> Vec<f32> {
        v
    }

    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }

    fn len(&self, b: &Vec<f32>) -> usize {
        b.len()
    }

    fn to_host<'a>(&self, b: &'a Vec<f32>) -> Cow<'a, [f32]> {
        Cow::Borrowed(b)
    }

    fn download(&self, b: Vec<f32>) -> Vec<f32> {
        b
    }

    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        // A parallel call from a thread outside the pool queues its job and sleeps until
        // a worker has run it (measured at 7-11 us a call); from a worker it forks in
        // place (0.1-0.2 us), and a decode step makes about a hundred such calls.
        // `rayon::scope` runs `step` on the calling thread when it is a worker already.
        rayon::scope(|_| step())
    }

    fn upload_weight(&self, w: WeightMatrix) -> WeightMatrix {
        w
    }

    fn cache_buf(&self, _max_rows: usize, _width: usize) -> Vec<f32> {
        // grows with the sequence: a long context costs memory only when used
        Vec::new()
    }

    fn append_rows(&self, dst: &mut Vec<f32>, src: &Vec<f32>, width: usize, rows: Range<usize>) {
        dst.extend_from_slice(&src[rows.start * width..rows.end * width]);
    }

    fn truncate_rows(&self, b: &mut Vec<f32>, width: usize, rows: usize) {
        b.truncate(rows * width);
    }

    fn gather_rows(&self, x: &Vec<f32>, width: usize, rows: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len() * width);
        for &r in rows {
            out.extend_from_slice(&x[r * width..(r + 1) * width]);
        }
        out
    }

    fn slice_cols(&self, x: &Vec<f32>, width: usize, start: usize, len: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len() / width.max(1) * len);
        for row in x.chunks(width) {
            out.extend_from_slice(&row[start..start + len]);
        }
        out
    }

    fn write_cols(
        &self,
        dst: &mut Vec<f32>,
        width: usize,
        start: usize,
        src: &Vec<f32>,
        src_width: usize,
    ) {
        for (d, s) in dst.chunks_mut(width).zip(src.chunks(src_width)) {
            d[start..start + src_width].copy_from_slice(s);
        }
    }

    fn concat_cols(&self, a: &Vec<f32>, wa: usize, b: &Vec<f32>, wb: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(a.len() + b.len());
        for (ra, rb) in a.chunks(wa).zip(b.chunks(wb)) {
            out.extend_from_slice(ra);
            out.extend_from_slice(rb);
        }
        out
    }

    fn embed(&self, table: &WeightMatrix, ids: &[u32], scale: Option<f32>) -> Vec<f32> {
        let d = table.cols;
        let mut x = vec![0.0f32; ids.len() * d];
        for (row, &id) in x.chunks_mut(d).zip(ids) {
            table.row_f32_into(id as usize, row);
            if let Some(s) = scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        x
    }

    fn matmul(&self, w: &WeightMatrix, x: &Vec<f32>, n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; n * w.rows];
        matmul(w, x, n, &mut y);
        y
    }

    fn rms_norm(&self, x: &Vec<f32>, w: &Vec<f32>, eps: f32) -> Vec<f32> {
        rms_norm(x, w, eps)
    }

    fn rms_norm_inplace(&self, x: &mut Vec<f32>, w: &Vec<f32>, eps: f32) {
        rms_norm_rows(x, w, eps);
    }

    fn add_bias(&self, x: &mut Vec<f32>, b: &Vec<f32>) {
        for row in x.chunks_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
    }

    fn rope(&self, xs: &mut [&mut Vec<f32>], head_dim: usize, pos: &[usize], rope: Rope<'_>) {
        let n = pos.len();
        let widths: Vec<usize> = xs.iter().map(|x| x.len() / n.max(1)).collect();
        for (t, &p) in pos.iter().enumerate() {
            let f = RopeFreqScaling {
                scale: rope.scale,
                freq_factors: rope.freq_factors,
                attn_factor: rope.attn_factor,
            };
            let tab = rope_table(p, rope.n_rot, rope.base, f);
            for (x, &w) in xs.iter_mut().zip(&widths) {
                for head in x[t * w..(t + 1) * w].chunks_mut(head_dim) {
                    rope_apply(head, &tab, rope.kind);
                }
            }
        }
    }

    fn glu(&self, gate: Vec<f32>, up: &Vec<f32>, act: Activation) -> Vec<f32> {
        match act {
            // monomorphised per activation: the match stays out of the inner loop
            Activation::Silu => glu_with(gate, up, |g, u| silu(g) * u),
            Activation::GeluTanh => glu_with(gate, up, |g, u| gelu_tanh(g) * u),
            a @ Activation::ClampedSwiglu { .. } => glu_with(gate, up, |g, u| a.gated(g, u)),
        }
    }

    fn glu_fused(&self, gate_up: &Vec<f32>, ff: usize, act: Activation) -> Vec<f32> {
        match act {
            Activation::Silu => glu_fused_with(gate_up, ff, |g, u| silu(g) * u),
            Activation::GeluTanh => glu_fused_with(gate_up, ff, |g, u| gelu_tanh(g) * u),
            a @ Activation::ClampedSwiglu { .. } => {
                glu_fused_with(gate_up, ff, |g, u| a.gated(g, u))
            }
        }
    }

    fn softcap(&self, x: &mut Vec<f32>, cap: f32) {
        x.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
    }

    fn scatter_add_rows(
        &self,
        dst: &mut Vec<f32>,
        width: usize,
        src: &Vec<f32>,
        rows: &[(usize, f32)],
    ) {
        for (k, (t, w)) in rows.iter().enumerate() {
            axpy(
                &mut dst[t * width..(t + 1) * width],
                *w,
                &src[k * width..(k + 1) * width],
            );
        }
    }

    fn route(&self, logits: &Vec<f32>, bias: Option<&Vec<f32>>, p: &MoeParams) -> Routing {
        let mut assigned: Routing = vec![Vec::new(); p.n_expert];
        for (t, l) in logits.chunks(p.n_expert).enumerate() {
            for (e, w) in crate::routing::route(l, bias.map(|b| b.as_slice()), p) {
                assigned[e].push((t, w));
            }
        }
        assigned
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        caches: &[KvView<'_, Self>],
        tokens: TokenMap<'_>,
        shape: &AttnShape,
        sinks: Option<&Vec<f32>>,
    ) -> Vec<f32> {
        let kv: Vec<(&[f32], &[f32])> = caches.iter().map(|c| (&c.k[..], &c.v[..])).collect();
        cpu_attention::standard(q, &kv, tokens, shape, sinks.map(|s| &s[..]))
    }

    fn mla_attention(
        &self,
        q_lat: &Vec<f32>,
        q_rope: &Vec<f32>,
        caches: &[&Vec<f32>],
        tokens: TokenMap<'_>,
        shape: &MlaShape,
    ) -> Vec<f32> {
        let rows: Vec<&[f32]> = caches.iter().map(|c| &c[..]).collect();
        cpu_attention::mla(q_lat, q_rope, &rows, tokens, shape)
    }
}

/// `gated(g, u)` element-wise, into `gate`.
fn glu_with(mut gate: Vec<f32>, up: &[f32], gated: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    gate.iter_mut()
        .zip(up)
        .for_each(|(g, u)| *g = gated(*g, *u));
    gate
}

/// `gated(g, u)` over rows `[g (ff values) | u (ff values)]`.
fn glu_fused_with(gate_up: &[f32], ff: usize, gated: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    let mut h = vec![0.0f32; gate_up.len() / 2];
    for (t, row) in gate_up.chunks(2 * ff).enumerate() {
        for i in 0..ff {
            h[t * ff + i] = gated(row[i], row[ff + i]);
        }
    }
    h
}
