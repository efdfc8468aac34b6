//! Weight storage for the forward pass: a 2-D matrix in any GGML type whose bytes live
//! either in a memory-mapped GGUF file (zero copy) or in an owned buffer (weights built
//! from safetensors). Rows follow ggml's layout: row `r` is `row_bytes(cols)` bytes of
//! packed blocks, so a `[rows, cols]` matrix is PyTorch's `[out_features, in_features]`.
//!
//! Besides GGML types a matrix may hold group-wise integer weights (GPTQ / AWQ /
//! compressed-tensors checkpoints) in the block layout of [`crate::int_blocks`]
//! ([`WeightType::Int`]); those may store their input columns in an act-order
//! permutation ([`ColumnOrder`]), which `matmul` applies to the activations. Floating-
//! point coded weights (compressed-tensors NVFP4 / MXFP4 / FP8) are kept in the block
//! layouts of [`crate::fp_blocks`] ([`WeightType::Fp`]); a matrix may be stored under a
//! block-Hadamard input rotation (MR-GPTQ, [`crate::rotation`]), which `matmul` applies
//! to the activations.

use crate::dequant::dequantize_row;
use crate::error::KernelError;
use crate::fp_blocks::{FpGroups, FpType};
use crate::int_blocks::{IntGroups, PackedInt};
pub use crate::weight_type::{IntAct, IntType, WeightType};
use llmq_formats::gguf::GgufFile;
use llmq_formats::GgmlType;
use std::sync::Arc;

/// The order in which a matrix stores its input columns: stored column `j` of row `r`
/// is input column `perm(r)[j]` (act-order checkpoints, made contiguous per group at
/// load time). Stacked matrices (MoE experts) carry one permutation per part.
#[derive(Clone, Debug)]
pub struct ColumnOrder {
    perms: Arc<Vec<Vec<u32>>>,
    /// rows sharing one permutation
    rows_per: usize,
    /// first row of this view in the stacked matrix
    row_offset: usize,
}

impl ColumnOrder {
    /// One permutation for every row.
    pub fn single(perm: Vec<u32>) -> ColumnOrder {
        ColumnOrder {
            perms: Arc::new(vec![perm]),
            rows_per: usize::MAX,
            row_offset: 0,
        }
    }

    /// The permutation of row `r` of this view.
    pub fn perm_of_row(&self, r: usize) -> &[u32] {
        let i = (self.row_offset + r) / self.rows_per;
        &self.perms[i.min(self.perms.len() - 1)]
    }

    /// Maximal row ranges `[r0, r1)` of a `rows`-row view sharing one permutation.
    pub fn segments(&self, rows: usize) -> Vec<(usize, usize, &[u32])> {
        let mut out = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let abs = self.row_offset + r0;
            let i = (abs / self.rows_per).min(self.perms.len() - 1);
            let end = if i + 1 == self.perms.len() {
                rows
            } else {
                ((i + 1) * self.rows_per - self.row_offset).min(rows)
            };
            out.push((r0, end, self.perms[i].as_slice()));
            r0 = end;
        }
        out
    }

    fn offset(&self, start: usize) -> ColumnOrder {
        ColumnOrder {
            perms: self.perms.clone(),
            rows_per: self.rows_per,
            row_offset: self.row_offset + start,
        }
    }
}

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

/// A `[rows, cols]` weight matrix of type `ty` (row-major, each row packed).
#[derive(Clone, Debug)]
pub struct WeightMatrix {
    pub ty: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub data: Bytes,
    /// Stored column order, when it is not the natural one (integer act-order weights).
    pub col_order: Option<ColumnOrder>,
    /// The block of an input rotation the rows are stored under (MR-GPTQ): the matrix
    /// is `W = W'·R` with `R` the block-diagonal orthonormal Hadamard matrix
    /// ([`crate::rotation`]), so `matmul` computes `W'·(R·x)`.
    pub input_rotation: Option<usize>,
    /// EXL3 trellis weights ([`WeightType::Trellis`]): their sign/scale vectors and
    /// output order ([`crate::trellis`]); `None` for every other type.
    pub trellis: Option<Arc<crate::trellis::TrellisSides>>,
}

impl WeightMatrix {
    /// Wrap `data`, checking that it holds exactly `rows` packed rows of `cols` values.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: Bytes,
    ) -> Result<WeightMatrix, KernelError> {
        if !crate::dequant::computes(ty) {
            return Err(KernelError::UnsupportedType(ty));
        }
        if !cols.is_multiple_of(ty.block_size()) {
            return Err(KernelError::Layout(format!(
                "{} rows of {cols} values are not whole {}-value blocks",
                ty.name(),
                ty.block_size()
            )));
        }
        let want = ty.row_bytes(cols).map(|b| b * rows);
        if want != Some(data.len()) {
            return Err(KernelError::Layout(format!(
                "{} matrix {rows}x{cols} needs {want:?} bytes, got {}",
                ty.name(),
                data.len()
            )));
        }
        Ok(WeightMatrix {
            ty: WeightType::Ggml(ty),
            rows,
            cols,
            data,
            col_order: None,
            input_rotation: None,
            trellis: None,
        })
    }

    /// A matrix of repacked integer weights ([`crate::int_blocks`]).
    pub fn from_packed_int(
        p: PackedInt,
        rows: usize,
        cols: usize,
        act: IntAct,
    ) -> Result<WeightMatrix, KernelError> {
        let act = if p.block == 32 { act } else { IntAct::F32 };
        let ty = WeightType::Int(IntType {
            bits: p.bits,
            block: p.block as u16,
            act,
        });
        if ty.row_bytes(cols).map(|b| b * rows) != Some(p.data.len()) {
            return Err(KernelError::Layout(format!(
                "{} matrix {rows}x{cols}: {} bytes do not fit",
                ty.name(),
                p.data.len()
            )));
        }
        if p.perm.as_ref().is_some_and(|q| q.len() != cols) {
            return Err("column permutation length differs from cols".into());
        }
        Ok(WeightMatrix {
            ty,
            rows,
            cols,
            data: Bytes::whole(Arc::new(p.data)),
            col_order: p.perm.map(ColumnOrder::single),
            input_rotation: None,
            trellis: None,
        })
    }

    /// Repacks group-wise integer weights (codes, scales, zeros, g_idx).
    pub fn from_int_groups(g: &IntGroups<'_>, act: IntAct) -> Result<WeightMatrix, KernelError> {
        Self::from_packed_int(g.pack()?, g.rows, g.cols, act)
    }

    /// Repacks floating-point coded weights ([`crate::fp_blocks`]). MXFP4 rows are
    /// ggml's `MXFP4` blocks: with `IntAct::Q8_0` they run as that GGML type (its Q8_0
    /// kernels, as llama.cpp runs them), with `IntAct::F32` on the f32-activation
    /// kernels; NVFP4 and FP8 always take f32 activations.
    pub fn from_fp_groups(g: &FpGroups<'_>, act: IntAct) -> Result<WeightMatrix, KernelError> {
        let (fp, data) = g.pack()?;
        let bytes = Bytes::whole(Arc::new(data));
        if fp == FpType::Mxfp4 && act == IntAct::Q8_0 {
            return WeightMatrix::new(GgmlType::MXFP4, g.rows, g.cols, bytes);
        }
        Ok(WeightMatrix {
            ty: WeightType::Fp(fp),
            rows: g.rows,
            cols: g.cols,
            data: bytes,
            col_order: None,
            input_rotation: None,
            trellis: None,
        })
    }

    /// The same integer weights computed against other activations (no-op for GGML).
    pub fn with_int_act(mut self, act: IntAct) -> WeightMatrix {
        if let WeightType::Int(t) = &mut self.ty {
            if t.block == 32 {
                t.act = act;
            }
        }
        self
    }

    /// Rows of several matrices of one type and width, one after another (experts
    /// stacked into one tensor). Copies the bytes.
    pub fn stack_rows(parts: &[WeightMatrix]) -> Result<WeightMatrix, KernelError> {
        let first = parts.first().ok_or("nothing to stack")?;
        let (ty, cols) = (first.ty, first.cols);
        if parts.iter().any(|p| p.trellis.is_some()) {
            return Err("trellis matrices are not stacked (decode them first)".into());
        }
        if parts
            .iter()
            .any(|p| p.ty != ty || p.cols != cols || p.input_rotation != first.input_rotation)
        {
            return Err("stacked parts differ in type, width or input rotation".into());
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            data.extend_from_slice(p.data.as_slice());
        }
        let col_order = if parts.iter().all(|p| p.col_order.is_none()) {
            None
        } else {
            let rows_per = first.rows;
            if parts.iter().any(|p| p.rows != rows_per) {
                return Err("stacked act-order parts must have equal rows".into());
            }
            let ident: Vec<u32> = (0..cols as u32).collect();
            let perms = parts
                .iter()
                .map(|p| match &p.col_order {
                    Some(o) if o.segments(p.rows).len() == 1 => Ok(o.perm_of_row(0).to_vec()),
                    Some(_) => Err(KernelError::from("stacking a stacked act-order matrix")),
                    None => Ok(ident.clone()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(ColumnOrder {
                perms: Arc::new(perms),
                rows_per: rows_per.max(1),
                row_offset: 0,
            })
        };
        Ok(WeightMatrix {
            ty,
            rows,
            cols,
            data: Bytes::whole(Arc::new(data)),
            col_order,
            input_rotation: first.input_rotation,
            trellis: None,
        })
    }

    /// A copy whose row `r` is row `order[r]` of `self`.
    pub fn permute_rows(&self, order: &[usize]) -> Result<WeightMatrix, KernelError> {
        if order.len() != self.rows || order.iter().any(|&r| r >= self.rows) {
            return Err("row order does not match the rows".into());
        }
        if let Some(o) = &self.col_order {
            if o.segments(self.rows).len() > 1 {
                return Err("permuting rows of a stacked act-order matrix".into());
            }
        }
        if let Some(t) = &self.trellis {
            // rows mixed by the output Hadamard: the order is applied to the products
            let mut w = self.clone();
            w.trellis = Some(Arc::new(t.permuted(order)));
            return Ok(w);
        }
        let mut data = Vec::with_capacity(self.data.len());
        for &r in order {
            data.extend_from_slice(self.row(r));
        }
        Ok(WeightMatrix {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: Bytes::whole(Arc::new(data)),
            col_order: self.col_order.clone(),
            input_rotation: self.input_rotation,
            trellis: None,
        })
    }

    /// An owned f32 matrix.
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "f32 matrix size");
        WeightMatrix {
            ty: WeightType::Ggml(GgmlType::F32),
            rows,
            cols,
            data: Bytes::whole(Arc::new(values)),
            col_order: None,
            input_rotation: None,
            trellis: None,
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
    /// Trellis matrices are cut at whole 128-row blocks in their natural order; any other
    /// range of them is decoded to f32 first.
    pub fn row_range(&self, start: usize, n: usize) -> WeightMatrix {
        if let Some(t) = &self.trellis {
            return crate::trellis::row_range(self, t, start, n);
        }
        let rb = self.row_bytes();
        WeightMatrix {
            ty: self.ty,
            rows: n,
            cols: self.cols,
            data: self.data.slice(start * rb, n * rb),
            col_order: self.col_order.as_ref().map(|o| o.offset(start)),
            input_rotation: self.input_rotation,
            trellis: None,
        }
    }

    /// Row `r` as f32 values (in natural column order).
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.cols];
        self.row_f32_into(r, &mut out);
        out
    }

    /// Row `r` as f32 values (natural column order) into `out`.
    /// Trellis rows are mixed by their output Hadamard: the whole matrix is decoded
    /// (use [`WeightMatrix::to_f32`] for more than a row).
    pub fn row_f32_into(&self, r: usize, out: &mut [f32]) {
        if self.trellis.is_some() {
            let c = self.cols;
            out.copy_from_slice(&self.to_f32()[r * c..(r + 1) * c]);
            return;
        }
        dequantize_row(self.ty, self.row(r), out);
        if let Some(o) = &self.col_order {
            let stored = out.to_vec();
            for (&c, v) in o.perm_of_row(r).iter().zip(stored) {
                out[c as usize] = v;
            }
        }
        if let Some(b) = self.input_rotation {
            crate::rotation::hadamard_blocks(out, b);
        }
    }

    /// The same stored rows read as `W'·R`: stored under an input rotation of block
    /// `b` (a power of two dividing `cols`).
    pub fn with_input_rotation(mut self, b: usize) -> Result<WeightMatrix, KernelError> {
        if !crate::rotation::valid_block(b, self.cols) {
            return Err(format!("input rotation block {b} over {} columns", self.cols).into());
        }
        self.input_rotation = Some(b);
        Ok(self)
    }

    /// The whole matrix as f32 (tests, small tensors such as norms and biases).
    pub fn to_f32(&self) -> Vec<f32> {
        if let Some(t) = &self.trellis {
            return crate::trellis::dense(self, t);
        }
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, chunk) in out.chunks_mut(self.cols.max(1)).enumerate() {
            self.row_f32_into(r, chunk);
        }
        out
    }
}
