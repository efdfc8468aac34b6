//! An owned tensor as it goes into a safetensors file: dtype, shape and
//! little-endian bytes.

use half::{bf16, f16};

/// safetensors dtypes this crate writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// FP8 E4M3 (`float8_e4m3fn`)
    F8E4M3,
}

impl Dtype {
    /// The name in a safetensors header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
            Dtype::F8E4M3 => "F8_E4M3",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I64 => 8,
            Dtype::I8 | Dtype::U8 | Dtype::Bool | Dtype::F8E4M3 => 1,
        }
    }
}

/// A tensor ready to be written: `data.len() == shape.product() * dtype.size()`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// little-endian element bytes, row-major
    pub data: Vec<u8>,
}

macro_rules! from_slice {
    ($name:ident, $as_name:ident, $t:ty, $dt:expr) => {
        /// Tensor of this element type; panics if `shape` does not match `v.len()`.
        pub fn $name(shape: &[usize], v: &[$t]) -> Self {
            assert_eq!(
                shape.iter().product::<usize>(),
                v.len(),
                "shape/len mismatch"
            );
            let mut data = Vec::with_capacity(v.len() * std::mem::size_of::<$t>());
            for x in v {
                data.extend_from_slice(&x.to_le_bytes());
            }
            HfTensor {
                dtype: $dt,
                shape: shape.to_vec(),
                data,
            }
        }

        /// Elements, if the dtype matches.
        pub fn $as_name(&self) -> Option<Vec<$t>> {
            const N: usize = std::mem::size_of::<$t>();
            (self.dtype == $dt).then(|| {
                self.data
                    .chunks_exact(N)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk")))
                    .collect()
            })
        }
    };
}

impl HfTensor {
    from_slice!(from_f32, to_f32_vec, f32, Dtype::F32);
    from_slice!(from_f16, to_f16_vec, f16, Dtype::F16);
    from_slice!(from_bf16, to_bf16_vec, bf16, Dtype::BF16);
    from_slice!(from_i64, to_i64_vec, i64, Dtype::I64);
    from_slice!(from_i32, to_i32_vec, i32, Dtype::I32);
    from_slice!(from_i16, to_i16_vec, i16, Dtype::I16);
    from_slice!(from_i8, to_i8_vec, i8, Dtype::I8);
    from_slice!(from_u8, to_u8_vec, u8, Dtype::U8);

    /// Tensor from raw little-endian bytes; panics on a size mismatch.
    pub fn from_raw(dtype: Dtype, shape: &[usize], data: Vec<u8>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>() * dtype.size(),
            data.len(),
            "shape/bytes mismatch"
        );
        HfTensor {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// Packed words stored as int32 (the files' dtype for packed tensors).
    pub fn from_u32_as_i32(shape: &[usize], v: &[u32]) -> Self {
        let v: Vec<i32> = v.iter().map(|&x| x as i32).collect();
        Self::from_i32(shape, &v)
    }

    /// int32 elements reinterpreted as unsigned words.
    pub fn to_u32_words(&self) -> Option<Vec<u32>> {
        self.to_i32_vec()
            .map(|v| v.into_iter().map(|x| x as u32).collect())
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}
