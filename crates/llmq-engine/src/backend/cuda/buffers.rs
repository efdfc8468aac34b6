//! Device buffers: [`CudaBuf`] (f32 activations, norm weights, KV-cache rows) over
//! [`Dev`] memory (owned, a shared upload, or a view into a recorded step's arena), with a
//! length apart from its allocation, so a KV cache grows by appending rows into spare
//! capacity (doubling when full, up to the cache's maximum) instead of reallocating per
//! token.

use super::record::KArg;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// Device values: an allocation of their own, a shared upload (`uploads`), or a view
/// into the memory of a recorded step (`record`: arena or staging area), which is not
/// freed with the view.
pub enum Dev<T> {
    Owned(CudaSlice<T>),
    Shared(Arc<CudaSlice<T>>),
    View(ManuallyDrop<CudaSlice<T>>),
}

impl<T> Deref for Dev<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        match self {
            Dev::Owned(s) => s,
            Dev::Shared(s) => s,
            Dev::View(s) => s,
        }
    }
}

impl<T> DerefMut for Dev<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        match self {
            Dev::Owned(s) => s,
            Dev::View(s) => s,
            Dev::Shared(_) => unreachable!("shared uploads are never written"),
        }
    }
}

impl<T> Drop for Dev<T> {
    fn drop(&mut self) {
        if let Dev::View(s) = self {
            // SAFETY: taken once, here; the memory belongs to the recorder
            let s = unsafe { ManuallyDrop::take(s) };
            s.leak();
        }
    }
}

impl<T> KArg for &Dev<T> {
    fn bits(self) -> u64 {
        self.device_ptr(self.stream()).0
    }
}

impl<T> KArg for &mut Dev<T> {
    fn bits(self) -> u64 {
        self.device_ptr(self.stream()).0
    }
}

/// f32 values on the device: the first `len` of `data`.
pub struct CudaBuf {
    pub(super) data: Dev<f32>,
    pub(super) len: usize,
    /// capacity limit for growth (KV caches); `len` for plain buffers
    pub(super) max: usize,
}

impl Clone for CudaBuf {
    fn clone(&self) -> Self {
        CudaBuf {
            data: Dev::Owned((*self.data).clone()),
            len: self.len,
            max: self.max,
        }
    }
}

/// `r` or a panic naming the failed CUDA operation (a driver failure mid-run has no
/// error channel in the [`crate::Backend`] operations).
pub(super) fn ok<T>(what: &str, r: Result<T, cudarc::driver::DriverError>) -> T {
    r.unwrap_or_else(|e| panic!("CUDA {what} failed: {e}"))
}

impl CudaBuf {
    /// A zeroed buffer of `n` values.
    pub(super) fn zeros(stream: &Arc<CudaStream>, n: usize) -> CudaBuf {
        CudaBuf {
            data: Dev::Owned(ok("alloc", stream.alloc_zeros::<f32>(n.max(1)))),
            len: n,
            max: n,
        }
    }

    /// The values, on the host.
    pub(super) fn to_vec(&self, stream: &Arc<CudaStream>) -> Vec<f32> {
        if self.len == 0 {
            return Vec::new();
        }
        ok("download", stream.clone_dtoh(&self.data.slice(..self.len)))
    }

    /// The device address of value `offset`.
    pub(super) fn ptr_at(&self, stream: &Arc<CudaStream>, offset: usize) -> u64 {
        let (p, _sync) = self.data.device_ptr(stream);
        p + (offset * std::mem::size_of::<f32>()) as u64
    }

    /// The capacity a cache grows to for `need` values: doubling, at least 4096 values,
    /// at most its maximum.
    pub(super) fn grown_capacity(&self, need: usize) -> usize {
        need.max(2 * self.data.len())
            .max(4096)
            .min(self.max.max(need))
    }

    /// Append `src[from..from + n]` (values), growing the allocation when needed.
    pub(super) fn append(
        &mut self,
        stream: &Arc<CudaStream>,
        src: &CudaBuf,
        from: usize,
        n: usize,
    ) {
        let need = self.len + n;
        if need > self.data.len() {
            let cap = self.grown_capacity(need);
            // SAFETY: the first `len` values are copied in below; the rest is written
            // by later appends before any read (reads stop at `len`).
            let mut grown = ok("alloc", unsafe { stream.alloc::<f32>(cap) });
            if self.len > 0 {
                ok(
                    "copy",
                    stream.memcpy_dtod(
                        &self.data.slice(..self.len),
                        &mut grown.slice_mut(..self.len),
                    ),
                );
            }
            self.data = Dev::Owned(grown);
        }
        if n > 0 {
            ok(
                "copy",
                stream.memcpy_dtod(
                    &src.data.slice(from..from + n),
                    &mut self.data.slice_mut(self.len..need),
                ),
            );
        }
        self.len = need;
    }
}
