//! NVFP4 (GGML type 40, llama.cpp's `block_nvfp4`): blocks of 64 E2M1 values in four
//! sub-blocks of 16, each sub-block with one unsigned E4M3 scale (UE4M3: bias 7, three
//! mantissa bits, no sign; NVIDIA's NVFP4 block scale). Layout [`BlockNvfp4`]: the four
//! scale bytes, then 32 bytes of nibbles, sub-block `s` in `qs[8s..8s+8]` with value
//! `16s+j` in the low nibble of `qs[8s+j]` and value `16s+8+j` in the high nibble.
//! Value = `E2M1_DOUBLED[nibble] · ue4m3(d[s]) / 2` (llama.cpp's `ggml_ue4m3_to_fp32`
//! returns the scale halved, to go with the doubled levels; bytes 0 and 0x7F read as 0).
//!
//! llama.cpp stores no per-tensor FP32 scale inside the block (a model may carry one as
//! a separate `.scale` tensor; this crate writes none), so a sub-block's scale is the
//! UE4M3 value itself, between `2^-9` and 448.
//!
//! Scale choice. llama.cpp's reference (`quantize_row_nvfp4_ref`, 0.3.36) encodes
//! `amax/6` to UE4M3 (mantissa rounded half up, subnormals `round(x·512)` capped at
//! code 7, saturating at 448) and takes each value's nearest level, the smaller
//! magnitude on a tie ([`scale_code_llama`], [`quantize_row_llama`]). This module's
//! quantizer starts from that code and tries the codes just below and above it
//! (`llama − 3 ..= llama + 1`; UE4M3 codes are ordered by value), keeping the one whose
//! sub-block has the least squared error (importance-weighted when an imatrix row is
//! given), llama's code on a tie — so its error is never larger than llama's. This is
//! FP-Quant's MSE scale search (arXiv 2509.23202) restricted to the representable
//! scales near `amax/6`.

use llmq_formats::blocks::{BlockNvfp4, QK_NVFP4_SUB};
use llmq_formats::minifloat::E2M1_DOUBLED;

/// Values per block.
pub const BLOCK_VALUES: usize = BlockNvfp4::VALUES;
/// Bytes per block: four scale bytes and 32 bytes of nibbles.
pub const BLOCK_BYTES: usize = BlockNvfp4::BYTES;
/// Values per sub-block (one scale each).
pub const SUB_VALUES: usize = QK_NVFP4_SUB;
/// Sub-blocks per block.
pub const SUBS: usize = BLOCK_VALUES / SUB_VALUES;
/// The largest UE4M3 code (448); 0x7F is NaN in E4M3 and reads as 0 in ggml.
pub const UE4M3_MAX_CODE: u8 = 0x7E;

/// `ggml_ue4m3_to_fp32`: the UE4M3 byte's value halved (the scale of the doubled E2M1
/// levels). Bit 7 is not part of the code; bytes 0 and 0x7F give 0. Exact in f32.
#[inline]
pub fn ue4m3_half(b: u8) -> f32 {
    if b == 0 || b == 0x7F {
        return 0.0;
    }
    let e = u32::from((b >> 3) & 15);
    let m = u32::from(b & 7);
    if e == 0 {
        m as f32 * (1.0 / 1024.0)
    } else {
        // (1 + m/8)·2^(e−7), halved: biased f32 exponent e − 8 + 127
        f32::from_bits(((e + 119) << 23) | (m << 20))
    }
}

/// The UE4M3 code llama.cpp's reference gives a positive scale `x` (`ggml_fp32_to_ue4m3`):
/// 0 for `x ≤ 0`; `x > 448` saturates; normal values round the 3-bit mantissa half up
/// (carrying into the exponent); below `2^-6`, `round(x·512)` capped at 7. As in
/// llama.cpp, every `x ≥ 256` (exponent field 15) gives 448: codes 0x78..0x7D are never
/// produced by this rule (the search below may pick them).
#[inline]
pub fn scale_code_llama(x: f32) -> u8 {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let x = x.min(448.0);
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xFF) as i32 - 127 + 7;
    if exp <= 0 {
        return ((x * 512.0 + 0.5) as i32).clamp(0, 7) as u8;
    }
    let mut man = ((bits >> 20) & 7) as i32 + ((bits >> 19) & 1) as i32;
    let mut exp = exp;
    if man > 7 {
        man = 0;
        exp += 1;
    }
    if exp >= 15 {
        return UE4M3_MAX_CODE;
    }
    ((exp << 3) | man) as u8
}

/// Midpoints between consecutive doubled E2M1 magnitudes {0,1,2,3,4,6,8,12}.
const MID: [f32; 7] = [0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0];

/// The code of the level nearest `x` at half scale `d` (the smaller magnitude on a
/// tie, and code 0 rather than −0, as llama.cpp's `best_index_mxfp4`).
#[inline]
fn nearest(x: f32, d: f32) -> u8 {
    let a = x.abs();
    let mut k = 0u8;
    for &m in &MID {
        k += u8::from(a > m * d);
    }
    if k != 0 && x < 0.0 {
        k | 8
    } else {
        k
    }
}

/// Squared error (weighted by `w` where given) of a sub-block at half scale `d`.
#[inline]
fn sub_error(x: &[f32], w: Option<&[f32]>, d: f32) -> f32 {
    let mut e = 0.0f32;
    for (i, &v) in x.iter().enumerate() {
        let q = E2M1_DOUBLED[nearest(v, d) as usize] as f32 * d;
        let r = (v - q) * (v - q);
        e += w.map_or(r, |w| w[i] * r);
    }
    e
}

/// The scale code for one sub-block: llama's, or a neighbour with less error.
fn choose_code(x: &[f32], w: Option<&[f32]>, search: bool) -> u8 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let base = scale_code_llama(amax / 6.0);
    if !search || base == 0 {
        return base;
    }
    let mut best = base;
    let mut best_err = sub_error(x, w, ue4m3_half(base));
    let lo = base.saturating_sub(3).max(1);
    let hi = (base + 1).min(UE4M3_MAX_CODE);
    for c in lo..=hi {
        if c == base {
            continue;
        }
        let e = sub_error(x, w, ue4m3_half(c));
        if e < best_err {
            best = c;
            best_err = e;
        }
    }
    best
}

fn check_sizes(n_values: usize, n_bytes: usize) {
    assert_eq!(
        n_values % BLOCK_VALUES,
        0,
        "row is not a whole number of NVFP4 blocks"
    );
    assert_eq!(
        n_bytes,
        n_values / BLOCK_VALUES * BLOCK_BYTES,
        "NVFP4 output size"
    );
}

fn quantize_blocks(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8], search: bool) {
    check_sizes(x.len(), y.len());
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "one importance weight per value");
    }
    for (b, (xb, yb)) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        for s in 0..SUBS {
            let xs = &xb[s * SUB_VALUES..(s + 1) * SUB_VALUES];
            let ws = imatrix.map(|w| &w[b * BLOCK_VALUES + s * SUB_VALUES..][..SUB_VALUES]);
            let code = choose_code(xs, ws, search);
            yb[BlockNvfp4::D.start + s] = code;
            let d = ue4m3_half(code);
            let qs = &mut yb[BlockNvfp4::QS.start + s * SUB_VALUES / 2..][..SUB_VALUES / 2];
            for (j, q) in qs.iter_mut().enumerate() {
                *q = nearest(xs[j], d) | (nearest(xs[j + SUB_VALUES / 2], d) << 4);
            }
        }
    }
}

/// Quantize whole blocks with llama.cpp's scale rule alone (no search; importance
/// weights ignored, as llama.cpp does).
pub fn quantize_row_llama(x: &[f32], y: &mut [u8]) {
    quantize_blocks(x, None, y, false)
}

/// Quantize whole blocks (scalar reference): llama's scale code or the neighbour with
/// the least (importance-weighted) squared error.
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_blocks(x, imatrix, y, true)
}

/// Quantize whole blocks: the reference (its cost is small next to reading the source).
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_row_ref(x, imatrix, y)
}

/// Dequantize whole blocks (scalar reference).
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    check_sizes(y.len(), x.len());
    for (xb, yb) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        for s in 0..SUBS {
            let d = ue4m3_half(xb[BlockNvfp4::D.start + s]);
            let qs = &xb[BlockNvfp4::QS.start + s * SUB_VALUES / 2..][..SUB_VALUES / 2];
            let ys = &mut yb[s * SUB_VALUES..(s + 1) * SUB_VALUES];
            for (j, &q) in qs.iter().enumerate() {
                ys[j] = E2M1_DOUBLED[(q & 15) as usize] as f32 * d;
                ys[j + SUB_VALUES / 2] = E2M1_DOUBLED[(q >> 4) as usize] as f32 * d;
            }
        }
    }
}

/// Dequantize whole blocks.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    dequantize_row_ref(x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmq_formats::minifloat::e4m3_to_f32;

    #[test]
    fn scale_reads_as_half_the_e4m3_value() {
        for b in 1..0x7Fu8 {
            assert_eq!(ue4m3_half(b), e4m3_to_f32(b) * 0.5, "{b:#x}");
        }
        assert_eq!(ue4m3_half(0), 0.0);
        assert_eq!(ue4m3_half(0x7F), 0.0);
        // bit 7 is ignored except for the 0x7F pattern: 0xFF reads as 480/2
        assert_eq!(ue4m3_half(0xFF), 240.0);
        assert_eq!(ue4m3_half(0x80), 0.0);
    }

    #[test]
    fn llama_scale_code_rounds_half_up_and_saturates() {
        assert_eq!(scale_code_llama(1.0), 0x38);
        assert_eq!(scale_code_llama(448.0), 0x7E);
        assert_eq!(scale_code_llama(1e9), 0x7E);
        assert_eq!(scale_code_llama(0.0), 0);
        assert_eq!(scale_code_llama(-1.0), 0);
        // 1.0625 is half way between 1 and 1.125: rounds up
        assert_eq!(scale_code_llama(1.0625), 0x39);
        // 1.9375 rounds up into the next binade
        assert_eq!(scale_code_llama(1.9375), 0x40);
        // subnormals: multiples of 2^-9, capped at code 7
        assert_eq!(scale_code_llama(3.0 / 512.0), 3);
        assert_eq!(scale_code_llama(7.7 / 512.0), 7);
        assert_eq!(scale_code_llama(0.4 / 512.0), 0);
        // llama's encoder sends the whole top binade [256, 448] to 448
        assert_eq!(scale_code_llama(256.0), 0x7E);
        // every other code's own value maps back to it
        for c in 1..0x78 {
            assert_eq!(scale_code_llama(2.0 * ue4m3_half(c)), c, "{c:#x}");
        }
    }

    #[test]
    fn a_block_on_the_grid_round_trips() {
        // sub-block scale 1 (code 0x38): amax 6 → amax/6 = 1 exactly
        let x: Vec<f32> = (0..64)
            .map(|i| match i % 16 {
                0 => 6.0,
                k => E2M1_DOUBLED[(k * 7) % 16] as f32 * 0.5,
            })
            .collect();
        let mut y = [0u8; BLOCK_BYTES];
        quantize_row_ref(&x, None, &mut y);
        let mut back = [0.0f32; 64];
        dequantize_row_ref(&y, &mut back);
        assert_eq!(back.to_vec(), x);
        assert_eq!(&y[..4], &[0x38; 4]);
    }

    #[test]
    fn the_search_never_loses_to_llamas_rule_and_often_wins() {
        let mut seed = 0x2545_F491u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        let n = 64 * 256;
        // a spread of magnitudes, from UE4M3's subnormal range to its normal range
        let x: Vec<f32> = (0..n)
            .map(|i| rnd() * rnd().abs() * [0.003, 0.02, 0.1, 1.0][(i / 64) % 4])
            .collect();
        let (mut a, mut b) = (vec![0u8; n / 64 * 36], vec![0u8; n / 64 * 36]);
        quantize_row_llama(&x, &mut a);
        quantize_row_ref(&x, None, &mut b);
        let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
        dequantize_row_ref(&a, &mut da);
        dequantize_row_ref(&b, &mut db);
        let mut wins = 0;
        for s in 0..n / 16 {
            let r = s * 16..(s + 1) * 16;
            let err = |d: &[f32]| -> f32 { r.clone().map(|i| (x[i] - d[i]).powi(2)).sum() };
            assert!(err(&db) <= err(&da), "sub-block {s}");
            wins += usize::from(err(&db) < err(&da));
        }
        assert!(
            wins > n / 16 / 10,
            "the search improved only {wins} sub-blocks"
        );
    }

    #[test]
    fn values_take_the_nearest_level_at_the_chosen_scale() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.013).collect();
        let mut y = [0u8; BLOCK_BYTES];
        quantize_row_ref(&x, None, &mut y);
        let mut back = [0.0f32; 64];
        dequantize_row_ref(&y, &mut back);
        for (i, (v, b)) in x.iter().zip(&back).enumerate() {
            let d = ue4m3_half(y[i / 16]);
            let best = E2M1_DOUBLED
                .iter()
                .map(|&k| (k as f32 * d - v).abs())
                .fold(f32::INFINITY, f32::min);
            assert_eq!((b - v).abs(), best, "{v}");
        }
        let mut z = [0xAAu8; BLOCK_BYTES];
        quantize_row_ref(&[0.0; 64], None, &mut z);
        assert!(z.iter().all(|&b| b == 0));
    }
}
