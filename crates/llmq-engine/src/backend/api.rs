//! The backend interface: the [`Backend`] trait (buffers, weights and the operations a
//! decoder block needs) and the plain descriptions its operations take (RoPE settings,
//! attention geometry, the batch's token map).

use crate::error::Result;
use crate::hparams::{MoeParams, RopeKind};
use llmq_kernels::WeightMatrix;
use std::borrow::Cow;
use std::ops::Range;

/// The gating nonlinearity of a gated MLP (`down(act(gate·x) * up·x)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// SiLU (`x·σ(x)`): every architecture but Gemma
    Silu,
    /// tanh-approximated GELU (Gemma)
    GeluTanh,
    /// GPT-OSS's clamped SwiGLU: `g = min(gate, limit)`, `u = clamp(up, ±limit)`,
    /// `(u + 1) · g · σ(alpha · g)` (the up term is part of the activation)
    ClampedSwiglu { alpha: f32, limit: f32 },
}

impl Activation {
    /// The gated value of one gate/up pair.
    #[inline]
    pub fn gated(self, g: f32, u: f32) -> f32 {
        match self {
            Activation::Silu => crate::ops::silu(g) * u,
            Activation::GeluTanh => crate::ops::gelu_tanh(g) * u,
            Activation::ClampedSwiglu { alpha, limit } => {
                let g = g.min(limit);
                let u = u.clamp(-limit, limit);
                g * crate::ops::sigmoid(alpha * g) * (u + 1.0)
            }
        }
    }
}

/// Rotary position embedding settings (RoFormer, Su et al. 2021). Pair `i` (of
/// `n_rot / 2`) at position `p` turns by
/// `θ = (p / scale) · base^(-2i / n_rot) / freq_factors[i]` (computed in f64), and the
/// rotated values are `attn_factor · (x0·cos θ − x1·sin θ, x0·sin θ + x1·cos θ)`.
/// Every scaled RoPE variant is expressed this way (`llmq_arch::rope`): linear through
/// `scale`, llama3 and YaRN through `freq_factors` (llama.cpp's `rope_freqs.weight`),
/// YaRN's cos/sin scaling through `attn_factor`.
#[derive(Clone, Copy, Debug)]
pub struct Rope<'a> {
    /// dimensions rotated at the start of each head
    pub n_rot: usize,
    pub base: f32,
    /// positions are divided by this (linear scaling)
    pub scale: f32,
    pub kind: RopeKind,
    /// per-pair frequency divisors (`n_rot / 2` values); `None`: all 1
    pub freq_factors: Option<&'a [f32]>,
    /// multiplies cos and sin (YaRN's attention factor; 1 otherwise)
    pub attn_factor: f32,
}

/// Where each token of a forward batch belongs: its sequence (an index into the
/// per-sequence caches) and its position in that sequence.
#[derive(Clone, Copy, Debug)]
pub struct TokenMap<'a> {
    pub seq: &'a [usize],
    pub pos: &'a [usize],
}

impl TokenMap<'_> {
    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
}

/// Geometry of standard (multi-head / grouped-query) attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    /// multiplies `q·k`
    pub scale: f32,
    /// key j is visible from query i when i - window < j <= i
    pub window: Option<usize>,
}

/// Geometry of multi-head latent attention in the absorbed form (DeepSeek-V2, arXiv
/// 2405.04434): cache rows are `[latent (lora) | roped shared key (rope)]`.
#[derive(Clone, Copy, Debug)]
pub struct MlaShape {
    pub n_head: usize,
    pub kv_lora_rank: usize,
    pub qk_rope: usize,
    pub scale: f32,
    pub window: Option<usize>,
}

/// One sequence's cached keys and values for one layer, as attention reads them.
pub struct KvView<'a, B: Backend> {
    pub k: &'a B::Buf,
    pub v: &'a B::Buf,
}

/// The tokens routed to each expert of a MoE layer: `(token, weight)` per expert, in
/// token order.
pub type Routing = Vec<Vec<(usize, f32)>>;

/// The operations of a decoder over buffers the backend owns.
pub trait Backend: Sized + Sync {
    /// Activations, norm weights, biases and KV cache rows (f32, row-major).
    type Buf: Clone + Send + Sync + 'static;
    /// A weight matrix in the backend's memory, in whatever format it was loaded.
    type Weight: Clone + Send + Sync;

    // --- memory -------------------------------------------------------------------

    /// Host values into a buffer.
    fn upload(&self, v: Vec<f32>) -> Self::Buf;
    /// A buffer of `n` zeros.
    fn zeros(&self, n: usize) -> Self::Buf;
    /// Values in a buffer.
    fn len(&self, b: &Self::Buf) -> usize;
    /// A buffer's values on the host (borrowed where the buffer already is there).
    fn to_host<'a>(&self, b: &'a Self::Buf) -> Cow<'a, [f32]>;
    /// A buffer's values on the host, consuming it.
    fn download(&self, b: Self::Buf) -> Vec<f32>;
    /// A forward step of `tokens` tokens over `seqs` sequences begins: a backend may
    /// defer its work until a result is read and replay repeated steps as a whole (the
    /// CUDA backend's graphs). Nothing by default.
    fn begin_step(&self, _tokens: usize, _seqs: usize) {}
    /// The step that [`Backend::begin_step`] began is over, successful or not: all its
    /// work has been issued.
    fn end_step(&self) {}
    /// Runs a forward step's host side (`step`), between [`Backend::begin_step`] and
    /// [`Backend::end_step`]. In place by default; the CPU backend moves it onto a
    /// worker of its thread pool, where each of the step's parallel operations forks
    /// from inside the pool instead of being injected from outside and waited for.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        step()
    }
    /// Whether this backend computes `w` (tensor `name`): the loader asks before
    /// [`Backend::upload_weight`], so a model with a weight type the backend lacks is
    /// refused at load, naming the tensor. Every type by default.
    fn check_weight(&self, name: &str, w: &WeightMatrix) -> Result<()> {
        let _ = (name, w);
        Ok(())
    }
    /// The device, for reports (`cpu`, `cuda:0 (NVIDIA H100 ..., sm_90)`).
    fn device_name(&self) -> String {
        "cpu".into()
    }
    /// The device's measured copy rate in bytes (read + written) per second, the ceiling
    /// bandwidth shares are quoted against (`None`: not measured for this backend).
    fn copy_rate(&self) -> Option<f64> {
        None
    }
    /// Bytes of device memory a model may still take (`None`: host memory, not planned).
    fn free_memory(&self) -> Option<u64> {
        None
    }
    /// Compute every product as the CPU engine does (up to summation order), giving up
    /// faster paths that round differently (the CUDA backend's f16 tensor-core prompt
    /// products); for quality measurements. The CPU is always exact.
    fn set_exact_products(&self, exact: bool) {
        let _ = exact;
    }
    /// Move a weight matrix into the backend's memory (once, at load time).
    fn upload_weight(&self, w: WeightMatrix) -> Self::Weight;
    /// An empty KV-cache buffer that will grow to at most `max_rows` rows of `width`.
    fn cache_buf(&self, max_rows: usize, width: usize) -> Self::Buf;
    /// Append rows `rows` of `src` (rows of `width`) to `dst`.
    fn append_rows(&self, dst: &mut Self::Buf, src: &Self::Buf, width: usize, rows: Range<usize>);
    /// Keep the first `rows` rows of `width`.
    fn truncate_rows(&self, b: &mut Self::Buf, width: usize, rows: usize);

    // --- layout -------------------------------------------------------------------

    /// Rows `rows` (in that order) of `x` (rows of `width`).
    fn gather_rows(&self, x: &Self::Buf, width: usize, rows: &[usize]) -> Self::Buf;
    /// Columns `[start, start + len)` of every row of `x` (rows of `width`).
    fn slice_cols(&self, x: &Self::Buf, width: usize, start: usize, len: usize) -> Self::Buf;
    /// Write `src` (rows of `src_width`) into columns `[start, start + src_width)` of
    /// every row of `dst` (rows of `width`).
    fn write_cols(
        &self,
        dst: &mut Self::Buf,
        width: usize,
        start: usize,
        src: &Self::Buf,
        src_width: usize,
    );
    /// Rows of `a` (width `wa`) followed column-wise by rows of `b` (width `wb`).
    fn concat_cols(&self, a: &Self::Buf, wa: usize, b: &Self::Buf, wb: usize) -> Self::Buf;

    // --- arithmetic ---------------------------------------------------------------

    /// Rows of the embedding table `table` for `ids`, times `scale` where given.
    fn embed(&self, table: &Self::Weight, ids: &[u32], scale: Option<f32>) -> Self::Buf;
    /// `x · Wᵀ` for `n` rows of `x`: `[n, w.rows]`.
    fn matmul(&self, w: &Self::Weight, x: &Self::Buf, n: usize) -> Self::Buf;
    /// [`Backend::matmul`] of one input with several weights (q/k/v, gate/up), in
    /// order; a backend may prepare the input once for all of them.
    fn matmul_each(&self, ws: &[&Self::Weight], x: &Self::Buf, n: usize) -> Vec<Self::Buf> {
        ws.iter().map(|w| self.matmul(w, x, n)).collect()
    }
    /// RMSNorm (Zhang & Sennrich 2019) of every `w.len()`-wide row, into a new buffer.
    /// Gemma's `1 + w` is folded into `w` when the weights load.
    fn rms_norm(&self, x: &Self::Buf, w: &Self::Buf, eps: f32) -> Self::Buf;
    /// RMSNorm in place.
    fn rms_norm_inplace(&self, x: &mut Self::Buf, w: &Self::Buf, eps: f32);
    /// `x[r] += b` for every `b.len()`-wide row.
    fn add_bias(&self, x: &mut Self::Buf, b: &Self::Buf);
    /// `x += y` (the residual stream).
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf);
    /// Rotate the first `rope.n_rot` values of every `head_dim`-wide head of every
    /// buffer in `xs`; row `t` of each (one row per token) is at position `pos[t]`.
    fn rope(&self, xs: &mut [&mut Self::Buf], head_dim: usize, pos: &[usize], rope: Rope<'_>);
    /// `act.gated(gate, up)`, element-wise, in `gate`'s buffer.
    fn glu(&self, gate: Self::Buf, up: &Self::Buf, act: Activation) -> Self::Buf;
    /// `act.gated(g, u)` for rows `[g | u]` of `2 * ff` values (fused gate|up).
    fn glu_fused(&self, gate_up: &Self::Buf, ff: usize, act: Activation) -> Self::Buf;
    /// `x = tanh(x / cap) * cap` (Gemma's final logit soft-capping).
    fn softcap(&self, x: &mut Self::Buf, cap: f32);
    /// `dst[t] += w * src[k]` for the `k`-th `(t, w)` of `rows` (rows of `width`): the
    /// weighted sum of expert outputs.
    fn scatter_add_rows(
        &self,
        dst: &mut Self::Buf,
        width: usize,
        src: &Self::Buf,
        rows: &[(usize, f32)],
    );
    /// MoE routing from router logits (`[tokens, n_expert]`): which tokens go to which
    /// expert, with what weight. The answer is on the host: it drives the dispatch.
    fn route(&self, logits: &Self::Buf, bias: Option<&Self::Buf>, p: &MoeParams) -> Routing;
    /// Causal softmax attention of `q` (`[tokens, n_head * head_dim_k]`) over each
    /// token's sequence cache (`caches[seq]`, keys and values up to and including the
    /// token's position, within the sliding window), query head `h` reading KV head
    /// `h / (n_head / n_head_kv)`: `[tokens, n_head * head_dim_v]`. With `sinks`
    /// (`n_head` logits, GPT-OSS), head `h`'s softmax also takes `sinks[h]` in its
    /// denominator, a logit with no value.
    fn attention(
        &self,
        q: &Self::Buf,
        caches: &[KvView<'_, Self>],
        tokens: TokenMap<'_>,
        shape: &AttnShape,
        sinks: Option<&Self::Buf>,
    ) -> Self::Buf;
    /// Absorbed MLA attention: scores `q_lat·latent + q_rope·k_rope` over each token's
    /// cache rows (`caches[seq]`), output the attention-weighted latents:
    /// `[tokens * n_head, kv_lora_rank]`. `q_lat` is `[tokens * n_head, lora]`,
    /// `q_rope` `[tokens * n_head, rope]`.
    fn mla_attention(
        &self,
        q_lat: &Self::Buf,
        q_rope: &Self::Buf,
        caches: &[&Self::Buf],
        tokens: TokenMap<'_>,
        shape: &MlaShape,
    ) -> Self::Buf;
}
