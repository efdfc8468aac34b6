//! The GGML tensor types: ids, block sizes and bytes per block, as laid out in
//! llama.cpp's `ggml/src/ggml-common.h` and listed in `ggml/docs/gguf.md`. The enum
//! names every id GGUF files use; what each type's bytes look like is its row of
//! [`TYPE_LAYOUTS`], which lives beside the block structs in [`crate::blocks`].

pub use crate::blocks::{TypeLayout, ALL_TYPES, TYPE_LAYOUTS};
use std::fmt;

/// A GGML tensor element type. Discriminants are the on-disk type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    IQ2XXS = 16,
    IQ2XS = 17,
    IQ3XXS = 18,
    IQ1S = 19,
    IQ4NL = 20,
    IQ3S = 21,
    IQ2S = 22,
    IQ4XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
}

/// Row index in [`TYPE_LAYOUTS`] by type id (`u8::MAX`: unknown id).
const ROW_OF_ID: [u8; 64] = {
    let mut idx = [u8::MAX; 64];
    let mut i = 0;
    while i < TYPE_LAYOUTS.len() {
        idx[TYPE_LAYOUTS[i].ty as usize] = i as u8;
        i += 1;
    }
    idx
};

impl GgmlType {
    /// The type with on-disk id `id`, if known.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        let row = *ROW_OF_ID.get(id as usize)?;
        (row != u8::MAX).then(|| TYPE_LAYOUTS[row as usize].ty)
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// This type's row of the type table.
    #[inline]
    pub fn layout(self) -> &'static TypeLayout {
        &TYPE_LAYOUTS[ROW_OF_ID[self as usize] as usize]
    }

    /// Elements per block (1 for plain types).
    #[inline]
    pub fn block_size(self) -> usize {
        self.layout().block_size
    }

    /// Bytes per block (per element for plain types).
    #[inline]
    pub fn type_size(self) -> usize {
        self.layout().type_size
    }

    /// Bytes of one row of `n` elements; `None` when `n` is not a multiple of the block.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_size())
            .then(|| n / self.block_size() * self.type_size())
    }

    /// Bits per weight.
    pub fn bpw(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// Whether this is a block-quantized type (not a plain float or integer).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// The name llama.cpp prints (`q4_K`, `iq4_xs`, `f16`, ...), upper-cased the way
    /// `llama-quantize` names file types in its help (`Q4_K`, `IQ4_XS`).
    pub fn name(self) -> &'static str {
        self.layout().name
    }

    /// Parse a name as printed by [`GgmlType::name`] (case-insensitive).
    pub fn from_name(s: &str) -> Option<GgmlType> {
        ALL_TYPES
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml_common() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert_eq!(GgmlType::from_name(t.name()), Some(*t));
        }
        assert_eq!(GgmlType::Q4K.bpw(), 4.5);
        assert_eq!(GgmlType::Q6K.bpw(), 6.5625);
        assert_eq!(GgmlType::IQ4XS.bpw(), 4.25);
        assert_eq!(GgmlType::NVFP4.bpw(), 4.5);
        assert_eq!(GgmlType::from_id(40), Some(GgmlType::NVFP4));
        assert_eq!(GgmlType::Q3K.row_bytes(512), Some(220));
        assert_eq!(GgmlType::Q3K.row_bytes(100), None);
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(1000), None);
        for (i, row) in TYPE_LAYOUTS.iter().enumerate() {
            assert_eq!(row.ty.layout(), row);
            assert!(
                i == 0 || TYPE_LAYOUTS[i - 1].ty < row.ty,
                "rows in id order"
            );
        }
    }
}
