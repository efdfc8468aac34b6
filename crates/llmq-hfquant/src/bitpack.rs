//! Dense LSB-first bit streams in 32-bit words: value `i` of a stream occupies bits
//! `bits*i .. bits*(i+1)` of the concatenated little-endian words, so for 3 bits
//! values straddle word boundaries (value 10 has its low 2 bits in bits 30..31 of
//! word 0 and its high bit in bit 0 of word 1).
//!
//! This one stream is what all three layouts use:
//! - GPTQ (AutoGPTQ `qlinear_cuda_old.py` `pack`, GPTQModel `pack_block`): 2/4/8 bits
//!   never straddle, and the 3-bit special case packs 32 values into 3 words exactly
//!   this way (GPTQModel `dequantize_weight` reassembles value 10 from word 0 bits
//!   30..31 and word 1 bit 0, value 21 from word 1 bit 31 and word 2 bits 0..1).
//! - compressed-tensors `pack_to_int32` (`compressors/pack_quantized/helpers.py`):
//!   "dense cross-element packing", `ceil(n*bits/32)` words.
//! - AutoAWQ GEMM: 4 bits, plus a column permutation applied before packing.

/// Number of 32-bit words holding `n` values of `bits` bits.
pub fn words_for(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(32)
}

/// Packs `vals` (each `< 2^bits`, higher bits ignored) into `words_for(len, bits)`
/// words; the unused high bits of the last word are zero.
pub fn pack_stream(vals: impl IntoIterator<Item = u8>, bits: u8) -> Vec<u32> {
    debug_assert!((1..=8).contains(&bits));
    let mask = (1u64 << bits) - 1;
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut nacc: u32 = 0;
    for v in vals {
        acc |= (v as u64 & mask) << nacc;
        nacc += bits as u32;
        if nacc >= 32 {
            out.push(acc as u32);
            acc >>= 32;
            nacc -= 32;
        }
    }
    if nacc > 0 {
        out.push(acc as u32);
    }
    out
}

/// Reads `n` values of `bits` bits from a stream written by [`pack_stream`].
/// `words` must hold at least `words_for(n, bits)` words.
pub fn unpack_stream(words: &[u32], bits: u8, n: usize) -> Vec<u8> {
    debug_assert!((1..=8).contains(&bits));
    debug_assert!(words.len() >= words_for(n, bits));
    let mask = (1u64 << bits) - 1;
    let mut out = Vec::with_capacity(n);
    let mut acc: u64 = 0;
    let mut nacc: u32 = 0;
    let mut it = words.iter();
    for _ in 0..n {
        if nacc < bits as u32 {
            let w = *it.next().expect("enough words") as u64;
            acc |= w << nacc;
            nacc += 32;
        }
        out.push((acc & mask) as u8);
        acc >>= bits;
        nacc -= bits as u32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_bit_straddles_like_gptq() {
        // value 10 = 0b101: bits 30,31 of word 0 hold 0b01, bit 0 of word 1 holds 1.
        let mut vals = [0u8; 32];
        vals[10] = 0b101;
        let w = pack_stream(vals, 3);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0], 0b01 << 30);
        assert_eq!(w[1], 1);
        assert_eq!(w[2], 0);
        // value 21 = 0b110: bit 31 of word 1 holds 0, bits 0..1 of word 2 hold 0b11.
        let mut vals = [0u8; 32];
        vals[21] = 0b110;
        let w = pack_stream(vals, 3);
        assert_eq!(w, vec![0, 0, 0b11]);
        assert_eq!(unpack_stream(&w, 3, 32), vals.to_vec());
    }

    #[test]
    fn four_bit_nibbles_low_first() {
        let w = pack_stream([1, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_eq!(w, vec![0x8765_4321]);
    }

    #[test]
    fn roundtrip_all_widths_and_ragged_lengths() {
        for bits in 1..=8u8 {
            for n in [1usize, 7, 31, 32, 33, 100, 257] {
                let vals: Vec<u8> = (0..n)
                    .map(|i| ((i * 37 + 11) % (1 << bits)) as u8)
                    .collect();
                let w = pack_stream(vals.iter().copied(), bits);
                assert_eq!(w.len(), words_for(n, bits));
                assert_eq!(unpack_stream(&w, bits, n), vals, "bits {bits} n {n}");
            }
        }
    }
}
