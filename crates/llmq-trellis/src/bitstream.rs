//! EXL3's packed trellis bitstream (exllamav3 `quant/pack.cu`, `quant/exl3_dq.cuh`,
//! `exl3_lib/quantize.py tensor_core_perm`).
//!
//! A 16×16 tile of weights is one tail-biting trellis of 256 steps. Stream position `t` holds tile
//! element [`TENSOR_CORE_PERM`]`[t]` (row-major `r·16 + c` inside the tile, `r` along the input
//! dimension): the mma fragment order the CUDA kernels decode straight into. Each step appends K
//! bits; the 16-bit state of step `t` is the stream's bits `[(t+1)·K − 16, (t+1)·K)` taken modulo
//! `256·K`, so the first states wrap around to the end of the tile (tail-biting, L = 16).
//!
//! The stream is stored MSB-first in `16·K` 16-bit words, and every pair of words is swapped
//! (word `2m+1` first), so that a little-endian uint32 read of the pair gives the stream MSB-first.
//! A tensor's tiles are stored `[tile_k][tile_n]`, the `trellis` tensor `(in/16, out/16, 16·K)`.

/// Weights per tile.
pub const TILE: usize = 256;
/// Bits per trellis state.
pub const STATE_BITS: u32 = 16;

/// `TENSOR_CORE_PERM[t]` = the row-major tile element at stream position `t`.
pub const TENSOR_CORE_PERM: [u16; TILE] = tensor_core_perm();

const fn tensor_core_perm() -> [u16; TILE] {
    let mut p = [0u16; TILE];
    let mut t = 0;
    while t < 32 {
        let r0 = (t % 4) * 2;
        let rows = [r0, r0 + 1, r0 + 8, r0 + 9];
        let c0 = t / 4;
        let mut i = 0;
        while i < 8 {
            let r = rows[i % 4];
            let c = if i < 4 { c0 } else { c0 + 8 };
            p[t * 8 + i] = (r * 16 + c) as u16;
            i += 1;
        }
        t += 1;
    }
    p
}

/// Words (int16) per tile at `k` bits per weight.
pub fn tile_words(k: u32) -> usize {
    16 * k as usize
}

/// Packs one tile's 256 states (stream order) into `16·k` stored words: the low `k` bits of each
/// state, MSB-first, word pairs swapped.
pub fn pack_tile(states: &[u16], k: u32, out: &mut [i16]) {
    assert!((1..=8).contains(&k) && states.len() == TILE && out.len() == tile_words(k));
    let mut words = [0u16; 128];
    let mask = (1u32 << k) - 1;
    for (t, &s) in states.iter().enumerate() {
        let v = s as u32 & mask;
        for b in 0..k {
            if v >> (k - 1 - b) & 1 == 1 {
                let p = t * k as usize + b as usize;
                words[p / 16] |= 0x8000 >> (p % 16);
            }
        }
    }
    for (m, pair) in out.chunks_exact_mut(2).enumerate() {
        pair[0] = words[2 * m + 1] as i16;
        pair[1] = words[2 * m] as i16;
    }
}

/// The stream bits of a stored tile as one MSB-first integer sequence of u32 (what the CUDA
/// decoder reads).
fn stream_u32(stored: &[i16]) -> Vec<u32> {
    stored
        .chunks_exact(2)
        .map(|p| (p[0] as u16 as u32) | ((p[1] as u16 as u32) << 16))
        .collect()
}

/// The 256 16-bit states of a stored tile, in stream order (inverse of [`pack_tile`] for states
/// that follow the trellis, i.e. `state_t = (state_{t−1} << k | code_t) & 0xFFFF`).
pub fn unpack_tile(stored: &[i16], k: u32) -> [u16; TILE] {
    assert!((1..=8).contains(&k) && stored.len() == tile_words(k));
    let w = stream_u32(stored);
    let nbits = (TILE as u32 * k) as usize;
    let bit = |p: usize| (w[(p % nbits) / 32] >> (31 - (p % 32))) & 1;
    let mut out = [0u16; TILE];
    for (t, o) in out.iter_mut().enumerate() {
        let end = (t + 1) * k as usize + nbits;
        let mut s = 0u32;
        for p in end - 16..end {
            s = (s << 1) | bit(p);
        }
        *o = s as u16;
    }
    out
}

/// Packs a whole tensor: `states` is `[tiles_k][tiles_n][256]` (stream order inside each tile);
/// returns the `trellis` tensor `(tiles_k, tiles_n, 16·k)` flattened.
pub fn pack_tensor(states: &[u16], k: u32) -> Vec<i16> {
    assert_eq!(states.len() % TILE, 0);
    let words = tile_words(k);
    let mut out = vec![0i16; states.len() / TILE * words];
    for (s, o) in states.chunks_exact(TILE).zip(out.chunks_exact_mut(words)) {
        pack_tile(s, k, o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perm_is_a_permutation_and_matches_the_mma_layout() {
        let mut seen = [false; TILE];
        for &p in &TENSOR_CORE_PERM {
            assert!(!seen[p as usize]);
            seen[p as usize] = true;
        }
        // t = 0: rows 0, 1, 8, 9 of column 0, then of column 8; t = 5: r0 = 2, c0 = 1.
        assert_eq!(&TENSOR_CORE_PERM[..8], &[0, 16, 128, 144, 8, 24, 136, 152]);
        assert_eq!(
            &TENSOR_CORE_PERM[40..48],
            &[33, 49, 161, 177, 41, 57, 169, 185]
        );
    }

    /// K = 4, codes c_t = t mod 16: the stream reads 0x0123 0x4567 0x89AB 0xCDEF … word by word,
    /// stored with each pair swapped.
    #[test]
    fn hand_computed_tile_k4() {
        let k = 4;
        let mut states = [0u16; TILE];
        let mut s = 0u32;
        // run twice round the ring so the first states carry the wrapped-around codes
        for pass in 0..2 {
            for (t, st) in states.iter_mut().enumerate() {
                s = ((s << k) | (t as u32 % 16)) & 0xffff;
                if pass == 1 {
                    *st = s as u16;
                }
            }
        }
        let mut packed = vec![0i16; tile_words(k)];
        pack_tile(&states, k, &mut packed);
        let expect: Vec<i16> = [0x4567u16, 0x0123, 0xCDEF, 0x89AB]
            .iter()
            .cycle()
            .take(64)
            .map(|&w| w as i16)
            .collect();
        assert_eq!(packed, expect);
        let back = unpack_tile(&packed, k);
        assert_eq!(back, states);
        // tail-biting: state 0 holds codes 13, 14, 15 (end of the ring) then 0
        assert_eq!(back[0], 0xDEF0);
        assert_eq!(back[5], 0x2345);
    }

    /// K = 3: codes cross word boundaries; states built from a pseudo-random code sequence round-trip.
    #[test]
    fn round_trip_every_k() {
        for k in 1..=8u32 {
            let mut x = 0x1234_5678u32;
            let codes: Vec<u32> = (0..TILE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x & ((1 << k) - 1)
                })
                .collect();
            let n = TILE;
            let states: Vec<u16> = (0..n)
                .map(|t| {
                    let mut s = 0u32;
                    for j in 0..16usize.div_ceil(k as usize) {
                        let c = codes[(t + n * 2 - j) % n];
                        s |= c << (j as u32 * k);
                    }
                    (s & 0xffff) as u16
                })
                .collect();
            let mut packed = vec![0i16; tile_words(k)];
            pack_tile(&states, k, &mut packed);
            assert_eq!(unpack_tile(&packed, k).to_vec(), states, "k = {k}");
        }
    }

    /// K = 1 by hand: codes 1, 0, 0, … 0 give the stream 0x8000 0x0000 …, stored as 0x0000 0x8000.
    #[test]
    fn hand_computed_tile_k1() {
        let mut states = [0u16; TILE];
        for (t, s) in states.iter_mut().enumerate() {
            // the single 1 bit at position 0 shifts up by one per step
            *s = if t < 16 { 1 << t } else { 0 };
        }
        let mut packed = vec![0i16; 16];
        pack_tile(&states, 1, &mut packed);
        let mut expect = vec![0i16; 16];
        expect[1] = 0x8000u16 as i16;
        assert_eq!(packed, expect);
        assert_eq!(unpack_tile(&packed, 1), states);
    }
}
