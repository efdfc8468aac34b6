//! Matrix products for the forward pass, computed from weights in their stored GGML type.
//!
//! `matmul(w, x, n, y)`: `y[t][r] = Σ_c x[t][c] · W[r][c]` for `n` activation rows `x`
//! (`n × w.cols`, row-major) and the `[rows, cols]` weight `w`; `y` is `n × w.rows`.
//! This is the only entry point model code uses, so a GPU backend can replace it.
//!
//! As in llama.cpp's ggml-cpu, quantized weights are never dequantized on the hot path:
//! each activation row is quantized once per call to the weight type's `vec_dot_type`
//! (Q8_0, Q8_1 or Q8_K, [`act_quant`]) and integer dot products run straight on the
//! packed blocks ([`dot_legacy`], [`dot_kquants`]); float weights (F32/F16/BF16) are
//! widened on the fly ([`dot_float`]). Work is split over rayon in chunks of weight rows;
//! with several activation rows each weight row is unpacked once per 4 tokens, or once
//! per 8 for the legacy types in prompt processing, whose 8-row kernels read the
//! activations interleaved block by block (`dot_legacy::interleave8`) as one stream.
//! Where the CPU has AVX-512 (F, BW, VNNI; `LLMQ_KERNELS_NO_AVX512=1` switches it off),
//! prompts of 8 tokens or more run through register tiles instead (`tiled`): 4 weight
//! rows × 8 tokens for the signed 32-value types ([`tile_avx512`]: weights decoded once
//! per call, activations packed once), for Q2_K, Q3_K ([`tile_wide`]: each value times
//! its sub-block scale decoded once per call as an i16, `vpdpwssd`), and 16 rows × 8
//! tokens for Q4_K, Q5_K, Q6_K, IQ4_XS ([`tile_vnni`]: i8 values, `vpdpbusd`, one scale
//! multiply per sub-block);
//! decode uses [`gemv_legacy512`] for the signed 32-value types (four weight rows per
//! pass sharing the activation loads, one pass prefetched ahead into L2) and
//! [`dot_kquants_avx512`] for Q6_K and IQ4_XS. The other one-row products (decode)
//! prefetch the weight row two rows ahead: each row is read once, and the hardware
//! prefetcher alone left one thread at about 6 of its 8 GB/s of streaming reads.
//! Every multi-row and AVX-512 kernel does each output's float operations in the same
//! order as the AVX2 one-row kernel, so a row's result never depends on how many rows
//! share the call (nor on AVX2 against AVX-512). For Q4_K, Q5_K, Q6_K and IQ4_XS that
//! order is the scalar kernel's (exact integer sums per 256-value block, then one float
//! step per block, in block order), so all their kernels, scalar included, give the
//! same bits.
//!
//! Group-wise integer weights (GPTQ / AWQ / compressed-tensors, [`crate::int_blocks`])
//! run the same way against Q8_0 activations ([`dot_int`]), or against f32 activations
//! where their type asks for it (exact mode, blocks shorter than 32); act-order matrices
//! gather the activation columns by their stored column order first. Floating-point
//! coded weights (compressed-tensors NVFP4 / MXFP4 / FP8, [`crate::fp_blocks`]) run
//! against f32 activations, decoded in registers ([`dot_fp`]). A matrix stored under an
//! input rotation (MR-GPTQ, [`crate::rotation`]) gets its activations rotated first.
//!
//! Every kernel has a scalar version beside its AVX2/FMA/F16C one, chosen at run time
//! ([`Isa::detect`], `llmq_quant::isa`, the one place that detects CPU features; set
//! `LLMQ_KERNELS_SCALAR=1` to force the scalar path). Which kernel serves which type is
//! one table, [`KERNELS`]; types without a row there ([`has_fast_kernel`]) go through
//! [`matmul_reference`].

pub mod act_quant;
mod dispatch;
pub mod dot_float;
pub mod dot_fp;
pub mod dot_fp4;
pub mod dot_int;
pub mod dot_kquants;
#[cfg(target_arch = "x86_64")]
mod dot_kquants_avx2;
#[cfg(target_arch = "x86_64")]
mod dot_kquants_avx512;
pub mod dot_legacy;
#[cfg(target_arch = "x86_64")]
pub mod dot_legacy_avx512;
#[cfg(target_arch = "x86_64")]
pub mod gemv_legacy512;
mod reference;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_dot512;
#[cfg(test)]
mod tests_fp;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_gemv512;
#[cfg(target_arch = "x86_64")]
pub mod tile_avx512;
#[cfg(target_arch = "x86_64")]
pub mod tile_vnni;
#[cfg(target_arch = "x86_64")]
pub mod tile_wide;
#[cfg(target_arch = "x86_64")]
pub mod tile_wide_decode;
#[cfg(target_arch = "x86_64")]
mod tiled;

pub use crate::dequant::dequantize_row;
pub use dispatch::{KernelRow, FAST_TYPES, KERNELS};
pub use llmq_quant::isa::Isa;
pub use reference::matmul_reference;

use crate::tensor::{IntType, WeightMatrix, WeightType};
use act_quant::Act;
use dispatch::Kernel;
use llmq_formats::GgmlType;
use rayon::prelude::*;
use std::cell::Cell;

/// Whether `matmul` has a fast (packed-block) kernel for `ty`; other types run through
/// [`matmul_reference`].
pub fn has_fast_kernel(ty: GgmlType) -> bool {
    FAST_TYPES.contains(&ty)
}

/// `y = x · Wᵀ` for `n` rows of `x`.
pub fn matmul(w: &WeightMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    matmul_with_isa(w, x, n, y, Isa::detect())
}

/// [`matmul`] on a chosen instruction set (falls back to scalar where `isa` is not
/// available): lets tests compare the SIMD and scalar paths.
pub fn matmul_with_isa(w: &WeightMatrix, x: &[f32], n: usize, y: &mut [f32], isa: Isa) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n * cols, "matmul: x is not n x cols");
    assert_eq!(y.len(), n * rows, "matmul: y is not n x rows");
    let isa = if isa.available() { isa } else { Isa::Scalar };
    if w.trellis.is_some() {
        return crate::trellis::matmul_trellis(w, x, n, y);
    }
    if let Some(b) = w.input_rotation {
        // `W'·(R·x)`: the activations rotated once, then the stored rows
        let mut xr = x.to_vec();
        for row in xr.chunks_mut(cols) {
            crate::rotation::hadamard_blocks(row, b);
        }
        let mut stored = w.clone();
        stored.input_rotation = None;
        return matmul_with_isa(&stored, &xr, n, y, isa);
    }
    if let Some(order) = &w.col_order {
        return matmul_permuted(w, order, x, n, y, isa);
    }
    let k = match w.ty {
        WeightType::Ggml(ty) => dispatch::kernel(ty, isa),
        WeightType::Int(t) => dispatch::int_kernel(t, isa),
        WeightType::Fp(t) => dispatch::fp_kernel(t, isa),
        WeightType::Trellis(_) => None,
    };
    let Some(k) = k else {
        return match w.ty {
            WeightType::Int(t) => matmul_int_f32(w, t, x, n, y),
            WeightType::Ggml(_) | WeightType::Fp(_) | WeightType::Trellis(_) => {
                matmul_reference(w, x, n, y)
            }
        };
    };
    if n == 0 || rows == 0 {
        return;
    }
    if k.act == Act::F32 {
        return run(w, &k, bytemuck::cast_slice(x), cols * 4, n, y);
    }
    let rb = k.act.row_bytes(cols);
    // Activation scratch: taken out of the thread-local slot (so a nested call on the
    // same thread, e.g. from rayon work stealing, simply allocates its own).
    let mut buf = ACT_SCRATCH.with(Cell::take);
    buf.resize(n * rb, 0);
    if n >= 4 && n * cols >= 1 << 14 {
        buf.par_chunks_mut(rb)
            .zip(x.par_chunks(cols))
            .for_each(|(q, xr)| k.act.quantize(isa, xr, q));
    } else {
        for (q, xr) in buf.chunks_mut(rb).zip(x.chunks(cols)) {
            k.act.quantize(isa, xr, q);
        }
    }
    run(w, &k, &buf, rb, n, y);
    if buf.capacity() <= MAX_KEPT_SCRATCH {
        ACT_SCRATCH.with(|s| s.set(buf));
    }
}

/// Act-order weights: per run of rows sharing a column order, gather the activation
/// columns into stored order and multiply.
fn matmul_permuted(
    w: &WeightMatrix,
    order: &crate::tensor::ColumnOrder,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    isa: Isa,
) {
    let (rows, cols) = (w.rows, w.cols);
    let mut xp = vec![0.0f32; n * cols];
    for (r0, r1, perm) in order.segments(rows) {
        for (dst, src) in xp.chunks_mut(cols).zip(x.chunks(cols)) {
            for (d, &c) in dst.iter_mut().zip(perm) {
                *d = src[c as usize];
            }
        }
        let mut sub = w.row_range(r0, r1 - r0);
        sub.col_order = None;
        if r0 == 0 && r1 == rows {
            return matmul_with_isa(&sub, &xp, n, y, isa);
        }
        let m = r1 - r0;
        let mut ys = vec![0.0f32; n * m];
        matmul_with_isa(&sub, &xp, n, &mut ys, isa);
        for t in 0..n {
            y[t * rows + r0..t * rows + r1].copy_from_slice(&ys[t * m..(t + 1) * m]);
        }
    }
}

/// Integer weights against f32 activations (exact mode, or blocks shorter than 32).
fn matmul_int_f32(w: &WeightMatrix, t: IntType, x: &[f32], n: usize, y: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    if n == 0 || rows == 0 {
        return;
    }
    let block = t.block as usize;
    let out = OutPtr(y.as_mut_ptr());
    let threads = rayon::current_num_threads().max(1);
    let chunk = rows.div_ceil(threads * 4).clamp(1, 64);
    let body = |ci: usize| {
        for r in ci * chunk..((ci + 1) * chunk).min(rows) {
            let wr = w.row(r);
            for (tk, xr) in x.chunks(cols).enumerate() {
                let v = dot_int::dot_int_f32(t.bits, block, wr, xr);
                // SAFETY: (tk, r) is in bounds; row r belongs to this chunk only.
                unsafe { out.write(tk * rows + r, v) };
            }
        }
    };
    let n_chunks = rows.div_ceil(chunk);
    if threads == 1 || w.data.len() * n < PAR_MIN_WORK {
        (0..n_chunks).for_each(body);
    } else {
        (0..n_chunks).into_par_iter().for_each(body);
    }
}

thread_local! {
    static ACT_SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Larger activation buffers are freed after the call.
const MAX_KEPT_SCRATCH: usize = 64 << 20;

/// `y` shared by the tasks, each writing its own disjoint set of elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// # Safety
    /// `i` in bounds and written by one task only.
    #[inline]
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

/// Below this many weight bytes × tokens a call runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 16;

/// The row-chunked product over packed activations `acts` (`n` rows of `rb` bytes).
fn run(w: &WeightMatrix, k: &Kernel, acts: &[u8], rb: usize, n: usize, y: &mut [f32]) {
    let rows = w.rows;
    let wrb = w.row_bytes();
    let data = w.data.as_slice();
    let wrow = |r: usize| &data[r * wrb..(r + 1) * wrb];
    let threads = rayon::current_num_threads().max(1);
    // Decode: a few chunks per thread for balance. Prompts: 16 weight rows stay in cache
    // while every activation row streams past them.
    let chunk = if n < 4 {
        rows.div_ceil(threads * 4).clamp(1, 256)
    } else {
        16.min(rows.div_ceil(threads * 4)).max(1)
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(tile) = k.tile.filter(|_| n >= tiled::GROUP) {
        return tiled::run(w, k, tile, acts, rb, n, y);
    }
    let n_chunks = rows.div_ceil(chunk);
    let out = OutPtr(y.as_mut_ptr());
    let packed8 = match k.dot8 {
        Some(_) if n >= 8 => Some(dot_legacy::interleave8(acts, rb, n, k.act == Act::Q8_1)),
        _ => None,
    };
    let body = |ci: usize| {
        let (r0, r1) = (ci * chunk, ((ci + 1) * chunk).min(rows));
        let mut t = 0;
        if let (Some(dot8), Some(packed)) = (k.dot8, &packed8) {
            let gbytes = packed.len() / (n / 8);
            while t + 8 <= n {
                let a = &packed[t / 8 * gbytes..(t / 8 + 1) * gbytes];
                for r in r0..r1 {
                    let v = dot8(wrow(r), a);
                    for (i, v) in v.into_iter().enumerate() {
                        // SAFETY: (t + i, r) is in bounds; row r belongs to this chunk only.
                        unsafe { out.write((t + i) * rows + r, v) };
                    }
                }
                t += 8;
            }
        }
        tail(w, k, acts, rb, t, n, r0, r1, out);
    };
    if threads == 1 || n_chunks == 1 || data.len() * n < PAR_MIN_WORK {
        (0..n_chunks).for_each(body);
    } else {
        (0..n_chunks).into_par_iter().for_each(body);
    }
}

/// Tokens `t0..n` of rows `r0..r1` with the 4-row and 1-row kernels.
#[allow(clippy::too_many_arguments)]
fn tail(
    w: &WeightMatrix,
    k: &Kernel,
    acts: &[u8],
    rb: usize,
    t0: usize,
    n: usize,
    r0: usize,
    r1: usize,
    out: OutPtr,
) {
    let rows = w.rows;
    let act = |t: usize| &acts[t * rb..(t + 1) * rb];
    let mut t = t0;
    if let Some(dot4) = k.dot4 {
        while t + 4 <= n {
            let a = [act(t), act(t + 1), act(t + 2), act(t + 3)];
            for r in r0..r1 {
                let v = dot4(w.row(r), a);
                for (i, v) in v.into_iter().enumerate() {
                    // SAFETY: (t + i, r) is in bounds; row r belongs to this chunk only.
                    unsafe { out.write((t + i) * rows + r, v) };
                }
            }
            t += 4;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(gemv), 1) = (k.gemv, n - t) {
        // SAFETY: rows r0..r1 of token t belong to this chunk only.
        let y = unsafe { std::slice::from_raw_parts_mut(out.0.add(t * rows + r0), r1 - r0) };
        let wrb = w.row_bytes();
        // the rows to the matrix's end: the prefetches may run past this chunk
        gemv(&w.data.as_slice()[r0 * wrb..], wrb, act(t), y);
        return;
    }
    for t in t..n {
        let a = act(t);
        for r in r0..r1 {
            if n == 1 && r + 2 < r1 {
                prefetch(w.row(r + 2));
            }
            // SAFETY: as above.
            unsafe { out.write(t * rows + r, (k.dot)(w.row(r), a)) };
        }
    }
}

/// Asks for every cache line of `bytes` ahead of use (decode streams each weight row
/// once; the hardware prefetcher alone leaves one thread short of the read bandwidth).
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch of an address inside `bytes` (never faults either way).
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                bytes.as_ptr().add(off) as *const i8,
            )
        };
    }
}
