//! Launching `kernels/attention.cu`: one block per (query head, token), each token
//! reading its own sequence's cache through a table of per-token K and V addresses.
//! Standard attention and absorbed MLA are the same kernel with different strides;
//! prompts of grouped-query models run a whole query group per block (`attention_g*`).

use super::buffers::CudaBuf;
use super::ops::launch;
use super::Cuda;
use crate::backend::api::{AttnShape, KvView, MlaShape, TokenMap};
use cudarc::driver::LaunchConfig;

/// Tokens in a call from which standard attention with 2, 4 or 8 query heads per KV
/// head runs a group per block (`attention_g*`): prompts; a decode step keeps one block
/// per query head, which gives the GPU more blocks when there are few tokens.
const GROUP_MIN_TOKENS: usize = 16;

/// `LLMQ_CUDA_GROUP_ATTENTION=0` keeps prompts on the per-head kernel (for comparison).
fn group_kernels_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LLMQ_CUDA_GROUP_ATTENTION").map_or(true, |v| v != "0"))
}

/// Keys per tile (`ATT_TILE` in `kernels/attention.cu`).
const TILE: usize = 128;
const THREADS: u32 = 128;

/// The kernel's geometry for one call.
struct Geometry {
    n_head: usize,
    n_head_kv: usize,
    /// query (and key) widths: main part and second part (MLA's rope)
    da: usize,
    db: usize,
    dv: usize,
    k_stride: usize,
    v_stride: usize,
    scale: f32,
    window: Option<usize>,
}

/// Device address of per-head sink logits, 0 for none.
fn sinks_ptr(be: &Cuda, sinks: Option<&CudaBuf>) -> u64 {
    sinks.map_or(0, |b| b.ptr_at(be.stream(), 0))
}

#[allow(clippy::too_many_arguments)]
fn run(
    be: &Cuda,
    qa: &CudaBuf,
    qb: &CudaBuf,
    k_bufs: &[&CudaBuf],
    v_bufs: &[&CudaBuf],
    tokens: TokenMap<'_>,
    g: &Geometry,
    sinks: u64,
) -> CudaBuf {
    let n = tokens.len();
    let out = be.buf(n * g.n_head * g.dv);
    if n == 0 || g.n_head == 0 {
        return out;
    }
    let s = be.stream();
    let kp: Vec<u64> = tokens.seq.iter().map(|&q| k_bufs[q].ptr_at(s, 0)).collect();
    let vp: Vec<u64> = tokens.seq.iter().map(|&q| v_bufs[q].ptr_at(s, 0)).collect();
    let kp = be.cached(&kp);
    let vp = be.cached(&vp);
    let pos: Vec<i32> = tokens.pos.iter().map(|&p| p as i32).collect();
    let pos = be.cached(&pos);
    let cfg = LaunchConfig {
        grid_dim: (g.n_head as u32, n as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: ((g.da + g.db + TILE + g.dv) * 4) as u32,
    };
    let (nh, nkv, da, db, dv) = (
        g.n_head as i32,
        g.n_head_kv as i32,
        g.da as i32,
        g.db as i32,
        g.dv as i32,
    );
    let (ks, vs) = (g.k_stride as i32, g.v_stride as i32);
    let window = g.window.map_or(0, |w| w as i32);
    let group = g.n_head / g.n_head_kv.max(1);
    if g.db == 0 && n >= GROUP_MIN_TOKENS && matches!(group, 2 | 4 | 8) && group_kernels_on() {
        // a prompt: one block per (KV head, token) reads each key and value row once for
        // the whole query group
        let cfg = LaunchConfig {
            grid_dim: (g.n_head_kv as u32, n as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: (group * (g.da + TILE + g.dv) * 4) as u32,
        };
        launch!(
            be,
            &format!("attention_g{group}"),
            cfg,
            &qa.data,
            &*kp,
            &*vp,
            &*pos,
            &out.data,
            &nh,
            &nkv,
            &da,
            &dv,
            &ks,
            &vs,
            &g.scale,
            &window,
            &sinks,
        );
        return out;
    }
    launch!(
        be,
        "attention",
        cfg,
        &qa.data,
        &qb.data,
        &*kp,
        &*vp,
        &*pos,
        &out.data,
        &nh,
        &nkv,
        &da,
        &db,
        &dv,
        &ks,
        &vs,
        &g.scale,
        &window,
        &sinks,
    );
    out
}

/// Standard / grouped-query attention: `[tokens, n_head * head_dim_v]`.
pub(super) fn standard(
    be: &Cuda,
    q: &CudaBuf,
    caches: &[KvView<'_, Cuda>],
    tokens: TokenMap<'_>,
    s: &AttnShape,
    sinks: Option<&CudaBuf>,
) -> CudaBuf {
    let k: Vec<&CudaBuf> = caches.iter().map(|c| c.k).collect();
    let v: Vec<&CudaBuf> = caches.iter().map(|c| c.v).collect();
    let g = Geometry {
        n_head: s.n_head,
        n_head_kv: s.n_head_kv,
        da: s.head_dim_k,
        db: 0,
        dv: s.head_dim_v,
        k_stride: s.n_head_kv * s.head_dim_k,
        v_stride: s.n_head_kv * s.head_dim_v,
        scale: s.scale,
        window: s.window,
    };
    run(be, q, q, &k, &v, tokens, &g, sinks_ptr(be, sinks))
}

/// Absorbed MLA: `[tokens * n_head, kv_lora_rank]`.
pub(super) fn mla(
    be: &Cuda,
    q_lat: &CudaBuf,
    q_rope: &CudaBuf,
    caches: &[&CudaBuf],
    tokens: TokenMap<'_>,
    s: &MlaShape,
) -> CudaBuf {
    let kw = s.kv_lora_rank + s.qk_rope;
    let g = Geometry {
        n_head: s.n_head,
        n_head_kv: 1,
        da: s.kv_lora_rank,
        db: s.qk_rope,
        dv: s.kv_lora_rank,
        k_stride: kw,
        v_stride: kw,
        scale: s.scale,
        window: s.window,
    };
    run(be, q_lat, q_rope, caches, caches, tokens, &g, 0)
}
