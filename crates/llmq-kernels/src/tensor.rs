//! Weight storage for the forward pass: a 2-D matrix in any GGML type whose bytes live
//! either in a memory-mapped GGUF file (zero copy) or in an owned buffer (weights built
//! from safetensors). Rows follow ggml's layout: row `r` is `row_bytes(cols)` bytes of
//! packed blocks, so a `[rows, cols]` matrix is PyTorch's `[out_features, in_features]`.

use llmq_formats::gguf::GgufFile;
use llmq_formats::GgmlType;
use std::sync::Arc;

/// Something that owns a byte buffer the weights point into.
pub trait ByteOwner: Send + Sync {
    fn owned_bytes(&self) -> &[u8];
}

impl ByteOwner for GgufFile {
    fn owned_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl ByteOwner for Vec<u8> {
    fn owned_bytes(&self) -> &[u8] {
        self
    }
}

impl ByteOwner for Vec<f32> {
    fn owned_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(self)
    }
}

/// A shared, immutable byte range of an owner.
#[derive(Clone)]
pub struct Bytes {
    owner: Arc<dyn ByteOwner>,
    offset: usize,
    len: usize,
}

impl Bytes {
    /// `len` bytes of `owner` from `offset`; panics when out of range.
    pub fn new(owner: Arc<dyn ByteOwner>, offset: usize, len: usize) -> Bytes {
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|e| e <= owner.owned_bytes().len()),
            "byte range out of bounds"
        );
        Bytes { owner, offset, len }
    }

    /// All bytes of `owner`.
    pub fn whole(owner: Arc<dyn ByteOwner>) -> Bytes {
        let len = owner.owned_bytes().len();
        Bytes {
            owner,
            offset: 0,
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.owner.owned_bytes()[self.offset..self.offset + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A sub-range of this range.
    pub fn slice(&self, offset: usize, len: usize) -> Bytes {
        assert!(offset + len <= self.len, "sub-range out of bounds");
        Bytes {
            owner: self.owner.clone(),
            offset: self.offset + offset,
            len,
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} @ {})", self.len, self.offset)
    }
}

/// A `[rows, cols]` weight matrix in GGML type `ty` (row-major, each row packed).
#[derive(Clone, Debug)]
pub struct WeightMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: Bytes,
}

impl WeightMatrix {
    /// Wrap `data`, checking that it holds exactly `rows` packed rows of `cols` values.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: Bytes,
    ) -> Result<WeightMatrix, String> {
        if cols % ty.block_size() != 0 {
            return Err(format!(
                "{} rows of {cols} values are not whole {}-value blocks",
                ty.name(),
                ty.block_size()
            ));
        }
        let want = ty.row_bytes(cols).map(|b| b * rows);
        if want != Some(data.len()) {
            return Err(format!(
                "{} matrix {rows}x{cols} needs {want:?} bytes, got {}",
                ty.name(),
                data.len()
            ));
        }
        Ok(WeightMatrix {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// An owned f32 matrix.
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "f32 matrix size");
        WeightMatrix {
            ty: GgmlType::F32,
            rows,
            cols,
            data: Bytes::whole(Arc::new(values)),
        }
    }

    /// Bytes per packed row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// Packed bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data.as_slice()[r * rb..(r + 1) * rb]
    }

    /// Rows `[start, start + n)` as their own matrix (no copy): one expert of a stacked
    /// expert tensor, or the q/k/v part of a fused projection.
    pub fn row_range(&self, start: usize, n: usize) -> WeightMatrix {
        let rb = self.row_bytes();
        WeightMatrix {
            ty: self.ty,
            rows: n,
            cols: self.cols,
            data: self.data.slice(start * rb, n * rb),
        }
    }

    /// Row `r` as f32 values.
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.cols];
        crate::kernels::dequantize_row(self.ty, self.row(r), &mut out);
        out
    }

    /// The whole matrix as f32 (tests, small tensors such as norms and biases).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, chunk) in out.chunks_mut(self.cols.max(1)).enumerate() {
            crate::kernels::dequantize_row(self.ty, self.row(r), chunk);
        }
        out
    }
}
