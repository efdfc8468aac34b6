//! Dot products of the 256-value super-block types with Q8_K activations, from the packed
//! bytes (llama.cpp `ggml/src/ggml-common.h`, `QK_K = 256`):
//!
//! * `block_q2_K` (84 B): `scales: [u8; 16]` (low nibble scale, high nibble min),
//!   `qs: [u8; 64]` (2-bit), `d, dmin: f16`.
//! * `block_q3_K` (110 B): `hmask: [u8; 32]`, `qs: [u8; 64]`, `scales: [u8; 12]` (16 6-bit
//!   scales, offset 32), `d: f16`; value = `d·sc·((q2 | hbit<<2) − 4)`.
//! * `block_q4_K` (144 B): `d, dmin: f16`, `scales: [u8; 12]` (8 6-bit scales + 8 6-bit
//!   mins), `qs: [u8; 128]`; value = `d·sc·q − dmin·m`.
//! * `block_q5_K` (176 B): as Q4_K plus `qh: [u8; 32]` before `qs` (the 5th bit).
//! * `block_q6_K` (210 B): `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`;
//!   value = `d·sc·(q6 − 32)`.
//! * `block_iq4_xs` (136 B): `d: f16`, `scales_h: u16`, `scales_l: [u8; 4]`,
//!   `qs: [u8; 128]`; value = `d·(ls − 32)·kvalues_iq4nl[nibble]`.
//!
//! The activation side is `block_q8_K` (`d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]`):
//! the `bsums` give every constant offset (mins, the −32 of Q6_K, the −4 of Q3_K) in one
//! small product per super-block, so the inner loops multiply unsigned weights directly.

use super::dot_legacy::{h, IQ4NL_VALUES};
use llmq_formats::blocks::{
    le_u16, BlockIq4Xs, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K,
};

/// Q8_K activation block pieces.
#[inline]
fn q8k(y: &[u8]) -> (f32, &[u8], [i32; 16]) {
    let d = f32::from_le_bytes(y[BlockQ8K::D].try_into().unwrap());
    let mut bs = [0i32; 16];
    for (g, b) in bs.iter_mut().enumerate() {
        let at = BlockQ8K::BSUMS.start + 2 * g;
        *b = i16::from_le_bytes([y[at], y[at + 1]]) as i32;
    }
    (d, &y[BlockQ8K::QS], bs)
}

#[inline]
fn idot(w: impl Iterator<Item = i32>, y: &[u8]) -> i32 {
    w.zip(y).map(|(a, &b)| a * b as i8 as i32).sum()
}

/// The 8 six-bit scales and 8 mins of Q4_K/Q5_K (`get_scale_min_k4`).
#[inline]
pub(crate) fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// The 16 signed scales of Q3_K (6 bits, offset 32).
#[inline]
pub(crate) fn scales_q3_k(s: &[u8]) -> [i8; 16] {
    const K1: u32 = 0x0303_0303;
    const K2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let tmp = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let words = [
        (a0 & K2) | ((tmp & K1) << 4),
        (a1 & K2) | (((tmp >> 2) & K1) << 4),
        ((a0 >> 4) & K2) | (((tmp >> 4) & K1) << 4),
        ((a1 >> 4) & K2) | (((tmp >> 6) & K1) << 4),
    ];
    let mut out = [0i8; 16];
    for (k, w) in words.iter().enumerate() {
        for (b, v) in w.to_le_bytes().iter().enumerate() {
            out[4 * k + b] = (*v as i32 - 32) as i8;
        }
    }
    out
}

/// The 8 six-bit scales of IQ4_XS (before subtracting 32).
#[inline]
pub(crate) fn scales_iq4_xs(x: &[u8]) -> [i32; 8] {
    let sh = le_u16(x, BlockIq4Xs::SCALES_H) as i32;
    let sl = &x[BlockIq4Xs::SCALES_L];
    let mut out = [0i32; 8];
    for (ib, o) in out.iter_mut().enumerate() {
        let lo = (sl[ib / 2] >> (4 * (ib % 2))) & 0xf;
        *o = lo as i32 | (((sh >> (2 * ib)) & 3) << 4);
    }
    out
}

pub fn dot_q2_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w
        .chunks_exact(BlockQ2K::BYTES)
        .zip(a.chunks_exact(BlockQ8K::BYTES))
    {
        let (yd, qy, bs) = q8k(y);
        let sc = &x[BlockQ2K::SCALES];
        let summ: i32 = (0..16).map(|g| (sc[g] >> 4) as i32 * bs[g]).sum();
        let mut isum = 0i32;
        for half in 0..2 {
            let q = &x[BlockQ2K::QS.start + 32 * half..][..32];
            for j in 0..4 {
                for part in 0..2 {
                    let g = 8 * half + 2 * j + part;
                    let ws = q[16 * part..16 * part + 16]
                        .iter()
                        .map(|&b| ((b >> (2 * j)) & 3) as i32);
                    isum += (sc[g] & 15) as i32 * idot(ws, &qy[16 * g..16 * g + 16]);
                }
            }
        }
        sum += yd * h(x, BlockQ2K::D.start) * isum as f32
            - yd * h(x, BlockQ2K::DMIN.start) * summ as f32;
    }
    sum
}

pub fn dot_q3_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w
        .chunks_exact(BlockQ3K::BYTES)
        .zip(a.chunks_exact(BlockQ8K::BYTES))
    {
        let (yd, qy, _) = q8k(y);
        let hm = &x[BlockQ3K::HMASK];
        let sc = scales_q3_k(&x[BlockQ3K::SCALES]);
        let mut isum = 0i32;
        for half in 0..2 {
            let q = &x[BlockQ3K::QS.start + 32 * half..][..32];
            for j in 0..4 {
                let bit = 1u8 << (4 * half + j);
                for part in 0..2 {
                    let g = 8 * half + 2 * j + part;
                    let ws = (16 * part..16 * part + 16).map(|l| {
                        let low = ((q[l] >> (2 * j)) & 3) as i32;
                        low - if hm[l] & bit != 0 { 0 } else { 4 }
                    });
                    isum += sc[g] as i32 * idot(ws, &qy[16 * g..16 * g + 16]);
                }
            }
        }
        sum += yd * h(x, BlockQ3K::D.start) * isum as f32;
    }
    sum
}

/// Q4_K (`qh == None`) and Q5_K.
fn dot_q45_k(w: &[u8], a: &[u8], five: bool) -> f32 {
    // Q4_K and Q5_K share the head (`d`, `dmin`, `scales`); Q5_K adds `qh` before `qs`.
    let (bytes, qs_off) = if five {
        (BlockQ5K::BYTES, BlockQ5K::QS.start)
    } else {
        (BlockQ4K::BYTES, BlockQ4K::QS.start)
    };
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(bytes).zip(a.chunks_exact(BlockQ8K::BYTES)) {
        let (yd, qy, bs) = q8k(y);
        let (sc, m) = scale_min_k4(&x[BlockQ4K::SCALES]);
        let summ: i32 = (0..8)
            .map(|j| m[j] as i32 * (bs[2 * j] + bs[2 * j + 1]))
            .sum();
        let mut isum = 0i32;
        for j in 0..4 {
            let q = &x[qs_off + 32 * j..qs_off + 32 * j + 32];
            let hb = |l: usize, k: usize| -> i32 {
                if five {
                    (((x[BlockQ5K::QH.start + l] >> k) & 1) << 4) as i32
                } else {
                    0
                }
            };
            let lo = (0..32).map(|l| (q[l] & 15) as i32 | hb(l, 2 * j));
            let hi = (0..32).map(|l| (q[l] >> 4) as i32 | hb(l, 2 * j + 1));
            isum += sc[2 * j] as i32 * idot(lo, &qy[64 * j..64 * j + 32]);
            isum += sc[2 * j + 1] as i32 * idot(hi, &qy[64 * j + 32..64 * j + 64]);
        }
        sum += yd * h(x, BlockQ4K::D.start) * isum as f32
            - yd * h(x, BlockQ4K::DMIN.start) * summ as f32;
    }
    sum
}

pub fn dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    dot_q45_k(w, a, false)
}

pub fn dot_q5_k(w: &[u8], a: &[u8]) -> f32 {
    dot_q45_k(w, a, true)
}

pub fn dot_q6_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w
        .chunks_exact(BlockQ6K::BYTES)
        .zip(a.chunks_exact(BlockQ8K::BYTES))
    {
        let (yd, qy, _) = q8k(y);
        let mut isum = 0i32;
        for half in 0..2 {
            let ql = &x[BlockQ6K::QL.start + 64 * half..][..64];
            let qh = &x[BlockQ6K::QH.start + 32 * half..][..32];
            let sc = &x[BlockQ6K::SCALES.start + 8 * half..][..8];
            let qy = &qy[128 * half..128 * half + 128];
            // four runs of 32 values: (low/high nibble of ql[0..32] / ql[32..64], qh bits)
            for k in 0..4 {
                let mut ws = [0i32; 32];
                for (l, v) in ws.iter_mut().enumerate() {
                    let lo = if k % 2 == 0 { ql[l] } else { ql[l + 32] };
                    let lo = if k < 2 { lo & 15 } else { lo >> 4 };
                    *v = (lo | (((qh[l] >> (2 * k)) & 3) << 4)) as i32 - 32;
                }
                for part in 0..2 {
                    let s = idot(
                        ws[16 * part..16 * part + 16].iter().copied(),
                        &qy[32 * k + 16 * part..32 * k + 16 * part + 16],
                    );
                    isum += sc[2 * k + part] as i8 as i32 * s;
                }
            }
        }
        sum += yd * h(x, BlockQ6K::D.start) * isum as f32;
    }
    sum
}

pub fn dot_iq4_xs(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w
        .chunks_exact(BlockIq4Xs::BYTES)
        .zip(a.chunks_exact(BlockQ8K::BYTES))
    {
        let (yd, qy, _) = q8k(y);
        let ls = scales_iq4_xs(x);
        let mut isum = 0i32;
        for ib in 0..8 {
            let qs = &x[BlockIq4Xs::QS.start + 16 * ib..][..16];
            let lo = qs.iter().map(|&b| IQ4NL_VALUES[(b & 15) as usize] as i32);
            let hi = qs.iter().map(|&b| IQ4NL_VALUES[(b >> 4) as usize] as i32);
            let s =
                idot(lo, &qy[32 * ib..32 * ib + 16]) + idot(hi, &qy[32 * ib + 16..32 * ib + 32]);
            isum += (ls[ib] - 32) * s;
        }
        sum += yd * h(x, BlockIq4Xs::D.start) * isum as f32;
    }
    sum
}
