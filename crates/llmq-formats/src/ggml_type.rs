//! The GGML tensor types: ids, block sizes and bytes per block, as laid out in
//! llama.cpp's `ggml/src/ggml-common.h` and listed in `ggml/docs/gguf.md`: one
//! [`TypeLayout`] row per type in [`TYPE_LAYOUTS`], block sizes taken from the structs
//! of [`crate::blocks`].

use crate::blocks::*;
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
}

/// One row of the type table: what the bytes of a type look like. The algorithms on
/// these bytes have rows of their own in the layers that know them (`llmq_quant::TYPES`:
/// quantize / dequantize; `llmq_kernels::kernels::KERNELS`: dot products), keyed by
/// the same [`GgmlType`], so this crate stays free of algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeLayout {
    pub ty: GgmlType,
    /// The name `llama-quantize` prints (`Q4_K`, `IQ4_XS`, `F16`).
    pub name: &'static str,
    /// Elements per block (1 for plain types).
    pub block_size: usize,
    /// Bytes per block (per element for plain types): the block struct's size where
    /// [`crate::blocks`] defines one.
    pub type_size: usize,
}

macro_rules! layouts {
    ($( $ty:ident $name:literal $block:expr, $size:expr; )+) => {
        /// The type table, in id order.
        pub const TYPE_LAYOUTS: &[TypeLayout] = &[
            $( TypeLayout { ty: GgmlType::$ty, name: $name, block_size: $block, type_size: $size }, )+
        ];
        /// Every known type, in id order.
        pub const ALL_TYPES: &[GgmlType] = &[ $( GgmlType::$ty, )+ ];
    };
}

layouts! {
    F32 "F32" 1, 4;
    F16 "F16" 1, 2;
    Q4_0 "Q4_0" QK, BlockQ4_0::BYTES;
    Q4_1 "Q4_1" QK, BlockQ4_1::BYTES;
    Q5_0 "Q5_0" QK, BlockQ5_0::BYTES;
    Q5_1 "Q5_1" QK, BlockQ5_1::BYTES;
    Q8_0 "Q8_0" QK, BlockQ8_0::BYTES;
    Q8_1 "Q8_1" QK, BlockQ8_1::BYTES;
    Q2K "Q2_K" QK_K, BlockQ2K::BYTES;
    Q3K "Q3_K" QK_K, BlockQ3K::BYTES;
    Q4K "Q4_K" QK_K, BlockQ4K::BYTES;
    Q5K "Q5_K" QK_K, BlockQ5K::BYTES;
    Q6K "Q6_K" QK_K, BlockQ6K::BYTES;
    Q8K "Q8_K" QK_K, BlockQ8K::BYTES;
    IQ2XXS "IQ2_XXS" QK_K, 66;
    IQ2XS "IQ2_XS" QK_K, 74;
    IQ3XXS "IQ3_XXS" QK_K, 98;
    IQ1S "IQ1_S" QK_K, 50;
    IQ4NL "IQ4_NL" QK, BlockIq4Nl::BYTES;
    IQ3S "IQ3_S" QK_K, 110;
    IQ2S "IQ2_S" QK_K, 82;
    IQ4XS "IQ4_XS" QK_K, BlockIq4Xs::BYTES;
    I8 "I8" 1, 1;
    I16 "I16" 1, 2;
    I32 "I32" 1, 4;
    I64 "I64" 1, 8;
    F64 "F64" 1, 8;
    IQ1M "IQ1_M" QK_K, 56;
    BF16 "BF16" 1, 2;
    TQ1_0 "TQ1_0" QK_K, 54;
    TQ2_0 "TQ2_0" QK_K, 66;
    MXFP4 "MXFP4" QK, 17;
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
