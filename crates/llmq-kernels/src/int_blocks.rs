//! Block layout for group-wise integer weights (the GPTQ / AWQ / compressed-tensors
//! family, whose dequantization is `w = scale · (q − zero)` with one f16 scale and one
//! integer zero point per group of input columns; see `shared/docs/reference-facts.md`
//! §5a–5c). Checkpoints are repacked into this layout once at load time, losslessly:
//! every value a kernel sees is the checkpoint's integer code, scale and zero.
//!
//! A row is `cols / block` blocks of `block` consecutive (possibly act-order permuted,
//! see [`crate::tensor::ColumnOrder`]) input columns, all in one quantization group:
//!
//! | bytes | content |
//! |---|---|
//! | 0..2 | scale, f16 little endian |
//! | 2 | zero point (8-bit: stored `zero ^ 0x80`, i.e. `zero − 128` as i8) |
//! | 3.. | the codes |
//!
//! Codes: 4-bit blocks of 32 use ggml's Q4_0 order (byte `j` holds column `j` in its
//! low nibble and column `j + 16` in its high nibble); 8-bit codes are stored
//! `q ^ 0x80` (signed `q − 128`); every other case is a dense LSB-first bit stream
//! (value `i` at bit `bits·i`). `block` is 32 whenever group boundaries allow it (the
//! fast kernels need it); otherwise the largest power of two dividing every group run.

use half::f16;

/// Bytes before the codes in each block.
pub const INT_HEADER_BYTES: usize = 3;

/// Bytes of one block of `block` codes of `bits` bits.
pub fn int_block_bytes(bits: u8, block: usize) -> usize {
    INT_HEADER_BYTES + (block * bits as usize).div_ceil(8)
}

/// Writes one block: `codes.len()` is the block length.
pub fn pack_int_block(bits: u8, scale: f16, zero: u8, codes: &[u8], out: &mut [u8]) {
    let block = codes.len();
    debug_assert_eq!(out.len(), int_block_bytes(bits, block));
    out[..2].copy_from_slice(&scale.to_bits().to_le_bytes());
    out[2] = if bits == 8 { zero ^ 0x80 } else { zero };
    let qs = &mut out[INT_HEADER_BYTES..];
    qs.fill(0);
    match (bits, block) {
        (8, _) => {
            for (o, &q) in qs.iter_mut().zip(codes) {
                *o = q ^ 0x80;
            }
        }
        (4, 32) => {
            for j in 0..16 {
                qs[j] = (codes[j] & 0xF) | (codes[j + 16] << 4);
            }
        }
        _ => {
            for (i, &q) in codes.iter().enumerate() {
                let bit = i * bits as usize;
                let v = (q as u32) << (bit % 8);
                qs[bit / 8] |= v as u8;
                if bit % 8 + bits as usize > 8 {
                    qs[bit / 8 + 1] |= (v >> 8) as u8;
                }
            }
        }
    }
}

/// `(scale, zero)` of a block and its codes into `codes` (`codes.len()` = block).
#[inline]
pub fn unpack_int_block(bits: u8, src: &[u8], codes: &mut [u8]) -> (f32, u8) {
    let block = codes.len();
    let scale = f16::from_bits(u16::from_le_bytes([src[0], src[1]])).to_f32();
    let qs = &src[INT_HEADER_BYTES..];
    match (bits, block) {
        (8, _) => {
            for (c, &q) in codes.iter_mut().zip(qs) {
                *c = q ^ 0x80;
            }
            (scale, src[2] ^ 0x80)
        }
        (4, 32) => {
            for j in 0..16 {
                codes[j] = qs[j] & 0xF;
                codes[j + 16] = qs[j] >> 4;
            }
            (scale, src[2])
        }
        _ => {
            let mask = (1u32 << bits) - 1;
            for (i, c) in codes.iter_mut().enumerate() {
                let bit = i * bits as usize;
                let lo = qs[bit / 8] as u32;
                let hi = qs.get(bit / 8 + 1).copied().unwrap_or(0) as u32;
                *c = (((lo | (hi << 8)) >> (bit % 8)) & mask) as u8;
            }
            (scale, src[2])
        }
    }
}

/// Dequantizes one packed row (`out.len()` values, in stored column order).
pub fn dequantize_int_row(bits: u8, block: usize, src: &[u8], out: &mut [f32]) {
    let bb = int_block_bytes(bits, block);
    let mut codes = [0u8; 32];
    for (ob, sb) in out.chunks_exact_mut(block).zip(src.chunks_exact(bb)) {
        let (s, z) = unpack_int_block(bits, sb, &mut codes[..block]);
        for (o, &q) in ob.iter_mut().zip(&codes[..block]) {
            *o = s * (q as f32 - z as f32);
        }
    }
}

/// A group-wise integer weight in the checkpoints' terms (PyTorch orientation
/// `[rows = out_features, cols = in_features]`), ready to be repacked.
#[derive(Clone, Copy, Debug)]
pub struct IntGroups<'a> {
    /// 2..=8
    pub bits: u8,
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]` codes, each `< 2^bits`
    pub q: &'a [u8],
    /// `[rows, n_groups]`
    pub scales: &'a [f16],
    /// `[rows, n_groups]`, each `< 2^bits`
    pub zeros: &'a [u8],
    pub n_groups: usize,
    /// group of each input column (`cols` entries, each `< n_groups`)
    pub group_of_col: &'a [u32],
}

/// The repacked weight: packed rows, the block length and the column order (`None`
/// when the stored order is the natural one).
pub struct PackedInt {
    pub bits: u8,
    pub block: usize,
    pub data: Vec<u8>,
    pub perm: Option<Vec<u32>>,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl IntGroups<'_> {
    /// Checks sizes and ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=8).contains(&self.bits) {
            return Err(format!("{} bits (2..=8 supported)", self.bits));
        }
        let (r, c, g) = (self.rows, self.cols, self.n_groups);
        if self.q.len() != r * c
            || self.scales.len() != r * g
            || self.zeros.len() != r * g
            || self.group_of_col.len() != c
        {
            return Err(format!(
                "sizes: q {} scales {} zeros {} g_idx {} for [{r}, {c}] with {g} groups",
                self.q.len(),
                self.scales.len(),
                self.zeros.len(),
                self.group_of_col.len()
            ));
        }
        if c == 0 {
            return Err("no input columns".into());
        }
        let maxq = ((1u16 << self.bits) - 1) as u8;
        if self.q.iter().chain(self.zeros).any(|&v| v > maxq) {
            return Err(format!("a code or zero exceeds {maxq}"));
        }
        if self.group_of_col.iter().any(|&x| x as usize >= g) {
            return Err("g_idx entry out of range".into());
        }
        Ok(())
    }

    /// Repacks into blocks: columns are (stably) sorted by group so that every group is
    /// contiguous, and the block length is 32 when every group run is a multiple of 32.
    pub fn pack(&self) -> Result<PackedInt, String> {
        self.validate()?;
        let (rows, cols, ng) = (self.rows, self.cols, self.n_groups);
        let sorted = self.group_of_col.windows(2).all(|w| w[0] <= w[1]);
        let perm: Option<Vec<u32>> = (!sorted).then(|| {
            let mut p: Vec<u32> = (0..cols as u32).collect();
            p.sort_by_key(|&i| self.group_of_col[i as usize]);
            p
        });
        let col_at = |j: usize| perm.as_ref().map_or(j, |p| p[j] as usize);
        // group runs in stored order
        let mut block = 32usize;
        let mut run = 0usize;
        for j in 0..cols {
            if j > 0 && self.group_of_col[col_at(j)] != self.group_of_col[col_at(j - 1)] {
                block = gcd(block, run);
                run = 0;
            }
            run += 1;
        }
        block = gcd(block, run);
        let bb = int_block_bytes(self.bits, block);
        let nb = cols / block;
        let mut data = vec![0u8; rows * nb * bb];
        let mut codes = vec![0u8; block];
        for r in 0..rows {
            let qrow = &self.q[r * cols..(r + 1) * cols];
            for b in 0..nb {
                let g = self.group_of_col[col_at(b * block)] as usize;
                for (k, c) in codes.iter_mut().enumerate() {
                    *c = qrow[col_at(b * block + k)];
                }
                let off = (r * nb + b) * bb;
                pack_int_block(
                    self.bits,
                    self.scales[r * ng + g],
                    self.zeros[r * ng + g],
                    &codes,
                    &mut data[off..off + bb],
                );
            }
        }
        Ok(PackedInt {
            bits: self.bits,
            block,
            data,
            perm,
        })
    }
}
