//! The small float formats of the OCP Microscaling spec (OCP MX v1.0) and NVIDIA's
//! FP8: E2M1 (FP4, the element type of MXFP4 and NVFP4), E4M3 (`float8_e4m3fn`: bias 7,
//! no infinities, max 448, NaN `0x7F`/`0xFF`) and E8M0 (the MX block scale: an unsigned
//! power of two `2^(e − 127)`, `0xFF` NaN), as codes and back.
//!
//! Encoders round to nearest with ties to an even code (E2M1, E4M3: what torch's and
//! ml_dtypes' casts do) and saturate at the largest finite value instead of producing
//! NaN. The E8M0 encoder rounds the way torch's `float8_e8m0fnu` cast does: up when the
//! f32 mantissa is at least one half (so 1.5 → 2, 1.25 → 1). The CI test
//! `minifloat_reference` (in `llm-quantize/tests/fp_formats.rs`) checks all three against
//! torch over a dense table of values.

/// The 8 magnitudes of E2M1, by code (`code & 7`); bit 3 is the sign.
pub const E2M1_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// E2M1 values doubled, as signed integers, by 4-bit code: llama.cpp's `kvalues_mxfp4`
/// (`kvalues_fp4` in `ggml-common.h`), used with a half scale.
pub const E2M1_DOUBLED: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest E2M1 value.
pub const E2M1_MAX: f32 = 6.0;

/// The value of a 4-bit E2M1 code.
#[inline]
pub fn e2m1_to_f32(code: u8) -> f32 {
    let v = E2M1_VALUES[(code & 7) as usize];
    if code & 8 != 0 {
        -v
    } else {
        v
    }
}

/// The E2M1 code nearest `x` (ties to the even code, saturating at ±6, NaN → +0 code 0).
/// The sign bit is the sign of `x`, so a small negative value gives code 8 (−0).
#[inline]
pub fn f32_to_e2m1(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let sign = if x.is_sign_negative() { 8 } else { 0 };
    let a = x.abs();
    // midpoints between consecutive magnitudes; on a midpoint the even code wins
    const MID: [f32; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
    let mut code = 0u8;
    for (k, &m) in MID.iter().enumerate() {
        // code k+1 is odd when k is even
        let up = if k % 2 == 0 { a > m } else { a >= m };
        if up {
            code = k as u8 + 1;
        }
    }
    sign | code
}

/// The value of an E4M3 (`float8_e4m3fn`) byte.
#[inline]
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = (b >> 3) & 15;
    let m = (b & 7) as f32;
    if e == 15 && b & 7 == 7 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m * (1.0 / 512.0)
    } else {
        (1.0 + m / 8.0) * f32::powi(2.0, e as i32 - 7)
    };
    sign * mag
}

/// The E4M3 byte nearest `x`: round to nearest even, saturating at ±448; NaN → `0x7F`.
#[inline]
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7E;
    }
    if a < f32::powi(2.0, -6) {
        // subnormals are multiples of 2^-9; code 8 is the smallest normal, 2^-6
        let q = (a * 512.0).round_ties_even() as u8;
        return sign | q;
    }
    let e = ((a.to_bits() >> 23) & 0xFF) as i32 - 127;
    let m = a / f32::powi(2.0, e); // in [1, 2), exact
    let mut mq = ((m - 1.0) * 8.0).round_ties_even() as i32;
    let mut e = e;
    if mq == 8 {
        mq = 0;
        e += 1;
    }
    let code = (((e + 7) as u8) << 3) | mq as u8;
    sign | code.min(0x7E)
}

/// The value of an E8M0 byte, `2^(e − 127)` (`0xFF` is NaN).
#[inline]
pub fn e8m0_to_f32(e: u8) -> f32 {
    if e == 0xFF {
        return f32::NAN;
    }
    if e == 0 {
        return f32::from_bits(0x0040_0000); // 2^-127, an f32 subnormal
    }
    f32::from_bits((e as u32) << 23)
}

/// The E8M0 byte for a positive `x` as torch's cast computes it: the f32 exponent,
/// plus one when the mantissa is at least one half (f32 subnormals included: those at
/// least `2^-127` give 1); `x ≤ 0` → 0, saturating at 254 (`2^127`).
#[inline]
pub fn f32_to_e8m0(x: f32) -> u8 {
    if x.is_nan() {
        return 0xFF;
    }
    if x <= 0.0 {
        return 0;
    }
    let bits = x.to_bits();
    let e = (bits >> 23) & 0xFF;
    let up = u32::from(bits & 0x40_0000 != 0);
    (e + up).min(254) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_round_trips_and_rounds_to_even() {
        for c in 0..16u8 {
            let v = e2m1_to_f32(c);
            assert_eq!(f32_to_e2m1(v) & 7, c & 7, "{c}");
            assert_eq!(e2m1_to_f32(c) * 2.0, E2M1_DOUBLED[c as usize] as f32);
        }
        assert_eq!(f32_to_e2m1(0.25), 0);
        assert_eq!(f32_to_e2m1(0.75), 2);
        assert_eq!(f32_to_e2m1(1.25), 2);
        assert_eq!(f32_to_e2m1(1.75), 4);
        assert_eq!(f32_to_e2m1(2.5), 4);
        assert_eq!(f32_to_e2m1(5.0), 6);
        assert_eq!(f32_to_e2m1(100.0), 7);
        assert_eq!(f32_to_e2m1(-0.1), 8);
    }

    #[test]
    fn e4m3_round_trips() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if v.is_nan() {
                continue;
            }
            let back = f32_to_e4m3(v);
            assert_eq!(e4m3_to_f32(back), v, "{b:#x}");
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(f32_to_e4m3(1000.0), 0x7E);
        assert_eq!(e4m3_to_f32(1), 1.0 / 512.0);
    }

    #[test]
    fn e8m0_powers() {
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(f32_to_e8m0(1.5), 128);
        assert_eq!(f32_to_e8m0(1.25), 127);
        assert_eq!(f32_to_e8m0(0.0), 0);
    }
}
