//! The three procedural codebooks of EXL3 (exllamav3 `exllamav3_ext/quant/codebook.cuh`), mapping a
//! 16-bit trellis state to an fp16 value, computed bit for bit as the CUDA code does.
//!
//! * `3INST` (QTIP, Tseng et al., arXiv 2406.11235, §3.1): `x = x·89226354 + 64248484`, then
//!   `x = (x & 0x8fff8fff) ^ 0x3b603b60`, value = fp16(low half) + fp16(high half), one fp16 rounding.
//! * `MCG`: `x = x·0xCBAC1FED`, then the same mask, xor and two-half sum.
//! * `MUL1`: `x = x·0x83DCD12D`; the byte sum `s` of `x` gives the fp16 `1024 + s`, and the value is
//!   the fused `(1024 + s)·h(0x1EEE) + h(0xC931)` rounded once to fp16 (≈ (s − 510)/147.7).
//!
//! All products are modulo 2³². An fp16 product of two fp16 values plus a third is exact in f64, so
//! rounding that f64 once to fp16 reproduces `__hfma`; the same holds for `__hadd`.

use half::f16;

/// Multiplier of the MCG codebook; also the value exllamav3 stores in the `mcg` marker tensor.
pub const MCG_MULT: u32 = 0xCBAC_1FED;
/// Multiplier of the MUL1 codebook; also the value stored in the `mul1` marker tensor.
pub const MUL1_MULT: u32 = 0x83DC_D12D;
/// exllamav3's `codebook_scale`: the input scales are divided by minus this (`quantize.py`).
pub const CODEBOOK_SCALE: f64 = 1.243_710_88;

/// Which codebook a tensor's trellis is decoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codebook {
    /// QTIP's 3INST; no marker tensor.
    Inst3,
    /// Multiplicative congruential; marker tensor `mcg`.
    Mcg,
    /// Multiply and byte sum; marker tensor `mul1` (exllamav3's default since 2026-07).
    Mul1,
}

impl Codebook {
    /// The name used in `quantization_config.codebook` (`3inst`, `mcg`, `mul1`).
    pub fn name(self) -> &'static str {
        match self {
            Codebook::Inst3 => "3inst",
            Codebook::Mcg => "mcg",
            Codebook::Mul1 => "mul1",
        }
    }

    /// Parses [`Codebook::name`].
    pub fn from_name(s: &str) -> Option<Codebook> {
        match s {
            "3inst" => Some(Codebook::Inst3),
            "mcg" => Some(Codebook::Mcg),
            "mul1" => Some(Codebook::Mul1),
            _ => None,
        }
    }

    /// The marker tensor's suffix and its int32 value (the multiplier's bits), `None` for 3INST.
    pub fn marker(self) -> Option<(&'static str, i32)> {
        match self {
            Codebook::Inst3 => None,
            Codebook::Mcg => Some(("mcg", MCG_MULT as i32)),
            Codebook::Mul1 => Some(("mul1", MUL1_MULT as i32)),
        }
    }

    /// The fp16 value of a 16-bit state.
    pub fn decode(self, state: u16) -> f16 {
        let x = state as u32;
        match self {
            Codebook::Inst3 => two_halves(x.wrapping_mul(89_226_354).wrapping_add(64_248_484)),
            Codebook::Mcg => two_halves(x.wrapping_mul(MCG_MULT)),
            Codebook::Mul1 => byte_sum(x.wrapping_mul(MUL1_MULT)),
        }
    }

    /// All 65536 states decoded, as f32 (the Viterbi encoder's table).
    pub fn table(self) -> Vec<f32> {
        (0..=u16::MAX).map(|s| self.decode(s).to_f32()).collect()
    }

    /// [`Codebook::table`], built once per process and shared (the fused products'
    /// decoding table).
    pub fn shared_table(self) -> &'static [f32] {
        static TABLES: [std::sync::OnceLock<Vec<f32>>; 3] = [
            std::sync::OnceLock::new(),
            std::sync::OnceLock::new(),
            std::sync::OnceLock::new(),
        ];
        let i = match self {
            Codebook::Inst3 => 0,
            Codebook::Mcg => 1,
            Codebook::Mul1 => 2,
        };
        TABLES[i].get_or_init(|| self.table())
    }
}

fn two_halves(x: u32) -> f16 {
    let x = (x & 0x8fff_8fff) ^ 0x3b60_3b60;
    let lo = f16::from_bits(x as u16).to_f64();
    let hi = f16::from_bits((x >> 16) as u16).to_f64();
    f16::from_f64(lo + hi)
}

fn byte_sum(x: u32) -> f16 {
    let s = x.to_le_bytes().iter().map(|&b| b as u32).sum::<u32>() + 0x6400;
    let h = f16::from_bits(s as u16).to_f64();
    let k_inv = f16::from_bits(0x1eee).to_f64();
    let k_bias = f16::from_bits(0xc931).to_f64();
    f16::from_f64(h * k_inv + k_bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        // 3INST, state 0: x = 64248484 = 0x03D45AA4 → masked/xored 0x38B431C4;
        // fp16 0x31C4 = 0.18017578125, 0x38B4 = 0.587890625, sum 0.76806640625 (exact in fp16).
        assert_eq!(Codebook::Inst3.decode(0).to_f64(), 0.768_066_406_25);
        // MUL1, state 1: bytes of 0x83DCD12D sum to 605 → fp16 1629;
        // 1629·0.006767578125 − 10.3828125 = 0.64105224609375 → fp16 0.64111328125.
        assert_eq!(Codebook::Mul1.decode(1).to_f64(), 0.641_113_281_25);
        // MCG, state 0: x = 0 → 0x3B603B60, both halves fp16 0.921875, sum 1.84375.
        assert_eq!(Codebook::Mcg.decode(0).to_f64(), 1.843_75);
    }

    #[test]
    fn codebooks_are_roughly_standard_gaussian() {
        for cb in [Codebook::Inst3, Codebook::Mcg, Codebook::Mul1] {
            let t = cb.table();
            let mean = t.iter().map(|&v| v as f64).sum::<f64>() / t.len() as f64;
            let var = t.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / t.len() as f64;
            assert!(mean.abs() < 0.05, "{cb:?} mean {mean}");
            assert!((0.5..2.0).contains(&var), "{cb:?} var {var}");
        }
    }

    #[test]
    fn names_round_trip() {
        for cb in [Codebook::Inst3, Codebook::Mcg, Codebook::Mul1] {
            assert_eq!(Codebook::from_name(cb.name()), Some(cb));
        }
        assert_eq!(
            Codebook::Mul1.marker(),
            Some(("mul1", 0x83DC_D12Du32 as i32))
        );
    }
}
