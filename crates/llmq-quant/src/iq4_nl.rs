//! IQ4_NL: blocks of 32 values stored as one f16 scale `d` and 32 4-bit indices into a
//! fixed non-linear table of 16 levels (`kvalues_iq4nl`; value `j` in the low nibble
//! of byte `j`, value `j+16` in its high nibble), value = `d * table[index]`.
//!
//! Implements llama.cpp's `quantize_iq4_nl` / `dequantize_row_iq4_nl` from
//! `ggml/src/ggml-quants.c` (block `block_iq4_nl` in `ggml/src/ggml-common.h`). The
//! scale search `quantize_row_iq4_nl_impl`, shared with IQ4_XS, lives here too: per
//! 32-value block it takes the least-squares scale for `d = max / 127` and for 15 trial
//! inverse scales `(k - 127) / max`, `k = -7..=7`, keeping the one with the smallest
//! weighted error (weights `x²`, or `imatrix · sqrt(σ² + x²)` with importance weights).
//!
//! Fast path: the 16 candidate scales are evaluated together, one per SIMD lane, each
//! lane accumulating its sums in the reference order. The nearest table level comes from
//! a table gather on the half-unit bucket `floor(2·a)` with AVX2 (every midpoint between
//! levels is a multiple of 0.5), or from comparisons against the 15 midpoints otherwise,
//! instead of a binary search. All give the reference's bytes exactly (see the tests).

use crate::search::{fp16_bits_to_fp32, fp32_to_fp16_bits, GROUP_MAX_EPS};
use llmq_formats::blocks::{le_u16, BlockIq4Nl, KVALUES_IQ4NL};

/// Values per block.
pub const BLOCK_VALUES: usize = BlockIq4Nl::VALUES;
/// Bytes per block: f16 scale + 16 bytes of nibbles ([`BlockIq4Nl`]).
pub const BLOCK_BYTES: usize = BlockIq4Nl::BYTES;

/// The 16 non-linear levels (`kvalues_iq4nl`), ascending: the codebook of the layout.
pub(crate) const LEVELS: [i8; 16] = KVALUES_IQ4NL;

/// Midpoints between neighbouring levels: a value below `MIDPOINTS[k]` is nearer level
/// `k` than level `k+1`, and a value on a midpoint goes up (as in `best_index_int8`).
const MIDPOINTS: [f32; 15] = {
    let mut m = [0.0f32; 15];
    let mut k = 0;
    while k < 15 {
        m[k] = (LEVELS[k] as f32 + LEVELS[k + 1] as f32) * 0.5;
        k += 1;
    }
    m
};

/// Gap from each level to the next, for the branch-free level lookup.
const STEPS: [f32; 15] = {
    let mut s = [0.0f32; 15];
    let mut k = 0;
    while k < 15 {
        s[k] = (LEVELS[k + 1] as i32 - LEVELS[k] as i32) as f32;
        k += 1;
    }
    s
};

/// Number of trial scales on each side of the nominal one (`ntry` in C).
const NTRY: i32 = 7;
/// The initial estimate plus `2·NTRY + 1` trials.
const CANDIDATES: usize = 1 + 2 * NTRY as usize + 1;

/// Index of the level nearest `x` (ties go up), by binary search: `best_index_int8`.
#[inline]
pub(crate) fn nearest_level_ref(x: f32) -> usize {
    if x <= LEVELS[0] as f32 {
        return 0;
    }
    if x >= LEVELS[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < LEVELS[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (LEVELS[hi - 1] as f32) < LEVELS[hi] as f32 - x {
        hi - 1
    } else {
        hi
    }
}

/// [`nearest_level_ref`] without branches: 15 minus the number of midpoints above `x`.
/// Near a midpoint both differences in the reference's tie test are exact in `f32`, so
/// the two agree for every input (NaN included: both give 15).
#[inline(always)]
pub(crate) fn nearest_level_fast(x: f32) -> u8 {
    let mut index = 15u8;
    for &m in &MIDPOINTS {
        index -= (x < m) as u8;
    }
    index
}

/// The nearest level itself as `f32`, branch-free (same as `LEVELS[nearest_level_fast]`).
#[inline(always)]
fn nearest_level_value_fast(x: f32) -> f32 {
    let mut q = LEVELS[15] as f32;
    for (&m, &step) in MIDPOINTS.iter().zip(&STEPS) {
        q -= if x < m { step } else { 0.0 };
    }
    q
}

/// Sum of squares times `2 / n`: the σ² of `quantize_row_iq4_nl_impl`.
#[inline]
pub(crate) fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// Search weights of one 32-value block: `imatrix · sqrt(σ² + x²)`, or `x²` without one.
#[inline]
pub(crate) fn block_weights(
    xb: &[f32],
    imatrix: Option<&[f32]>,
    sigma2: f32,
    weight: &mut [f32; 32],
) {
    match imatrix {
        Some(qw) => {
            for ((w, &q), &v) in weight.iter_mut().zip(qw).zip(xb) {
                *w = q * (sigma2 + v * v).sqrt();
            }
        }
        None => {
            for (w, &v) in weight.iter_mut().zip(xb) {
                *w = v * v;
            }
        }
    }
}

/// The best scale for one 32-value block (0 for an all-zero block). `FAST` selects the
/// lane-parallel evaluation of the candidates; the result is the same.
#[inline(always)]
pub(crate) fn block_scale<const FAST: bool>(xb: &[f32; 32], weight: &[f32; 32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let d0 = -max / LEVELS[0] as f32;
    let mut inverse_scales = [0.0f32; CANDIDATES];
    inverse_scales[0] = 1.0 / d0;
    for (k, id) in inverse_scales[1..].iter_mut().enumerate() {
        *id = (k as i32 - NTRY + LEVELS[0] as i32) as f32 / max;
    }
    let mut sumqx = [0.0f32; CANDIDATES];
    let mut sumq2 = [0.0f32; CANDIDATES];
    if FAST {
        candidate_sums_fast(xb, weight, &inverse_scales, &mut sumqx, &mut sumq2);
    } else {
        candidate_sums_ref(xb, weight, &inverse_scales, &mut sumqx, &mut sumq2);
    }
    let mut d = if sumq2[0] > 0.0 {
        sumqx[0] / sumq2[0]
    } else {
        0.0
    };
    let mut best = d * sumqx[0];
    for (&sx, &s2) in sumqx.iter().zip(&sumq2).skip(1) {
        if s2 > 0.0 && sx * sx > best * s2 {
            d = sx / s2;
            best = d * sx;
        }
    }
    d
}

/// Reference candidate sums: one candidate after the other, binary-search levels.
fn candidate_sums_ref(
    xb: &[f32; 32],
    weight: &[f32; 32],
    inverse_scales: &[f32; CANDIDATES],
    sumqx: &mut [f32; CANDIDATES],
    sumq2: &mut [f32; CANDIDATES],
) {
    for ((&id, sx), s2) in inverse_scales
        .iter()
        .zip(sumqx.iter_mut())
        .zip(sumq2.iter_mut())
    {
        for (&v, &w) in xb.iter().zip(weight) {
            let q = LEVELS[nearest_level_ref(id * v)] as f32;
            *sx += w * q * v;
            *s2 += w * q * q;
        }
    }
}

/// For every candidate inverse scale `id`, Σ w·q·x and Σ w·q² with `q` the level nearest
/// `id·x`, accumulated in element order (the reference's order, so the sums are
/// bit-identical). Candidates run in parallel lanes.
#[inline(always)]
fn candidate_sums_fast(
    xb: &[f32; 32],
    weight: &[f32; 32],
    inverse_scales: &[f32; CANDIDATES],
    sumqx: &mut [f32; CANDIDATES],
    sumq2: &mut [f32; CANDIDATES],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: AVX2 support was checked just above.
        unsafe { candidate_sums_avx2(xb, weight, inverse_scales, sumqx, sumq2) };
        return;
    }
    candidate_sums_portable(xb, weight, inverse_scales, sumqx, sumq2);
}

/// [`candidate_sums_fast`] in plain code (vectorised by the compiler where it can).
#[inline(always)]
fn candidate_sums_portable(
    xb: &[f32; 32],
    weight: &[f32; 32],
    inverse_scales: &[f32; CANDIDATES],
    sumqx: &mut [f32; CANDIDATES],
    sumq2: &mut [f32; CANDIDATES],
) {
    for (&v, &w) in xb.iter().zip(weight) {
        for ((&id, sx), s2) in inverse_scales
            .iter()
            .zip(sumqx.iter_mut())
            .zip(sumq2.iter_mut())
        {
            let q = nearest_level_value_fast(id * v);
            let wq = w * q;
            *sx += wq * v;
            *s2 += wq * q;
        }
    }
}

/// Lowest and highest half-unit bucket `floor(2·a)` told apart by the level lookup: every
/// midpoint is a multiple of 0.5, so the nearest level of `a` depends only on its
/// bucket, and buckets beyond these ends give level 0 or 15.
const BUCKET_LO: i32 = -256;
const BUCKET_HI: i32 = 228;
const BUCKETS: usize = (BUCKET_HI - BUCKET_LO + 1) as usize;

/// The nearest level (as f32) for each bucket: the number of midpoints `m` with
/// `2m <= bucket` is the level's index.
static BUCKET_LEVELS: [f32; BUCKETS] = {
    let mut t = [0.0f32; BUCKETS];
    let mut b = 0;
    while b < BUCKETS {
        let bucket = BUCKET_LO + b as i32;
        let mut index = 0;
        let mut k = 0;
        while k < 15 {
            if (LEVELS[k] as i32 + LEVELS[k + 1] as i32) <= bucket {
                index += 1;
            }
            k += 1;
        }
        t[b] = LEVELS[index] as f32;
        b += 1;
    }
    t
};

/// [`candidate_sums_fast`] with AVX2: 16 candidates in two registers, the nearest level
/// by a table gather on `floor(2·id·x)` (NaN and +∞ land in the top bucket, −∞ in the
/// bottom one, as in the binary search).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn candidate_sums_avx2(
    xb: &[f32; 32],
    weight: &[f32; 32],
    inverse_scales: &[f32; CANDIDATES],
    sumqx: &mut [f32; CANDIDATES],
    sumq2: &mut [f32; CANDIDATES],
) {
    use std::arch::x86_64::*;
    const _: () = assert!(CANDIDATES == 16);
    let ids = [
        _mm256_loadu_ps(inverse_scales.as_ptr()),
        _mm256_loadu_ps(inverse_scales.as_ptr().add(8)),
    ];
    let two = _mm256_set1_ps(2.0);
    let lo = _mm256_set1_ps(BUCKET_LO as f32);
    let hi = _mm256_set1_ps(BUCKET_HI as f32);
    let table = BUCKET_LEVELS.as_ptr();
    let mut sx = [_mm256_setzero_ps(); 2];
    let mut s2 = [_mm256_setzero_ps(); 2];
    for (&v, &w) in xb.iter().zip(weight) {
        let x = _mm256_set1_ps(v);
        let w = _mm256_set1_ps(w);
        for h in 0..2 {
            let scaled = _mm256_mul_ps(ids[h], x);
            let bucket = _mm256_round_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(scaled, two),
            );
            // min_ps returns its second operand for NaN: NaN goes to the top bucket.
            let bucket = _mm256_max_ps(_mm256_min_ps(bucket, hi), lo);
            let offset = _mm256_cvttps_epi32(_mm256_sub_ps(bucket, lo));
            let q = _mm256_i32gather_ps::<4>(table, offset);
            let wq = _mm256_mul_ps(w, q);
            sx[h] = _mm256_add_ps(sx[h], _mm256_mul_ps(wq, x));
            s2[h] = _mm256_add_ps(s2[h], _mm256_mul_ps(wq, q));
        }
    }
    _mm256_storeu_ps(sumqx.as_mut_ptr(), sx[0]);
    _mm256_storeu_ps(sumqx.as_mut_ptr().add(8), sx[1]);
    _mm256_storeu_ps(sumq2.as_mut_ptr(), s2[0]);
    _mm256_storeu_ps(sumq2.as_mut_ptr().add(8), s2[1]);
}

/// Level indices of `x` scaled by `inverse_scale`, packed two per byte (value `j` low,
/// `j+16` high) into `qs` (16 bytes).
#[inline(always)]
pub(crate) fn pack_levels<const FAST: bool>(xb: &[f32; 32], inverse_scale: f32, qs: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if FAST && crate::isa::avx2() {
        // SAFETY: AVX2 support was checked just above.
        unsafe { pack_levels_avx2(xb, inverse_scale, (&mut qs[..16]).try_into().unwrap()) };
        return;
    }
    let mut index = [0u8; 32];
    for (i, &v) in index.iter_mut().zip(xb) {
        *i = if FAST {
            nearest_level_fast(inverse_scale * v)
        } else {
            nearest_level_ref(inverse_scale * v) as u8
        };
    }
    for (j, q) in qs[..16].iter_mut().enumerate() {
        *q = index[j] | (index[j + 16] << 4);
    }
}

/// The nearest level's index for each bucket (as `BUCKET_LEVELS`, for gathers).
static BUCKET_INDICES: [i32; BUCKETS] = {
    let mut t = [0i32; BUCKETS];
    let mut b = 0;
    while b < BUCKETS {
        let bucket = BUCKET_LO + b as i32;
        let mut k = 0;
        while k < 15 {
            if (LEVELS[k] as i32 + LEVELS[k + 1] as i32) <= bucket {
                t[b] += 1;
            }
            k += 1;
        }
        b += 1;
    }
    t
};

/// [`pack_levels`] with AVX2: bucket gathers for the 32 indices, then nibble packing.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_levels_avx2(xb: &[f32; 32], inverse_scale: f32, qs: &mut [u8; 16]) {
    use crate::q4_0::avx2;
    use std::arch::x86_64::*;
    let v = avx2::scale(&avx2::load(xb), inverse_scale);
    let two = _mm256_set1_ps(2.0);
    let lo = _mm256_set1_ps(BUCKET_LO as f32);
    let hi = _mm256_set1_ps(BUCKET_HI as f32);
    let table = BUCKET_INDICES.as_ptr();
    let mut index = [_mm256_setzero_si256(); 4];
    for (i, &a) in index.iter_mut().zip(&v) {
        let bucket =
            _mm256_round_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(a, two));
        // min_ps returns its second operand for NaN: NaN goes to the top bucket.
        let bucket = _mm256_max_ps(_mm256_min_ps(bucket, hi), lo);
        *i = _mm256_i32gather_epi32::<4>(table, _mm256_cvttps_epi32(_mm256_sub_ps(bucket, lo)));
    }
    avx2::store_nibbles(avx2::pack_bytes::<false>(index), qs);
}

fn check_sizes(x: &[f32], imatrix: Option<&[f32]>, y: &[u8]) {
    assert_eq!(
        x.len() % BLOCK_VALUES,
        0,
        "row is not a whole number of IQ4_NL blocks"
    );
    assert_eq!(
        y.len(),
        x.len() / BLOCK_VALUES * BLOCK_BYTES,
        "IQ4_NL output size"
    );
    if let Some(w) = imatrix {
        assert_eq!(w.len(), x.len(), "imatrix needs one weight per row element");
    }
}

#[inline(always)]
fn quantize_blocks<const FAST: bool>(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    let mut weight = [0.0f32; 32];
    for (ib, (xb, yb)) in x
        .chunks_exact(BLOCK_VALUES)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        let xb: &[f32; 32] = xb.try_into().unwrap();
        let qw = imatrix.map(|w| &w[ib * BLOCK_VALUES..(ib + 1) * BLOCK_VALUES]);
        block_weights(xb, qw, sigma2(xb), &mut weight);
        let d = block_scale::<FAST>(xb, &weight);
        yb[BlockIq4Nl::D].copy_from_slice(&fp32_to_fp16_bits(d).to_le_bytes());
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        pack_levels::<FAST>(xb, id, &mut yb[BlockIq4Nl::QS]);
    }
}

/// Quantize one row, reference path (plain scalar code, as in C).
pub fn quantize_row_ref(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    check_sizes(x, imatrix, y);
    quantize_blocks::<false>(x, imatrix, y);
}

/// Same bytes as [`quantize_row_ref`]; lane-parallel search (AVX2 when available).
pub fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    check_sizes(x, imatrix, y);
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: AVX2 support was checked just above.
        unsafe { quantize_blocks_avx2(x, imatrix, y) };
        return;
    }
    quantize_blocks::<true>(x, imatrix, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
    quantize_blocks::<true>(x, imatrix, y);
}

/// Dequantize whole blocks: `d * table[index]`.
pub fn dequantize_row_ref(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "IQ4_NL dequant size"
    );
    for (xb, yb) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(xb, BlockIq4Nl::D));
        for j in 0..BLOCK_VALUES / 2 {
            let q = xb[BlockIq4Nl::QS.start + j];
            yb[j] = d * LEVELS[(q & 0x0f) as usize] as f32;
            yb[j + 16] = d * LEVELS[(q >> 4) as usize] as f32;
        }
    }
}

/// Same values as [`dequantize_row_ref`], vectorised.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(
        x.len() / BLOCK_BYTES * BLOCK_VALUES,
        y.len(),
        "IQ4_NL dequant size"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: AVX2 support was checked just above.
        unsafe { dequantize_blocks_avx2(x, y) };
        return;
    }
    dequantize_blocks(x, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_blocks_avx2(x: &[u8], y: &mut [f32]) {
    dequantize_blocks(x, y);
}

/// The level table as `f32`, for table lookups in the dequantizers.
pub(crate) const LEVELS_F32: [f32; 16] = {
    let mut t = [0.0f32; 16];
    let mut k = 0;
    while k < 16 {
        t[k] = LEVELS[k] as f32;
        k += 1;
    }
    t
};

#[inline(always)]
fn dequantize_blocks(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact_mut(BLOCK_VALUES))
    {
        let d = fp16_bits_to_fp32(le_u16(xb, BlockIq4Nl::D));
        let (lo, hi) = yb.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&xb[BlockIq4Nl::QS]) {
            *l = d * LEVELS_F32[(q & 0x0f) as usize];
            *h = d * LEVELS_F32[(q >> 4) as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8_0::test_support::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn quantize_row_portable(x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
        quantize_blocks::<true>(x, imatrix, y);
    }

    const FORMAT: Format = Format {
        name: "IQ4_NL",
        block_values: BLOCK_VALUES,
        block_bytes: BLOCK_BYTES,
        quant_ref: quantize_row_ref,
        quant: quantize_row,
        dequant_ref: dequantize_row_ref,
        dequant: dequantize_row,
        quant_portable: quantize_row_portable,
        dequant_portable: dequantize_blocks,
    };

    #[test]
    fn fast_path_matches_reference() {
        fast_matches_ref(&FORMAT);
    }

    #[test]
    fn zero_rows_and_extreme_inputs() {
        zeros_and_extremes(&FORMAT);
    }

    #[test]
    fn gaussian_round_trip_error() {
        // Relative RMS error on N(0, 1) rows: 16 non-linear levels over ±127 steps, comparable to Q4_1's ≈ 0.079σ; measured
        // 0.0761 (0.0806 with an imatrix, which optimises a different weighting).
        // The rows are seeded, so the bound (≈10% above the measurement) only trips on a
        // real change of the algorithm.
        let plain = relative_rms(&FORMAT, false);
        assert!(plain < 0.084, "relative rms {plain}");
        let weighted = relative_rms(&FORMAT, true);
        assert!(weighted < 0.089, "relative rms with imatrix {weighted}");
    }

    #[test]
    fn imatrix_lowers_weighted_error() {
        let (without, with) = weighted_error(&FORMAT);
        assert!(
            with < 0.95 * without,
            "weighted error {with} with imatrix vs {without} without"
        );
    }

    #[test]
    fn known_blocks() {
        // Zeros: d = 0 and every index 8 (the level 1, nearest to 0), as llama.cpp.
        let mut y = [0u8; BLOCK_BYTES];
        quantize_row(&[0.0; 32], None, &mut y);
        assert_eq!(&y[..2], &[0, 0]);
        assert!(y[2..].iter().all(|&b| b == 0x88));
        // The table itself, twice: reproduced exactly with d = 1.
        let x: Vec<f32> = (0..32).map(|j| LEVELS[j % 16] as f32).collect();
        quantize_row(&x, None, &mut y);
        let mut back = [0.0f32; 32];
        dequantize_row(&y, &mut back);
        assert_eq!(&y[..2], &[0x00, 0x3c]);
        assert_eq!(back.to_vec(), x);
    }

    #[test]
    fn candidate_sums_and_levels_match_reference_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for trial in 0..3000 {
            let scale = 10f32.powi(rng.gen_range(-6..4));
            let xb: [f32; 32] = std::array::from_fn(|_| rng.gen_range(-1.0f32..1.0) * scale);
            let weight: [f32; 32] = std::array::from_fn(|j| {
                if trial % 2 == 0 {
                    xb[j] * xb[j]
                } else {
                    rng.gen_range(0.0f32..5.0)
                }
            });
            let max = xb
                .iter()
                .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let mut ids = [0.0f32; CANDIDATES];
            ids[0] = 1.0 / (-max / LEVELS[0] as f32);
            for (k, id) in ids[1..].iter_mut().enumerate() {
                // Mostly the real candidates, sometimes wild ones (overflow to ±∞ included).
                *id = if trial % 7 == 3 {
                    rng.gen_range(-1e3f32..1e3) / max
                } else {
                    (k as i32 - 134) as f32 / max
                };
            }
            if trial % 11 == 5 {
                ids[3] = f32::INFINITY;
                ids[4] = f32::NEG_INFINITY;
            }
            let mut reference = ([0.0f32; CANDIDATES], [0.0f32; CANDIDATES]);
            candidate_sums_ref(&xb, &weight, &ids, &mut reference.0, &mut reference.1);
            let mut portable = ([0.0f32; CANDIDATES], [0.0f32; CANDIDATES]);
            candidate_sums_portable(&xb, &weight, &ids, &mut portable.0, &mut portable.1);
            let mut dispatched = ([0.0f32; CANDIDATES], [0.0f32; CANDIDATES]);
            candidate_sums_fast(&xb, &weight, &ids, &mut dispatched.0, &mut dispatched.1);
            for &id in &ids {
                let (mut fast, mut reference) = ([0u8; 16], [0u8; 16]);
                pack_levels::<true>(&xb, id, &mut fast);
                pack_levels::<false>(&xb, id, &mut reference);
                assert_eq!(
                    fast, reference,
                    "levels for inverse scale {id:e}, trial {trial}"
                );
            }
            let bits = |a: &[f32; CANDIDATES]| a.map(f32::to_bits);
            for got in [&portable, &dispatched] {
                assert_eq!(bits(&got.0), bits(&reference.0), "Σwqx, trial {trial}");
                assert_eq!(bits(&got.1), bits(&reference.1), "Σwq², trial {trial}");
            }
        }
    }

    #[test]
    fn branch_free_level_matches_binary_search() {
        let check = |v: f32| {
            assert_eq!(
                nearest_level_fast(v) as usize,
                nearest_level_ref(v),
                "at {v:e} ({:#x})",
                v.to_bits()
            );
        };
        // Around every midpoint and level, ±20000 ulps.
        for anchor in MIDPOINTS.iter().chain(LEVELS_F32.iter()) {
            for sign in [1i64, -1] {
                let mut v = *anchor;
                for _ in 0..20_000 {
                    check(v);
                    v = f32::from_bits(
                        (v.to_bits() as i64 + if v >= 0.0 { sign } else { -sign }) as u32,
                    );
                }
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200_000 {
            check(rng.gen_range(-140.0f32..130.0));
        }
        for v in [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            -f32::MAX,
            1e-45,
        ] {
            check(v);
        }
    }
}
