//! GGUF metadata values: the 13 value types of the GGUF v3 spec (`ggml/docs/gguf.md`,
//! "gguf_metadata_value_type"), typed arrays (arrays of arrays included) and their
//! little-endian encoding.

use std::fmt;

/// The on-disk id of a metadata value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    /// The type with on-disk id `id`, if it is one of the 13 defined ones.
    pub fn from_id(id: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Bytes one value of this type takes at least on disk (a string is at least its
    /// `u64` length, an array at least its `u32` element type and `u64` count).
    pub fn min_encoded_len(self) -> usize {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    /// Lower-case name as in the spec (`uint32`, `string`, ...).
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            U32 => "uint32",
            I32 => "int32",
            F32 => "float32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "uint64",
            I64 => "int64",
            F64 => "float64",
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A typed array value: every element has the same type. Arrays of arrays are allowed
/// by the spec (each inner array carries its own element type), but llama.cpp's
/// `gguf_init_from_file` rejects them, so do not put them in files meant for llama.cpp.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

macro_rules! scalar_accessors {
    ($($variant:ident => $as:ident, $ty:ty;)*) => {
        impl GgufValue {
            $(
                #[doc = concat!("The value if it is exactly a `", stringify!($ty), "`.")]
                pub fn $as(&self) -> Option<$ty> {
                    match self {
                        GgufValue::$variant(v) => Some(*v),
                        _ => None,
                    }
                }
            )*
        }
        $(
            impl From<$ty> for GgufValue {
                fn from(v: $ty) -> GgufValue {
                    GgufValue::$variant(v)
                }
            }
        )*
    };
}

scalar_accessors! {
    U8 => as_u8, u8;
    I8 => as_i8, i8;
    U16 => as_u16, u16;
    I16 => as_i16, i16;
    U32 => as_u32, u32;
    I32 => as_i32, i32;
    F32 => as_f32, f32;
    Bool => as_bool, bool;
    U64 => as_u64, u64;
    I64 => as_i64, i64;
    F64 => as_f64, f64;
}

macro_rules! array_accessors {
    ($($variant:ident => $as:ident, $ty:ty;)*) => {
        impl GgufValue {
            $(
                #[doc = concat!("The elements if this is an array of `", stringify!($ty), "`.")]
                pub fn $as(&self) -> Option<&[$ty]> {
                    match self {
                        GgufValue::Array(GgufArray::$variant(v)) => Some(v),
                        _ => None,
                    }
                }
            )*
        }
        $(
            impl From<Vec<$ty>> for GgufArray {
                fn from(v: Vec<$ty>) -> GgufArray {
                    GgufArray::$variant(v)
                }
            }
            impl From<Vec<$ty>> for GgufValue {
                fn from(v: Vec<$ty>) -> GgufValue {
                    GgufValue::Array(GgufArray::$variant(v))
                }
            }
        )*
    };
}

array_accessors! {
    U8 => as_u8_array, u8;
    I8 => as_i8_array, i8;
    U16 => as_u16_array, u16;
    I16 => as_i16_array, i16;
    U32 => as_u32_array, u32;
    I32 => as_i32_array, i32;
    F32 => as_f32_array, f32;
    Bool => as_bool_array, bool;
    String => as_string_array, String;
    Array => as_nested_array, GgufArray;
    U64 => as_u64_array, u64;
    I64 => as_i64_array, i64;
    F64 => as_f64_array, f64;
}

impl From<&str> for GgufValue {
    fn from(v: &str) -> GgufValue {
        GgufValue::String(v.to_owned())
    }
}

impl From<String> for GgufValue {
    fn from(v: String) -> GgufValue {
        GgufValue::String(v)
    }
}

impl From<GgufArray> for GgufValue {
    fn from(v: GgufArray) -> GgufValue {
        GgufValue::Array(v)
    }
}

impl From<Vec<&str>> for GgufValue {
    fn from(v: Vec<&str>) -> GgufValue {
        GgufValue::string_array(v)
    }
}

impl GgufValue {
    /// A string value.
    pub fn string(s: impl Into<String>) -> GgufValue {
        GgufValue::String(s.into())
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn string_array<S: Into<String>>(items: impl IntoIterator<Item = S>) -> GgufValue {
        GgufValue::Array(GgufArray::String(
            items.into_iter().map(Into::into).collect(),
        ))
    }

    /// The value's type id.
    pub fn value_type(&self) -> GgufValueType {
        use GgufValueType as T;
        match self {
            GgufValue::U8(_) => T::U8,
            GgufValue::I8(_) => T::I8,
            GgufValue::U16(_) => T::U16,
            GgufValue::I16(_) => T::I16,
            GgufValue::U32(_) => T::U32,
            GgufValue::I32(_) => T::I32,
            GgufValue::F32(_) => T::F32,
            GgufValue::Bool(_) => T::Bool,
            GgufValue::String(_) => T::String,
            GgufValue::Array(_) => T::Array,
            GgufValue::U64(_) => T::U64,
            GgufValue::I64(_) => T::I64,
            GgufValue::F64(_) => T::F64,
        }
    }

    /// The string if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array if this is an array value.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Any integer value (of any width or signedness) that fits in `u64`.
    pub fn to_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value (of any width or signedness) that fits in `i64`.
    pub fn to_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Append `u32 type` then the value, as in a KV pair.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.value_type().id().to_le_bytes());
        match self {
            GgufValue::U8(v) => out.push(*v),
            GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::Bool(v) => out.push(u8::from(*v)),
            GgufValue::String(s) => encode_string(s, out),
            GgufValue::Array(a) => a.encode(out),
            GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Append a `gguf_string`: `u64` byte length then the UTF-8 bytes.
pub(crate) fn encode_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufArray {
    /// The type of every element.
    pub fn element_type(&self) -> GgufValueType {
        use GgufValueType as T;
        match self {
            GgufArray::U8(_) => T::U8,
            GgufArray::I8(_) => T::I8,
            GgufArray::U16(_) => T::U16,
            GgufArray::I16(_) => T::I16,
            GgufArray::U32(_) => T::U32,
            GgufArray::I32(_) => T::I32,
            GgufArray::F32(_) => T::F32,
            GgufArray::Bool(_) => T::Bool,
            GgufArray::String(_) => T::String,
            GgufArray::Array(_) => T::Array,
            GgufArray::U64(_) => T::U64,
            GgufArray::I64(_) => T::I64,
            GgufArray::F64(_) => T::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deepest nesting: 1 for an array of scalars, 2 for an array of such arrays, ...
    pub fn depth(&self) -> usize {
        match self {
            GgufArray::Array(inner) => 1 + inner.iter().map(GgufArray::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// Append `u32 element type`, `u64 count`, then the elements (no per-element type).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.element_type().id().to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        fn all<T: Copy, const N: usize>(v: &[T], out: &mut Vec<u8>, f: fn(T) -> [u8; N]) {
            out.reserve(v.len() * N);
            for x in v {
                out.extend_from_slice(&f(*x));
            }
        }
        match self {
            GgufArray::U8(v) => out.extend_from_slice(v),
            GgufArray::I8(v) => all(v, out, i8::to_le_bytes),
            GgufArray::U16(v) => all(v, out, u16::to_le_bytes),
            GgufArray::I16(v) => all(v, out, i16::to_le_bytes),
            GgufArray::U32(v) => all(v, out, u32::to_le_bytes),
            GgufArray::I32(v) => all(v, out, i32::to_le_bytes),
            GgufArray::F32(v) => all(v, out, f32::to_le_bytes),
            GgufArray::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
            GgufArray::String(v) => v.iter().for_each(|s| encode_string(s, out)),
            GgufArray::Array(v) => v.iter().for_each(|a| a.encode(out)),
            GgufArray::U64(v) => all(v, out, u64::to_le_bytes),
            GgufArray::I64(v) => all(v, out, i64::to_le_bytes),
            GgufArray::F64(v) => all(v, out, f64::to_le_bytes),
        }
    }
}
