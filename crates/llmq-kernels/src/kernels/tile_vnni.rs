//! Tiled GEMM on `vpdpbusd` (AVX-512 F/BW/VNNI) for prompt processing of Q4_K, Q5_K,
//! Q6_K and IQ4_XS (llama.cpp `ggml-common.h` layouts) against Q8_K activations: 16
//! weight rows × 8 tokens per register tile.
//!
//! Every kernel of these types computes one formulation, the scalar reference's
//! ([`super::dot_kquants`], as ggml's generic `ggml_vec_dot_q4_K_q8_K`,
//! `ggml_vec_dot_q6_K_q8_K` and `ggml_vec_dot_iq4_xs_q8_K`): per 256-value block the
//! exact integer `isum = Σ_sub-blocks scale·Σ q·a` (sub-blocks of 32 values, of 16 for
//! Q6_K, whose `q` is `q6 − 32`; and Q4_K/Q5_K's `msum = Σ_j mins_j·bsums_j`), then
//! one float step `sum += d_a·d·isum − d_a·dmin·msum` per block, in block order. Integer
//! sums are exact in any order, so this tile computes them its own way and still gives
//! each (row, token) the bits of the one-row kernels (`dot_kquants_avx2`,
//! `dot_kquants_avx512`): a token's result never depends on what else is in the batch.
//!
//! The 16 i32 lanes hold 16 weight rows. Each row is decoded once per call ([`Decoded`])
//! to i8 values stored by groups of 4 values across the 16 rows of a panel (64 bytes),
//! so one `vpdpbusd` against a broadcast dword of 4 activations does 64 products. The
//! activations are packed once per call ([`pack`]) as `a + 128` (the unsigned operand of
//! `vpdpbusd`); the extra `128·Σ scale·q` of a block is a per-row constant that the
//! decoder computes and `isum` starts from its negative. Each sub-block's sums are
//! multiplied by the rows' sub-block scales (`vpmulld`) into `isum`; the mins go through
//! `vpdpwssd` against the pair sums of the activation `bsums`.

#![allow(unsafe_op_in_unsafe_fn)]

use super::act_quant::Q8_K_BYTES;
use super::dot_kquants::{scale_min_k4, scales_iq4_xs};
use super::dot_legacy::{h, IQ4NL_VALUES};
use super::simd::{load128, load256, nibbles_32};
use llmq_formats::blocks::{
    BlockIq4Xs as Iq4Xs, BlockQ4K as Q4K, BlockQ5K as Q5K, BlockQ6K as Q6K, BlockQ8K,
};
use std::arch::x86_64::*;

/// Tokens per tile.
pub const GROUP: usize = 8;
/// Weight rows per tile (one panel).
pub const ROWS: usize = 16;

// Decoded weights, per block of a 16-row panel.
/// i8 values: sub-block `c`, group `k` of 4 values, row `r` at `(8c + k)·64 + 4r`.
const DW: usize = 0;
/// i32 sub-block scales: sub-block `c` (of 8, or of 16 for Q6_K), row `r` at
/// `DSC + 64c + 4r`.
const DSC: usize = 4096;
/// i32 `−128·Σ scale·q` per row.
const DC: usize = DSC + 1024;
/// f32 `d` per row.
const DD: usize = DC + 64;
/// f32 `dmin` per row (Q4_K/Q5_K).
const DDMIN: usize = DD + 64;
/// i16 mins in pairs `(m_2p, m_2p+1)`: pair `p`, row `r` at `DMINS + 64p + 4r`.
const DMINS: usize = DDMIN + 64;
/// Bytes of one decoded block of a panel.
pub const DEC_BLOCK: usize = DMINS + 256;

// Packed activations, per block of an 8-token group.
/// `a + 128` (u8), token `t` at `AQ + 256t`, values in order.
const AQ: usize = 0;
/// f32 `d` per token.
const AD: usize = 8 * 256;
/// i16 pairs `(B_2p, B_2p+1)` with `B_j = bsums_2j + bsums_2j+1`: token `t`, pair `p`
/// at `AB + 16t + 4p`.
const AB: usize = AD + 32;
/// Bytes of one packed block of a group.
const A_BLOCK: usize = AB + 128;

/// One weight block decoded: values, sub-block scales, mins and float scales.
pub struct Block {
    /// The values as i8 bit patterns, in order.
    pub q: [u8; 256],
    /// Per sub-block of 32 values (the first 8), or of 16 (Q6_K).
    pub sc: [i32; 16],
    pub mins: [i16; 8],
    pub d: f32,
    pub dmin: f32,
}

/// Decodes one packed weight block.
pub type BlockDecodeFn = fn(&[u8], &mut Block);

/// A type's block decoder, whether it has mins and whether its sub-blocks are of 16
/// values.
#[derive(Clone, Copy)]
pub struct VnniType {
    pub decode: BlockDecodeFn,
    pub bytes: usize,
    pub mins: bool,
    pub sub16: bool,
}

#[inline(always)]
unsafe fn store(q: &mut [u8; 256], at: usize, v: __m256i) {
    _mm256_storeu_si256(q.as_mut_ptr().add(at) as *mut __m256i, v);
}

/// Q4_K/Q5_K values as the AVX2 kernel unpacks them (`dot_kquants_avx2::q45_k`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45(x: &[u8], b: &mut Block, five: bool) {
    let qs_off = if five { Q5K::QS.start } else { Q4K::QS.start };
    assert!(x.len() >= if five { Q5K::BYTES } else { Q4K::BYTES });
    let p = x.as_ptr();
    let m4 = _mm256_set1_epi8(0x0f);
    let m5 = _mm256_set1_epi8(0x10);
    let mut hbits = if five {
        load256(p.add(Q5K::QH.start))
    } else {
        _mm256_setzero_si256()
    };
    for j in 0..4 {
        let q = load256(p.add(qs_off + 32 * j));
        let mut lo = _mm256_and_si256(q, m4);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
        if five {
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(hbits), m5));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(hbits), m5));
            hbits = _mm256_srli_epi16::<2>(hbits);
        }
        store(&mut b.q, 64 * j, lo);
        store(&mut b.q, 64 * j + 32, hi);
    }
    let (sc, m) = scale_min_k4(&x[Q4K::SCALES]);
    for j in 0..8 {
        b.sc[j] = sc[j] as i32;
        b.mins[j] = m[j] as i16;
    }
    b.d = h(x, Q4K::D.start);
    b.dmin = h(x, Q4K::DMIN.start);
}

/// Q4_K block (`d·sc·q − dmin·m`, q in 0..16). Only handed out by the dispatcher when
/// AVX-512 and AVX2 were detected.
pub fn decode_q4_k(x: &[u8], b: &mut Block) {
    // SAFETY: see above.
    unsafe { q45(x, b, false) }
}

/// Q5_K block (q in 0..32). Only handed out by the dispatcher when AVX-512 and AVX2
/// were detected.
pub fn decode_q5_k(x: &[u8], b: &mut Block) {
    // SAFETY: see above.
    unsafe { q45(x, b, true) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs(x: &[u8], b: &mut Block) {
    assert!(x.len() >= Iq4Xs::BYTES);
    let table = _mm256_broadcastsi128_si256(load128(IQ4NL_VALUES.as_ptr() as *const u8));
    let ls = scales_iq4_xs(x);
    for (ib, (s, l)) in b.sc.iter_mut().zip(ls).enumerate() {
        let v = _mm256_shuffle_epi8(table, nibbles_32(x.as_ptr().add(Iq4Xs::QS.start + 16 * ib)));
        store(&mut b.q, 32 * ib, v);
        *s = l - 32;
    }
    b.mins = [0; 8];
    b.d = h(x, Iq4Xs::D.start);
    b.dmin = 0.0;
}

/// IQ4_XS block (`d·(ls − 32)·kvalues_iq4nl[nibble]`). Only handed out by the
/// dispatcher when AVX-512 and AVX2 were detected.
pub fn decode_iq4_xs(x: &[u8], b: &mut Block) {
    // SAFETY: see above.
    unsafe { iq4_xs(x, b) }
}

/// Q6_K values `q6 − 32` as the AVX2 kernel unpacks them (`dot_kquants_avx2::q6_k`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k(x: &[u8], b: &mut Block) {
    assert!(x.len() >= Q6K::BYTES);
    let p = x.as_ptr();
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x30);
    let o32 = _mm256_set1_epi8(32);
    for half in 0..2 {
        let ql0 = load256(p.add(Q6K::QL.start + 64 * half));
        let ql1 = load256(p.add(Q6K::QL.start + 64 * half + 32));
        let qh = load256(p.add(Q6K::QH.start + 32 * half));
        let u = [
            _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_and_si256(qh, m2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
            ),
        ];
        for (k, u) in u.into_iter().enumerate() {
            store(&mut b.q, 128 * half + 32 * k, _mm256_sub_epi8(u, o32));
        }
    }
    for (s, &v) in b.sc.iter_mut().zip(&x[Q6K::SCALES]) {
        *s = v as i8 as i32;
    }
    b.mins = [0; 8];
    b.d = h(x, Q6K::D.start);
    b.dmin = 0.0;
}

/// Q6_K block (`d·sc·(q6 − 32)`, 16 sub-blocks of 16). Only handed out by the
/// dispatcher when AVX-512 and AVX2 were detected.
pub fn decode_q6_k(x: &[u8], b: &mut Block) {
    // SAFETY: see above.
    unsafe { q6_k(x, b) }
}

/// Weight rows decoded into 16-row panels (rows past the last one are zero).
pub struct Decoded {
    nb: usize,
    q: Vec<u8>,
}

impl Decoded {
    /// Decodes `rows` (each `nb` blocks of `ty`).
    pub fn new<'a>(
        ty: VnniType,
        nb: usize,
        rows: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Decoded {
        let panels = rows.len().div_ceil(ROWS);
        // this thread's buffer from the last call: a fresh allocation of this size is
        // an `mmap` whose page faults cost more than zeroing
        let mut q = SPARE.with(|s| s.take());
        q.clear();
        q.resize(panels * nb * DEC_BLOCK, 0);
        let sub = if ty.sub16 { 16 } else { 32 };
        let mut b = Block {
            q: [0; 256],
            sc: [0; 16],
            mins: [0; 8],
            d: 0.0,
            dmin: 0.0,
        };
        for (ri, w) in rows.enumerate() {
            let (p, r) = (ri / ROWS, ri % ROWS);
            for i in 0..nb {
                (ty.decode)(&w[i * ty.bytes..(i + 1) * ty.bytes], &mut b);
                let o = &mut q[(p * nb + i) * DEC_BLOCK..][..DEC_BLOCK];
                let mut c = 0i32;
                for (k, v) in b.q.chunks_exact(4).enumerate() {
                    let at = DW + k * 64 + 4 * r;
                    o[at..at + 4].copy_from_slice(v);
                }
                for (sb, vals) in b.q.chunks_exact(sub).enumerate() {
                    let s: i32 = vals.iter().map(|&v| v as i8 as i32).sum();
                    c = c.wrapping_add(b.sc[sb].wrapping_mul(s));
                    let at = DSC + 64 * sb + 4 * r;
                    o[at..at + 4].copy_from_slice(&b.sc[sb].to_le_bytes());
                }
                let c = c.wrapping_mul(-128);
                o[DC + 4 * r..DC + 4 * r + 4].copy_from_slice(&c.to_le_bytes());
                o[DD + 4 * r..DD + 4 * r + 4].copy_from_slice(&b.d.to_le_bytes());
                o[DDMIN + 4 * r..DDMIN + 4 * r + 4].copy_from_slice(&b.dmin.to_le_bytes());
                for p2 in 0..4 {
                    let at = DMINS + 64 * p2 + 4 * r;
                    o[at..at + 2].copy_from_slice(&b.mins[2 * p2].to_le_bytes());
                    o[at + 2..at + 4].copy_from_slice(&b.mins[2 * p2 + 1].to_le_bytes());
                }
            }
        }
        Decoded { nb, q }
    }

    /// Number of 16-row panels.
    pub fn panels(&self) -> usize {
        self.q.len() / (self.nb * DEC_BLOCK).max(1)
    }
}

impl Drop for Decoded {
    fn drop(&mut self) {
        let q = std::mem::take(&mut self.q);
        SPARE.with(|s| s.set(q));
    }
}

thread_local! {
    /// The decoded rows' buffer of this thread's last [`Decoded`], for the next one.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Bytes of one packed 8-token group of `nb` blocks.
pub fn group_bytes(nb: usize) -> usize {
    nb * A_BLOCK
}

/// Decoded bytes per weight row of `nb` blocks.
pub fn decoded_row_bytes(nb: usize) -> usize {
    nb * DEC_BLOCK / ROWS
}

/// Packs the full 8-token groups of `n` Q8_K rows (`rb` bytes each).
pub fn pack(acts: &[u8], rb: usize, n: usize) -> Vec<u8> {
    let nb = rb / Q8_K_BYTES;
    super::tiled::pack_groups(acts, rb, n, GROUP, group_bytes(nb), |a, dst| {
        pack_group(a, rb, nb, dst)
    })
}

fn pack_group(acts: &[u8], rb: usize, nb: usize, dst: &mut [u8]) {
    for (b, blk) in dst.chunks_exact_mut(A_BLOCK).take(nb).enumerate() {
        for t in 0..GROUP {
            let src = &acts[t * rb + b * Q8_K_BYTES..][..Q8_K_BYTES];
            for (o, &v) in blk[AQ + 256 * t..AQ + 256 * t + 256]
                .iter_mut()
                .zip(&src[BlockQ8K::QS])
            {
                *o = v ^ 0x80;
            }
            blk[AD + 4 * t..AD + 4 * t + 4].copy_from_slice(&src[BlockQ8K::D]);
            let bs = &src[BlockQ8K::BSUMS];
            for j in 0..8 {
                let a = i16::from_le_bytes([bs[4 * j], bs[4 * j + 1]]);
                let c = i16::from_le_bytes([bs[4 * j + 2], bs[4 * j + 3]]);
                let at = AB + 16 * t + 2 * j;
                blk[at..at + 2].copy_from_slice(&a.wrapping_add(c).to_le_bytes());
            }
        }
    }
}

/// Panel `panel` of `w` against packed group `a`: the first `rr` rows' results for
/// token `t` go to `out[t·stride..t·stride + rr]`.
///
/// # Safety
/// AVX-512 F/BW/VNNI and AVX2/FMA/F16C must be available (`llmq_quant::isa`), and
/// `out` must be valid for those writes.
pub unsafe fn tile(
    w: &Decoded,
    ty: VnniType,
    panel: usize,
    a: &[u8],
    out: *mut f32,
    stride: usize,
    rr: usize,
) {
    assert!(panel < w.panels() && (1..=ROWS).contains(&rr));
    assert!(a.len() >= group_bytes(w.nb));
    let mask = ((1u32 << rr) - 1) as u16;
    match (ty.mins, ty.sub16) {
        (true, _) => tile_k::<true, 8>(w, panel, a, out, stride, mask),
        (false, false) => tile_k::<false, 8>(w, panel, a, out, stride, mask),
        (false, true) => tile_k::<false, 4>(w, panel, a, out, stride, mask),
    }
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const __m512i)
}

#[inline(always)]
unsafe fn bcast(p: *const u8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

#[allow(clippy::needless_range_loop)] // one index into several tile arrays
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_k<const MINS: bool, const K: usize>(
    w: &Decoded,
    panel: usize,
    a: &[u8],
    out: *mut f32,
    stride: usize,
    mask: u16,
) {
    let nb = w.nb;
    let wp = w.q.as_ptr().add(panel * nb * DEC_BLOCK);
    let ap = a.as_ptr();
    let mut facc = [_mm512_setzero_ps(); GROUP];
    for i in 0..nb {
        let wb = wp.add(i * DEC_BLOCK);
        let ab = ap.add(i * A_BLOCK);
        let mut isum = [ld(wb.add(DC)); GROUP];
        // sub-blocks of `K` dwords (4 values each)
        for c in 0..64 / K {
            let wv: [__m512i; K] = std::array::from_fn(|k| ld(wb.add(DW + (K * c + k) * 64)));
            let mut acc = [_mm512_setzero_si512(); GROUP];
            for k in 0..K {
                for t in 0..GROUP {
                    let x = bcast(ab.add(AQ + 256 * t + 4 * (K * c + k)));
                    acc[t] = _mm512_dpbusd_epi32(acc[t], x, wv[k]);
                }
            }
            let s = ld(wb.add(DSC + 64 * c));
            for t in 0..GROUP {
                isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(acc[t], s));
            }
        }
        let d = _mm512_loadu_ps(wb.add(DD) as *const f32);
        for t in 0..GROUP {
            let yd = _mm512_set1_ps((ab.add(AD + 4 * t) as *const f32).read_unaligned());
            // (d_a·d)·isum [− (d_a·dmin)·msum], unfused, as the scalar kernel
            let mut v = _mm512_mul_ps(_mm512_mul_ps(yd, d), _mm512_cvtepi32_ps(isum[t]));
            if MINS {
                let dmin = _mm512_loadu_ps(wb.add(DDMIN) as *const f32);
                let mut ms = _mm512_setzero_si512();
                for p in 0..4 {
                    let b = bcast(ab.add(AB + 16 * t + 4 * p));
                    ms = _mm512_dpwssd_epi32(ms, b, ld(wb.add(DMINS + 64 * p)));
                }
                let m = _mm512_mul_ps(_mm512_mul_ps(yd, dmin), _mm512_cvtepi32_ps(ms));
                v = _mm512_sub_ps(v, m);
            }
            facc[t] = _mm512_add_ps(facc[t], v);
        }
    }
    for t in 0..GROUP {
        _mm512_mask_storeu_ps(out.add(t * stride), mask, facc[t]);
    }
}

#[cfg(test)]
#[path = "tests_vnni.rs"]
mod tests;
