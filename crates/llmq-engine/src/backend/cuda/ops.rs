//! [`Backend`] for [`Cuda`]: each operation is one or a few kernel launches on the
//! backend's stream (`kernels/elementwise.cu`, `kernels/gemv.cu`); index lists the
//! model passes on the host (token ids, positions, routed rows) are copied up per call.

use super::buffers::{CudaBuf, Dev};
use super::tensor_core::TensorCore;
use super::weights::{self, ActRound, CudaWeight};
use super::{attention, unsupported, Cuda};
use crate::backend::api::{
    Activation, AttnShape, Backend, KvView, MlaShape, Rope, Routing, TokenMap,
};
use crate::error::Result;
use crate::hparams::{MoeParams, RopeKind};
use cudarc::driver::{CudaSlice, LaunchConfig};
use llmq_kernels::WeightMatrix;
use std::borrow::Cow;
use std::ops::Range;

/// Threads per block of the element-wise kernels.
const THREADS: u32 = 256;
/// Matches `GEMV_WARPS` / `GEMV_NB` in `kernels/gemv.cu` (and `GQ_WARPS` / the wide
/// `gemvq8_*` kernels in `kernels/gemvq.cu`).
const GEMV_WARPS: usize = 4;
const GEMV_NB: usize = 8;

/// A grid-stride launch over `n` elements.
pub(super) fn flat(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch kernel `$name` of `$be` with `$cfg` and the arguments that follow (device
/// buffers and scalars; see `record::KArg`), or record the launch (`step`). The
/// arguments must match the kernel's signature in `kernels/`, and every index the kernel
/// forms must stay inside the buffers passed (checked by callers).
macro_rules! launch {
    ($be:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let mut a = $crate::backend::cuda::record::Args::new();
        $( a.push($arg); )+
        $be.launch_args($name, $cfg, &a);
    }};
}
pub(super) use launch;

/// Activations packed for the integer kernels: int8 values, a scale per 32, a sum per 16,
/// and Q8_1's f16 block sum per 32 (one unread value for the other roundings).
struct PackedAct {
    qx: Dev<i8>,
    dx: Dev<f32>,
    sx: Dev<i32>,
    s1: Dev<f32>,
}

impl Cuda {
    /// `x` (`len` values) rounded as the CPU engine rounds the activations of a
    /// weight with rounding `act`; `None` for f32.
    pub(super) fn round_activations(
        &self,
        act: ActRound,
        x: &CudaBuf,
        len: usize,
    ) -> Option<CudaBuf> {
        if act == ActRound::F32 || len == 0 {
            return None;
        }
        let y = self.buf(len);
        match act {
            // Q8_1's values are Q8_0's (its block sum only enters the integer kernels)
            ActRound::Q8_0 | ActRound::Q8_1 => {
                let blocks = (len / 32) as u64;
                launch!(self, "act_q8_0", flat(len), &x.data, &y.data, &blocks);
            }
            ActRound::Q8K => {
                let cfg = LaunchConfig {
                    grid_dim: ((len / 256) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch!(self, "act_q8_k", cfg, &x.data, &y.data);
            }
            ActRound::F32 => unreachable!("returned above"),
        }
        Some(y)
    }

    /// `x` packed to int8 as the CPU rounds it for `w`'s type (`kernels/gemvq.cu`).
    fn pack_activations(&self, w: &CudaWeight, x: &CudaBuf, n: usize) -> PackedAct {
        let len = n * w.cols;
        // the packing kernels write every value before the GEMV reads it
        let s1_len = if w.act == ActRound::Q8_1 { len / 32 } else { 1 };
        let (qx, dx, sx, s1) = (
            self.dev::<i8>(len),
            self.dev::<f32>(len / 32),
            self.dev::<i32>(len / 16),
            self.dev::<f32>(s1_len),
        );
        match w.act {
            ActRound::Q8_0 => {
                let blocks = (len / 32) as u64;
                launch!(
                    self,
                    "act_pack_q8_0",
                    flat(len),
                    &x.data,
                    &qx,
                    &dx,
                    &sx,
                    &blocks
                );
            }
            ActRound::Q8K => {
                let cfg = LaunchConfig {
                    grid_dim: ((len / 256) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch!(self, "act_pack_q8_k", cfg, &x.data, &qx, &dx, &sx);
            }
            ActRound::Q8_1 => {
                let blocks = (len / 32) as u64;
                launch!(
                    self,
                    "act_pack_q8_1",
                    flat(len),
                    &x.data,
                    &qx,
                    &dx,
                    &sx,
                    &s1,
                    &blocks
                );
            }
            ActRound::F32 => unreachable!("integer kernels are for quantized weights"),
        }
        PackedAct { qx, dx, sx, s1 }
    }

    /// `y = x · Wᵀ` by `gemvq1_*` (one activation row) or `gemvq8_*` over packed `a`.
    fn gemv_int(&self, w: &CudaWeight, a: &PackedAct, n: usize, y: &CudaBuf) {
        let nb = if n == 1 { 1 } else { GEMV_NB };
        let cfg = LaunchConfig {
            grid_dim: (w.rows.div_ceil(GEMV_WARPS) as u32, n.div_ceil(nb) as u32, 1),
            block_dim: (32 * GEMV_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rb, rows, cols, nn) = (w.row_bytes as u64, w.rows as i32, w.cols as i32, n as i32);
        let name = format!("gemvq{nb}_{}", w.kernel);
        let (qx, dx, sx, s1) = (&a.qx, &a.dx, &a.sx, &a.s1);
        launch!(self, &name, cfg, &*w.data, &rb, &rows, &cols, qx, dx, sx, s1, &y.data, &nn);
    }

    /// `y = x · Wᵀ` by the float kernel `gemv_*` (x already rounded), or `gemv1_*` for
    /// one row where the type has it.
    fn gemv_float(&self, w: &CudaWeight, x: &CudaBuf, n: usize, y: &CudaBuf) {
        let cfg = LaunchConfig {
            grid_dim: (
                w.rows.div_ceil(GEMV_WARPS) as u32,
                n.div_ceil(GEMV_NB) as u32,
                1,
            ),
            block_dim: (32 * GEMV_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rb, rows, cols, nn) = (w.row_bytes as u64, w.rows as i32, w.cols as i32, n as i32);
        let one = n == 1 && weights::GEMV1_KERNELS.contains(&w.kernel);
        let name = format!("gemv{}_{}", if one { "1" } else { "" }, w.kernel);
        launch!(self, &name, cfg, &*w.data, &rb, &rows, &cols, &x.data, &y.data, &nn);
    }

    /// Mean seconds of the weight product kernel alone over `iters` back-to-back
    /// launches (activations rounded or packed once before; for GEMV timings).
    /// EXL3 weights: the trellis GEMV alone (`gemv_exl3_*`, on rotated activations).
    pub fn time_matmul(&self, w: &CudaWeight, x: &CudaBuf, n: usize, iters: usize) -> Result<f64> {
        let y = self.buf(n * w.rows);
        if let Some(e) = &w.exl3 {
            let xh = self.exl3_rotate_in(e, x, n, w.cols);
            let run = || self.exl3_gemv(&w.data, e, &xh, n, (w.rows, w.cols), &y);
            run();
            self.synchronize()?;
            let t0 = std::time::Instant::now();
            for _ in 0..iters {
                run();
            }
            self.synchronize()?;
            return Ok(t0.elapsed().as_secs_f64() / iters.max(1) as f64);
        }
        let packed = w.int_dot.then(|| self.pack_activations(w, x, n));
        let rounded = if w.int_dot {
            None
        } else {
            self.round_activations(w.act, x, n * w.cols)
        };
        let xr = rounded.as_ref().unwrap_or(x);
        let run = || match &packed {
            Some(a) => self.gemv_int(w, a, n, &y),
            None => self.gemv_float(w, xr, n, &y),
        };
        run();
        self.synchronize()?;
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            run();
        }
        self.synchronize()?;
        Ok(t0.elapsed().as_secs_f64() / iters.max(1) as f64)
    }

    /// `b`'s values on the host (traced as `download`), after the recorded work;
    /// `midway`: the step goes on after this read.
    fn fetch(&self, b: &CudaBuf, midway: bool) -> Vec<f32> {
        self.flush_recorded(midway);
        let t = self.trace_start();
        let v = b.to_vec(self.stream());
        self.stream_synced();
        self.trace_end("download", t);
        v
    }

    /// `x`'s `n` rows with their columns gathered into the stored order `perm`.
    pub(super) fn permute_cols(
        &self,
        x: &CudaBuf,
        perm: &CudaSlice<i32>,
        n: usize,
        cols: usize,
    ) -> CudaBuf {
        let y = self.buf(n * cols);
        let (rows, width) = (n as u64, cols as i32);
        launch!(
            self,
            "permute_cols",
            flat(n * cols),
            &x.data,
            &y.data,
            perm,
            &rows,
            &width
        );
        y
    }

    /// `y = x · Wᵀ` by the GEMV kernels (integer where the type has one).
    fn matmul_gemv(&self, w: &CudaWeight, x: &CudaBuf, n: usize, y: &CudaBuf) {
        if w.int_dot {
            let a = self.pack_activations(w, x, n);
            self.gemv_int(w, &a, n, y);
        } else {
            let rounded = self.round_activations(w.act, x, n * w.cols);
            self.gemv_float(w, rounded.as_ref().unwrap_or(x), n, y);
        }
    }

    /// The kernels' activation code and its two parameters (clamped SwiGLU's).
    fn act_id(act: Activation) -> (i32, f32, f32) {
        match act {
            Activation::Silu => (0, 0.0, 0.0),
            Activation::GeluTanh => (1, 0.0, 0.0),
            Activation::ClampedSwiglu { alpha, limit } => (2, alpha, limit),
        }
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;
    type Weight = CudaWeight;

    fn upload(&self, v: Vec<f32>) -> CudaBuf {
        CudaBuf {
            data: self.put(&v),
            len: v.len(),
            max: v.len(),
        }
    }

    fn zeros(&self, n: usize) -> CudaBuf {
        self.buf_zeroed(n)
    }

    fn len(&self, b: &CudaBuf) -> usize {
        b.len
    }

    fn to_host<'a>(&self, b: &'a CudaBuf) -> Cow<'a, [f32]> {
        Cow::Owned(self.fetch(b, true))
    }

    fn download(&self, b: CudaBuf) -> Vec<f32> {
        self.fetch(&b, false)
    }

    fn begin_step(&self, tokens: usize, seqs: usize) {
        self.begin_recorded_step(tokens, seqs);
    }

    fn end_step(&self) {
        self.end_recorded_step();
    }

    fn check_weight(&self, name: &str, w: &WeightMatrix) -> Result<()> {
        match unsupported(name, w) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn device_name(&self) -> String {
        self.describe()
    }

    fn copy_rate(&self) -> Option<f64> {
        self.copy_bandwidth(1 << 28, 5).ok()
    }

    fn free_memory(&self) -> Option<u64> {
        let free = self.memory().ok()?.0 as u64;
        // LLMQ_GPU_MEMORY_GB caps what this process plans to use (a shared GPU)
        let cap = std::env::var("LLMQ_GPU_MEMORY_GB")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|g| *g > 0.0)
            .map(|g| (g * 1e9) as u64);
        Some(cap.map_or(free, |c| c.min(free)))
    }

    fn set_exact_products(&self, exact: bool) {
        self.set_tensor_core_prompts(!exact);
    }

    fn upload_weight(&self, w: WeightMatrix) -> CudaWeight {
        let mut cw = weights::upload(self.stream(), &w);
        cw.exl3 = self.exl3_upload(&w);
        cw
    }

    fn cache_buf(&self, max_rows: usize, width: usize) -> CudaBuf {
        let mut b = CudaBuf::zeros(self.stream(), 0);
        b.max = max_rows * width;
        b
    }

    fn append_rows(&self, dst: &mut CudaBuf, src: &CudaBuf, width: usize, rows: Range<usize>) {
        self.append_values(dst, src, rows.start * width, rows.len() * width);
    }

    fn truncate_rows(&self, b: &mut CudaBuf, width: usize, rows: usize) {
        b.len = b.len.min(rows * width);
    }

    fn gather_rows(&self, x: &CudaBuf, width: usize, rows: &[usize]) -> CudaBuf {
        let out = self.buf(rows.len() * width);
        if out.len > 0 {
            let idx = self.upload_i32(rows.iter().copied());
            let (n, w) = (rows.len() as i32, width as i32);
            launch!(
                self,
                "gather_rows",
                flat(out.len),
                &x.data,
                &idx,
                &out.data,
                &n,
                &w
            );
        }
        out
    }

    fn slice_cols(&self, x: &CudaBuf, width: usize, start: usize, len: usize) -> CudaBuf {
        let rows = x.len / width.max(1);
        let out = self.buf(rows * len);
        if out.len > 0 {
            let (r, w, s, l) = (rows as u64, width as i32, start as i32, len as i32);
            launch!(
                self,
                "slice_cols",
                flat(out.len),
                &x.data,
                &out.data,
                &r,
                &w,
                &s,
                &l
            );
        }
        out
    }

    fn write_cols(
        &self,
        dst: &mut CudaBuf,
        width: usize,
        start: usize,
        src: &CudaBuf,
        src_width: usize,
    ) {
        if src.len == 0 {
            return;
        }
        let rows = src.len / src_width;
        let (r, w, s, sw) = (rows as u64, width as i32, start as i32, src_width as i32);
        launch!(
            self,
            "write_cols",
            flat(src.len),
            &mut dst.data,
            &src.data,
            &r,
            &w,
            &s,
            &sw
        );
    }

    fn concat_cols(&self, a: &CudaBuf, wa: usize, b: &CudaBuf, wb: usize) -> CudaBuf {
        let rows = a.len / wa.max(1);
        let out = self.buf(rows * (wa + wb));
        if out.len > 0 {
            let (ia, ib, r) = (wa as i32, wb as i32, rows as u64);
            launch!(
                self,
                "concat_cols",
                flat(out.len),
                &a.data,
                &ia,
                &b.data,
                &ib,
                &out.data,
                &r
            );
        }
        out
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32], scale: Option<f32>) -> CudaBuf {
        let out = self.buf(ids.len() * table.cols);
        if out.len > 0 {
            let idx = self.upload_i32(ids.iter().map(|&i| i as usize));
            let cfg = LaunchConfig {
                grid_dim: (ids.len() as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let (rb, cols, s) = (
                table.row_bytes as u64,
                table.cols as i32,
                scale.unwrap_or(1.0),
            );
            let name = format!("embed_{}", table.kernel);
            launch!(
                self,
                &name,
                cfg,
                &*table.data,
                &rb,
                &cols,
                &idx,
                &out.data,
                &s
            );
        }
        out
    }

    fn matmul(&self, w: &CudaWeight, x: &CudaBuf, n: usize) -> CudaBuf {
        let mut y = self.buf(n * w.rows);
        if y.len == 0 {
            return y;
        }
        if let Some(e) = &w.exl3 {
            // EXL3: rotate in, decode-in-registers GEMV, rotate out (`exl3.rs`)
            let xh = self.exl3_rotate_in(e, x, n, w.cols);
            self.exl3_gemv(&w.data, e, &xh, n, (w.rows, w.cols), &y);
            return self.exl3_rotate_out(e, y, n, w.rows);
        }
        let rotated = w.rotation.map(|b| self.rotate_blocks(x, n, w.cols, b));
        let x = rotated.as_ref().unwrap_or(x);
        let permuted = w.perm.as_ref().map(|p| self.permute_cols(x, p, n, w.cols));
        let x = permuted.as_ref().unwrap_or(x);
        match &self.inner.tensor_core {
            Some(tc) if TensorCore::takes(w, n) && self.tensor_core_prompts() => {
                tc.matmul(self, w, x, n, &mut y)
            }
            _ => self.matmul_gemv(w, x, n, &y),
        }
        y
    }

    fn matmul_each(&self, ws: &[&CudaWeight], x: &CudaBuf, n: usize) -> Vec<CudaBuf> {
        // one packing of x for every integer product that rounds it the same way (the
        // GEMV path; the tensor-core path rounds per product)
        let Some(first) = ws.first() else {
            return Vec::new();
        };
        let tensor_cores = self.tensor_core_prompts() && ws.iter().any(|w| TensorCore::takes(w, n));
        let shared = ws.len() > 1
            && !tensor_cores
            && n > 0
            && ws.iter().all(|w| {
                w.int_dot
                    && w.act == first.act
                    && w.cols == first.cols
                    && w.perm.is_none()
                    && w.rotation.is_none()
            });
        if !shared {
            return ws.iter().map(|w| self.matmul(w, x, n)).collect();
        }
        let a = self.pack_activations(first, x, n);
        ws.iter()
            .map(|w| {
                let y = self.buf(n * w.rows);
                if y.len > 0 {
                    self.gemv_int(w, &a, n, &y);
                }
                y
            })
            .collect()
    }

    fn rms_norm(&self, x: &CudaBuf, w: &CudaBuf, eps: f32) -> CudaBuf {
        let y = self.buf(x.len);
        rms_norm_into(self, x, w, &y, eps);
        y
    }

    fn rms_norm_inplace(&self, x: &mut CudaBuf, w: &CudaBuf, eps: f32) {
        rms_norm_into(self, x, w, x, eps);
    }

    fn add_bias(&self, x: &mut CudaBuf, b: &CudaBuf) {
        if x.len > 0 {
            let (n, w) = (x.len as u64, b.len as i32);
            launch!(self, "add_bias", flat(x.len), &mut x.data, &b.data, &n, &w);
        }
    }

    fn add_assign(&self, x: &mut CudaBuf, y: &CudaBuf) {
        if x.len > 0 {
            let n = x.len as u64;
            launch!(self, "add_assign", flat(x.len), &mut x.data, &y.data, &n);
        }
    }

    fn rope(&self, xs: &mut [&mut CudaBuf], head_dim: usize, pos: &[usize], rope: Rope) {
        if pos.is_empty() {
            return;
        }
        let p: Vec<i32> = pos.iter().map(|&x| x as i32).collect();
        let p = self.cached(&p);
        // per-pair frequency divisors (all 1 without llama3 / LongRoPE factors)
        let factors: Vec<f32> = match rope.freq_factors {
            Some(f) => f[..rope.n_rot / 2].to_vec(),
            None => vec![1.0; (rope.n_rot / 2).max(1)],
        };
        let ff = self.cached(&factors);
        let attn = rope.attn_factor;
        let kind: i32 = match rope.kind {
            RopeKind::Norm => 0,
            RopeKind::Neox => 1,
        };
        for x in xs.iter_mut() {
            let width = x.len / pos.len();
            let pairs = pos.len() * (width / head_dim) * (rope.n_rot / 2);
            if pairs == 0 {
                continue;
            }
            let (nt, w, hd, nr) = (
                pos.len() as i32,
                width as i32,
                head_dim as i32,
                rope.n_rot as i32,
            );
            let (base, scale) = (rope.base as f64, rope.scale as f64);
            launch!(
                self,
                "rope",
                flat(pairs),
                &mut x.data,
                &*p,
                &nt,
                &w,
                &hd,
                &nr,
                &base,
                &scale,
                &kind,
                &*ff,
                &attn
            );
        }
    }

    fn glu(&self, mut gate: CudaBuf, up: &CudaBuf, act: Activation) -> CudaBuf {
        if gate.len > 0 {
            let (n, (a, alpha, limit)) = (gate.len as u64, Cuda::act_id(act));
            launch!(
                self,
                "glu",
                flat(gate.len),
                &mut gate.data,
                &up.data,
                &n,
                &a,
                &alpha,
                &limit
            );
        }
        gate
    }

    fn glu_fused(&self, gate_up: &CudaBuf, ff: usize, act: Activation) -> CudaBuf {
        let h = self.buf(gate_up.len / 2);
        if h.len > 0 {
            let (n, f, (a, alpha, limit)) = (h.len as u64, ff as i32, Cuda::act_id(act));
            launch!(
                self,
                "glu_fused",
                flat(h.len),
                &gate_up.data,
                &h.data,
                &n,
                &f,
                &a,
                &alpha,
                &limit
            );
        }
        h
    }

    fn softcap(&self, x: &mut CudaBuf, cap: f32) {
        if x.len > 0 {
            let n = x.len as u64;
            launch!(self, "softcap", flat(x.len), &mut x.data, &n, &cap);
        }
    }

    fn scatter_add_rows(
        &self,
        dst: &mut CudaBuf,
        width: usize,
        src: &CudaBuf,
        rows: &[(usize, f32)],
    ) {
        if rows.is_empty() {
            return;
        }
        let tok = self.upload_i32(rows.iter().map(|r| r.0));
        let wts: Vec<f32> = rows.iter().map(|r| r.1).collect();
        let wts = self.put(&wts);
        let (n, w) = (rows.len() as i32, width as i32);
        let cfg = flat(rows.len() * width);
        launch!(
            self,
            "scatter_add_rows",
            cfg,
            &mut dst.data,
            &src.data,
            &tok,
            &wts,
            &n,
            &w
        );
    }

    fn route(&self, logits: &CudaBuf, bias: Option<&CudaBuf>, p: &MoeParams) -> Routing {
        let l = self.fetch(logits, true);
        let b = bias.map(|b| self.fetch(b, true));
        let mut assigned: Routing = vec![Vec::new(); p.n_expert];
        for (t, row) in l.chunks(p.n_expert).enumerate() {
            for (e, w) in crate::routing::route(row, b.as_deref(), p) {
                assigned[e].push((t, w));
            }
        }
        assigned
    }

    fn attention(
        &self,
        q: &CudaBuf,
        caches: &[KvView<'_, Self>],
        tokens: TokenMap<'_>,
        shape: &AttnShape,
        sinks: Option<&CudaBuf>,
    ) -> CudaBuf {
        attention::standard(self, q, caches, tokens, shape, sinks)
    }

    fn mla_attention(
        &self,
        q_lat: &CudaBuf,
        q_rope: &CudaBuf,
        caches: &[&CudaBuf],
        tokens: TokenMap<'_>,
        shape: &MlaShape,
    ) -> CudaBuf {
        attention::mla(self, q_lat, q_rope, caches, tokens, shape)
    }
}

/// RMSNorm of every `w.len`-wide row of `x` into `y` (which may be `x`).
fn rms_norm_into(be: &Cuda, x: &CudaBuf, w: &CudaBuf, y: &CudaBuf, eps: f32) {
    let rows = x.len / w.len.max(1);
    if rows == 0 {
        return;
    }
    // wide rows get more threads: a decode step's row is one block
    let threads = if w.len >= 2048 { 1024 } else { THREADS };
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let width = w.len as i32;
    launch!(be, "rms_norm", cfg, &x.data, &w.data, &y.data, &width, &eps);
}
