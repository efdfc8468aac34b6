//! The GGML block layouts as plain `#[repr(C)]` structs, one per block format, each
//! with its size checked at compile time, and the codebooks that belong to a layout
//! (the IQ4_NL levels). The field order and widths are those of `block_*` in llama.cpp's
//! `ggml/src/ggml-common.h`; all multi-byte fields are little-endian on disk.
//!
//! Code that reads or writes packed bytes (quantizers, dequantizers, dot-product
//! kernels, the activation quantizers) takes field positions from here instead of
//! spelling offsets out: every struct carries, per field, a `const` byte range
//! (`BlockQ4K::QS` is `16..144`) computed with `offset_of!`, and `BYTES` (its size).
//! The structs derive `bytemuck::Pod` (which also proves they have no padding), so a
//! whole block can be read with `bytemuck::pod_read_unaligned` where that is clearer.
//!
//! [`TYPE_LAYOUTS`] is this layer's row per type (name, block size, bytes per block).
//! The layers above key their own rows by the same [`GgmlType`]: `llmq_quant::TYPES`
//! (quantize / dequantize) and `llmq_kernels::kernels::KERNELS` (dot products), so
//! bytes, algorithms and kernels each stay in the crate that knows them. A new block
//! type for a GGML id already in [`GgmlType`] is: its struct and row here, its
//! algorithms in a module of `llmq-quant` and that module's row in `llmq-quant`'s
//! `lib.rs` (three files); a fast kernel adds a `dot_*` function and a `KERNELS` row.

use crate::ggml_type::GgmlType;
use half::f16;

/// Defines a block struct, its size assertion and one byte-range constant per field.
macro_rules! ggml_block {
    (
        $(#[$meta:meta])*
        $name:ident = $bytes:expr, values $values:expr;
        { $( $(#[$fmeta:meta])* $field:ident / $RANGE:ident : $fty:ty ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $fty, )+
        }

        const _: () = assert!(size_of::<$name>() == $bytes);

        impl $name {
            /// Bytes per block.
            pub const BYTES: usize = $bytes;
            /// Values per block.
            pub const VALUES: usize = $values;
            $(
                #[doc = concat!("Byte range of `", stringify!($field), "` in a block.")]
                pub const $RANGE: core::ops::Range<usize> = core::mem::offset_of!($name, $field)
                    ..core::mem::offset_of!($name, $field) + size_of::<$fty>();
            )+
        }
    };
}

/// Values per block of the 32-value (legacy and IQ4_NL) formats.
pub const QK: usize = 32;
/// Values per super-block of the k-quants and IQ4_XS.
pub const QK_K: usize = 256;
/// Values per block of NVFP4 (four sub-blocks of [`QK_NVFP4_SUB`]).
pub const QK_NVFP4: usize = 64;
/// Values per NVFP4 sub-block (one UE4M3 scale each).
pub const QK_NVFP4_SUB: usize = 16;
/// Bytes of the packed 6-bit scales and mins of Q4_K / Q5_K.
pub const K_SCALE_SIZE: usize = 12;

ggml_block! {
    /// `block_q4_0`: value `j` = `d·(nibble_j − 8)`; low nibbles hold values 0..16,
    /// high nibbles 16..32.
    BlockQ4_0 = 18, values QK;
    { d / D: f16, qs / QS: [u8; QK / 2] }
}

ggml_block! {
    /// `block_q4_1`: value = `d·q + m`, nibbles as Q4_0.
    BlockQ4_1 = 20, values QK;
    { d / D: f16, m / M: f16, qs / QS: [u8; QK / 2] }
}

ggml_block! {
    /// `block_q5_0`: value = `d·((nibble | bit_j << 4) − 16)`, `qh` bit `j` is value
    /// `j`'s fifth bit.
    BlockQ5_0 = 22, values QK;
    { d / D: f16, qh / QH: [u8; 4], qs / QS: [u8; QK / 2] }
}

ggml_block! {
    /// `block_q5_1`: value = `d·(nibble | bit_j << 4) + m`.
    BlockQ5_1 = 24, values QK;
    { d / D: f16, m / M: f16, qh / QH: [u8; 4], qs / QS: [u8; QK / 2] }
}

ggml_block! {
    /// `block_q8_0`: value = `d·qs[j]`.
    BlockQ8_0 = 34, values QK;
    { d / D: f16, qs / QS: [i8; QK] }
}

ggml_block! {
    /// `block_q8_1`: as Q8_0 plus `s = d·Σqs` (the activation format of Q4_1 / Q5_1).
    BlockQ8_1 = 36, values QK;
    { d / D: f16, s / S: f16, qs / QS: [i8; QK] }
}

ggml_block! {
    /// `block_q2_K`: 16 sub-blocks of 16; `scales` holds a 4-bit scale (low nibble) and
    /// 4-bit min (high nibble) per sub-block; value = `d·sc·q − dmin·m`, 2-bit `q`.
    BlockQ2K = 84, values QK_K;
    {
        scales / SCALES: [u8; QK_K / 16],
        qs / QS: [u8; QK_K / 4],
        d / D: f16,
        dmin / DMIN: f16,
    }
}

ggml_block! {
    /// `block_q3_K`: 3-bit values (2 low bits in `qs`, the high bit in `hmask`), sixteen
    /// 6-bit signed sub-block scales packed in 12 bytes; value = `d·(sc − 32)·q`.
    BlockQ3K = 110, values QK_K;
    {
        hmask / HMASK: [u8; QK_K / 8],
        qs / QS: [u8; QK_K / 4],
        scales / SCALES: [u8; 12],
        d / D: f16,
    }
}

ggml_block! {
    /// `block_q4_K`: 8 sub-blocks of 32, value = `d·sc·q − dmin·m` with 6-bit `sc`, `m`
    /// packed in `scales`.
    BlockQ4K = 144, values QK_K;
    {
        d / D: f16,
        dmin / DMIN: f16,
        scales / SCALES: [u8; K_SCALE_SIZE],
        qs / QS: [u8; QK_K / 2],
    }
}

ggml_block! {
    /// `block_q5_K`: as Q4_K plus a fifth bit per value in `qh`.
    BlockQ5K = 176, values QK_K;
    {
        d / D: f16,
        dmin / DMIN: f16,
        scales / SCALES: [u8; K_SCALE_SIZE],
        qh / QH: [u8; QK_K / 8],
        qs / QS: [u8; QK_K / 2],
    }
}

ggml_block! {
    /// `block_q6_K`: 6-bit values (4 low bits in `ql`, 2 high in `qh`), sixteen i8
    /// sub-block scales; value = `d·sc·(q − 32)`.
    BlockQ6K = 210, values QK_K;
    {
        ql / QL: [u8; QK_K / 2],
        qh / QH: [u8; QK_K / 4],
        scales / SCALES: [i8; QK_K / 16],
        d / D: f16,
    }
}

ggml_block! {
    /// `block_q8_K`: the activation format of the k-quants: f32 `d`, 256 i8 values and
    /// the sums of each group of 16.
    BlockQ8K = 292, values QK_K;
    { d / D: f32, qs / QS: [i8; QK_K], bsums / BSUMS: [i16; QK_K / 16] }
}

ggml_block! {
    /// `block_iq4_nl`: value = `d·KVALUES_IQ4NL[nibble]`, nibbles as Q4_0.
    BlockIq4Nl = 18, values QK;
    { d / D: f16, qs / QS: [u8; QK / 2] }
}

ggml_block! {
    /// `block_iq4_xs`: 8 blocks of 32 with 6-bit scales `ls − 32` (low 4 bits in
    /// `scales_l`, block `2i` low / `2i+1` high nibble, top 2 bits in `scales_h`);
    /// value = `d·(ls − 32)·KVALUES_IQ4NL[nibble]`.
    BlockIq4Xs = 136, values QK_K;
    {
        d / D: f16,
        scales_h / SCALES_H: u16,
        scales_l / SCALES_L: [u8; QK_K / 64],
        qs / QS: [u8; QK_K / 2],
    }
}

ggml_block! {
    /// `block_mxfp4` (OCP MX): an E8M0 exponent `e` and 32 E2M1 codes, value `j` in the
    /// low nibble of `qs[j]`, value `j+16` in its high nibble; value =
    /// `E2M1_DOUBLED[nibble]·2^(e − 128)` (llama.cpp doubles the E2M1 levels and halves
    /// the scale, `GGML_E8M0_TO_FP32_HALF`).
    BlockMxfp4 = 17, values QK;
    { e / E: u8, qs / QS: [u8; QK / 2] }
}

ggml_block! {
    /// `block_nvfp4`: 64 E2M1 values in four sub-blocks of 16, each with an unsigned
    /// E4M3 scale byte `d[s]` (bias 7, no sign bit; bytes 0 and 0x7F read as zero).
    /// Sub-block `s` owns `qs[8s..8s+8]`: value `16s+j` in the low nibble of
    /// `qs[8s+j]`, value `16s+8+j` in its high nibble; value =
    /// `E2M1_DOUBLED[nibble]·ue4m3(d[s])/2` (llama.cpp doubles the E2M1 levels and
    /// halves the scale, `ggml_ue4m3_to_fp32`).
    BlockNvfp4 = 36, values QK_NVFP4;
    { d / D: [u8; QK_NVFP4 / QK_NVFP4_SUB], qs / QS: [u8; QK_NVFP4 / 2] }
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
    MXFP4 "MXFP4" QK, BlockMxfp4::BYTES;
    NVFP4 "NVFP4" QK_NVFP4, BlockNvfp4::BYTES;
}

/// The little-endian `u16` (an f16's bits) of field `at` of block bytes `b`.
#[inline(always)]
pub fn le_u16(b: &[u8], at: core::ops::Range<usize>) -> u16 {
    u16::from_le_bytes([b[at.start], b[at.start + 1]])
}

/// The little-endian `u32` of field `at` of block bytes `b`.
#[inline(always)]
pub fn le_u32(b: &[u8], at: core::ops::Range<usize>) -> u32 {
    let i = at.start;
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The 16 non-linear levels of IQ4_NL and IQ4_XS (`kvalues_iq4nl`), ascending.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_ranges_follow_ggml_common() {
        assert_eq!(BlockQ4_0::QS, 2..18);
        assert_eq!(BlockQ5_0::QH, 2..6);
        assert_eq!(BlockQ5_1::QS, 8..24);
        assert_eq!(BlockQ8_1::S, 2..4);
        assert_eq!(BlockQ2K::D, 80..82);
        assert_eq!(BlockQ3K::SCALES, 96..108);
        assert_eq!(BlockQ4K::QS, 16..144);
        assert_eq!(BlockQ5K::QH, 16..48);
        assert_eq!(BlockQ6K::D, 208..210);
        assert_eq!(BlockQ8K::BSUMS, 260..292);
        assert_eq!(BlockIq4Xs::SCALES_L, 4..8);
        assert_eq!(BlockMxfp4::QS, 1..17);
        assert_eq!(BlockNvfp4::D, 0..4);
        assert_eq!(BlockNvfp4::QS, 4..36);
        assert!(KVALUES_IQ4NL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_block_reads_from_bytes() {
        let mut b = [0u8; BlockQ4_1::BYTES];
        b[BlockQ4_1::M].copy_from_slice(&f16::from_f32(1.5).to_le_bytes());
        let blk: BlockQ4_1 = bytemuck::pod_read_unaligned(&b);
        assert_eq!(blk.m.to_f32(), 1.5);
    }
}
