//! Reconstruction of an EXL3 linear layer (exllamav3 `exl3.py get_weight_tensor`):
//! `W = diag(suh) · H · Ŵ · H · diag(svh)` in (in, out) orientation, where `Ŵ` is the matrix of
//! decoded tiles ([`crate::bitstream`], [`crate::codebook`]) and `H` the block-diagonal 128
//! Hadamard ([`crate::hadamard`]).

use crate::bitstream::{tile_words, unpack_tile, TENSOR_CORE_PERM, TILE};
use crate::codebook::Codebook;
use crate::hadamard::{had_left, had_right};
use half::f16;

/// One stored tile decoded into a row-major 16×16 block (f16 values as f32).
pub fn decode_tile(stored: &[i16], k: u32, cb: Codebook) -> [f32; TILE] {
    let states = unpack_tile(stored, k);
    let mut out = [0f32; TILE];
    for (t, &s) in states.iter().enumerate() {
        out[TENSOR_CORE_PERM[t] as usize] = cb.decode(s).to_f32();
    }
    out
}

/// The decoded matrix `Ŵ` (row-major `in × out`) of a `trellis` tensor `(in/16, out/16, 16·k)`.
pub fn decode_trellis(
    trellis: &[i16],
    in_f: usize,
    out_f: usize,
    k: u32,
    cb: Codebook,
) -> Vec<f32> {
    let (tk, tn) = (in_f / 16, out_f / 16);
    let words = tile_words(k);
    assert_eq!(trellis.len(), tk * tn * words, "trellis shape");
    let mut w = vec![0f32; in_f * out_f];
    for i in 0..tk {
        for j in 0..tn {
            let t = decode_tile(&trellis[(i * tn + j) * words..][..words], k, cb);
            for r in 0..16 {
                w[(i * 16 + r) * out_f + j * 16..][..16].copy_from_slice(&t[r * 16..][..16]);
            }
        }
    }
    w
}

/// The full weight, row-major `in × out` (transpose of the Hugging Face `weight`).
pub fn reconstruct(trellis: &[i16], suh: &[f16], svh: &[f16], k: u32, cb: Codebook) -> Vec<f32> {
    let (in_f, out_f) = (suh.len(), svh.len());
    let mut w = decode_trellis(trellis, in_f, out_f, k, cb);
    unrotate(&mut w, suh, svh);
    w
}

/// `W ← diag(su) · H · W · H · diag(sv)` in place (row-major `in × out`).
pub fn unrotate(w: &mut [f32], su: &[f16], sv: &[f16]) {
    let out_f = sv.len();
    had_left(w, out_f);
    for (row, s) in w.chunks_exact_mut(out_f).zip(su) {
        let s = s.to_f32();
        row.iter_mut().for_each(|x| *x *= s);
    }
    had_right(w, out_f);
    for row in w.chunks_exact_mut(out_f) {
        for (x, s) in row.iter_mut().zip(sv) {
            *x *= s.to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitstream::pack_tile;

    /// A tile whose stream position t holds code t mod 16 at K = 4: every state is known by hand,
    /// so every decoded element is `cb.decode(state)` at the permuted position.
    #[test]
    fn decodes_a_known_packed_tile() {
        let stored: Vec<i16> = [0x4567u16, 0x0123, 0xCDEF, 0x89AB]
            .iter()
            .cycle()
            .take(64)
            .map(|&w| w as i16)
            .collect();
        let tile = decode_tile(&stored, 4, Codebook::Inst3);
        // stream position 0 (state 0xDEF0) is element (0, 0); position 1 (0xEF01) is (1, 0);
        // position 4 (0x1234) is (0, 8)
        assert_eq!(tile[0], Codebook::Inst3.decode(0xDEF0).to_f32());
        assert_eq!(tile[16], Codebook::Inst3.decode(0xEF01).to_f32());
        assert_eq!(tile[8], Codebook::Inst3.decode(0x1234).to_f32());
        let mut states = [0u16; TILE];
        pack_and_check(&mut states);
    }

    fn pack_and_check(states: &mut [u16; TILE]) {
        // a constant code stream: every state equal, every element the same value
        states.iter_mut().for_each(|s| *s = 0xAAAA);
        let mut stored = vec![0i16; 32];
        pack_tile(states, 2, &mut stored);
        let v = Codebook::Mul1.decode(0xAAAA).to_f32();
        assert!(decode_tile(&stored, 2, Codebook::Mul1)
            .iter()
            .all(|&x| x == v));
    }
}
