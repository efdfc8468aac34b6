//! NaN / infinity scan of a tensor's stored bytes, in its own GGML type, without
//! dequantizing: plain float types element by element, block types through the float
//! fields of each block (the f16 scale `d`, and `dmin` / `m` / `s` where the block has
//! them — the layouts of ggml's `ggml-common.h`, as [`crate::blocks`] defines them), an
//! MXFP4 block through its E8M0 exponent (0xFF is NaN in OCP MX), an NVFP4 block through
//! its four unsigned E4M3 scales (ggml reads every byte as a finite value: no sign bit,
//! and the NaN pattern 0x7F as zero, so such a block always passes). A block whose scales
//! are finite decodes to finite values, so this is the whole check for those types.

use crate::blocks::*;
use crate::ggml_type::GgmlType;
use half::{bf16, f16};
use std::ops::Range;

/// The first non-finite value found: element index for plain types, block index and
/// field name for block types.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    /// element (plain types) or block (block types) index
    pub index: usize,
    /// `element`, or the block field (`d`, `dmin`, …)
    pub field: &'static str,
    pub value: f64,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field == "element" {
            write!(f, "element {} is {}", self.index, self.value)
        } else {
            write!(
                f,
                "block {} has scale `{}` = {}",
                self.index, self.field, self.value
            )
        }
    }
}

/// How a float field is stored.
#[derive(Clone, Copy)]
enum F {
    F16,
    F32,
    E8M0,
    /// ggml's unsigned E4M3 block scale (`ggml_ue4m3_to_fp32`): always finite.
    Ue4m3,
}

/// A float field of a block: its name, byte range and storage.
type Field = (&'static str, Range<usize>, F);

/// Block size and float fields of a block type; `None` for types without float data
/// to check (integers) or whose scales are packed in other ways (IQ1_M).
fn fields(ty: GgmlType) -> Option<(usize, Vec<Field>)> {
    use GgmlType as T;
    let h = |name, r: Range<usize>| (name, r, F::F16);
    Some(match ty {
        T::Q4_0 => (BlockQ4_0::BYTES, vec![h("d", BlockQ4_0::D)]),
        T::Q4_1 => (
            BlockQ4_1::BYTES,
            vec![h("d", BlockQ4_1::D), h("m", BlockQ4_1::M)],
        ),
        T::Q5_0 => (BlockQ5_0::BYTES, vec![h("d", BlockQ5_0::D)]),
        T::Q5_1 => (
            BlockQ5_1::BYTES,
            vec![h("d", BlockQ5_1::D), h("m", BlockQ5_1::M)],
        ),
        T::Q8_0 => (BlockQ8_0::BYTES, vec![h("d", BlockQ8_0::D)]),
        T::Q8_1 => (
            BlockQ8_1::BYTES,
            vec![h("d", BlockQ8_1::D), h("s", BlockQ8_1::S)],
        ),
        T::Q2K => (
            BlockQ2K::BYTES,
            vec![h("d", BlockQ2K::D), h("dmin", BlockQ2K::DMIN)],
        ),
        T::Q3K => (BlockQ3K::BYTES, vec![h("d", BlockQ3K::D)]),
        T::Q4K => (
            BlockQ4K::BYTES,
            vec![h("d", BlockQ4K::D), h("dmin", BlockQ4K::DMIN)],
        ),
        T::Q5K => (
            BlockQ5K::BYTES,
            vec![h("d", BlockQ5K::D), h("dmin", BlockQ5K::DMIN)],
        ),
        T::Q6K => (BlockQ6K::BYTES, vec![h("d", BlockQ6K::D)]),
        T::Q8K => (BlockQ8K::BYTES, vec![("d", BlockQ8K::D, F::F32)]),
        T::IQ4NL => (BlockIq4Nl::BYTES, vec![h("d", BlockIq4Nl::D)]),
        T::IQ4XS => (BlockIq4Xs::BYTES, vec![h("d", BlockIq4Xs::D)]),
        // ggml-common.h: these blocks start with their f16 `d`
        T::IQ2XXS | T::IQ2XS | T::IQ3XXS | T::IQ1S | T::IQ3S | T::IQ2S => {
            (ty.type_size(), vec![h("d", 0..2)])
        }
        // `qs[48], qh[4], d` and `qs[64], d`
        T::TQ1_0 => (ty.type_size(), vec![h("d", 52..54)]),
        T::TQ2_0 => (ty.type_size(), vec![h("d", 64..66)]),
        // `e` (E8M0), then 16 bytes of FP4 pairs
        T::MXFP4 => (ty.type_size(), vec![("e", 0..1, F::E8M0)]),
        T::NVFP4 => (
            BlockNvfp4::BYTES,
            (0..4)
                .map(|s| {
                    (
                        "d",
                        BlockNvfp4::D.start + s..BlockNvfp4::D.start + s + 1,
                        F::Ue4m3,
                    )
                })
                .collect(),
        ),
        _ => return None,
    })
}

fn read(f: F, b: &[u8]) -> f64 {
    match f {
        F::F16 => f64::from(f16::from_le_bytes([b[0], b[1]]).to_f32()),
        F::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        F::E8M0 if b[0] == 0xFF => f64::NAN,
        F::E8M0 => 2f64.powi(i32::from(b[0]) - 127),
        F::Ue4m3 => match (b[0], (b[0] >> 3) & 15, b[0] & 7) {
            (0 | 0x7F, _, _) => 0.0,
            (_, 0, m) => f64::from(m) * 2f64.powi(-9),
            (_, e, m) => (1.0 + f64::from(m) / 8.0) * 2f64.powi(i32::from(e) - 7),
        },
    }
}

/// The first NaN or infinity stored in `bytes`, a tensor of type `ty`.
pub fn first_non_finite(ty: GgmlType, bytes: &[u8]) -> Option<NonFinite> {
    let elem = |index: usize, value: f64| NonFinite {
        index,
        field: "element",
        value,
    };
    match ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
            .map(|i| elem(i, read(F::F32, &bytes[4 * i..]))),
        GgmlType::F16 => {
            // exponent bits all ones
            let i = bytes
                .chunks_exact(2)
                .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 == 0x7C00)?;
            Some(elem(i, read(F::F16, &bytes[2 * i..])))
        }
        GgmlType::BF16 => {
            let i = bytes
                .chunks_exact(2)
                .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 == 0x7F80)?;
            Some(elem(
                i,
                f64::from(bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()),
            ))
        }
        GgmlType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .enumerate()
            .find(|(_, v)| !v.is_finite())
            .map(|(i, v)| elem(i, v)),
        _ => {
            let (size, fields) = fields(ty)?;
            for (b, block) in bytes.chunks_exact(size).enumerate() {
                for (name, r, f) in &fields {
                    let v = read(*f, &block[r.clone()]);
                    if !v.is_finite() {
                        return Some(NonFinite {
                            index: b,
                            field: name,
                            value: v,
                        });
                    }
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_block_scales_are_scanned() {
        let mut f16s = vec![0u8; 8];
        assert_eq!(first_non_finite(GgmlType::F16, &f16s), None);
        f16s[4..6].copy_from_slice(&f16::INFINITY.to_le_bytes());
        assert_eq!(first_non_finite(GgmlType::F16, &f16s).unwrap().index, 2);
        let mut f32s = vec![0u8; 16];
        f32s[12..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(first_non_finite(GgmlType::F32, &f32s).unwrap().index, 3);
        let mut bf = vec![0u8; 4];
        bf[2..].copy_from_slice(&bf16::NEG_INFINITY.to_le_bytes());
        assert_eq!(first_non_finite(GgmlType::BF16, &bf).unwrap().index, 1);

        let mut q4k = vec![0u8; 2 * BlockQ4K::BYTES];
        assert_eq!(first_non_finite(GgmlType::Q4K, &q4k), None);
        let at = BlockQ4K::BYTES + BlockQ4K::DMIN.start;
        q4k[at..at + 2].copy_from_slice(&f16::NAN.to_le_bytes());
        let e = first_non_finite(GgmlType::Q4K, &q4k).unwrap();
        assert_eq!((e.index, e.field), (1, "dmin"));
        let mut q6k = vec![0u8; BlockQ6K::BYTES];
        q6k[BlockQ6K::D].copy_from_slice(&f16::INFINITY.to_le_bytes());
        assert_eq!(first_non_finite(GgmlType::Q6K, &q6k).unwrap().field, "d");
        let mut mx = vec![0u8; 2 * GgmlType::MXFP4.type_size()];
        mx[GgmlType::MXFP4.type_size()] = 0xFF;
        assert_eq!(first_non_finite(GgmlType::MXFP4, &mx).unwrap().index, 1);
        // every NVFP4 scale byte is a finite value in ggml (0x7F and 0xFF included)
        assert_eq!(first_non_finite(GgmlType::NVFP4, &[0xFFu8; 72]), None);
        assert_eq!(first_non_finite(GgmlType::NVFP4, &[0x7Fu8; 36]), None);
        // values in the quantized codes are never non-finite: only scales count
        assert_eq!(
            first_non_finite(GgmlType::Q8_0, &[0xFFu8; 34])
                .unwrap()
                .field,
            "d"
        );
        assert_eq!(first_non_finite(GgmlType::I32, &[0xFFu8; 8]), None);
    }
}
