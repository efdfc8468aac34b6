//! Device buffers: [`CudaBuf`] (f32 activations, norm weights, KV-cache rows) with a
//! length apart from its allocation, so a KV cache grows by appending rows into spare
//! capacity (doubling when full, up to the cache's maximum) instead of reallocating per
//! token.

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::sync::Arc;

/// f32 values on the device: the first `len` of `data`.
pub struct CudaBuf {
    pub(super) data: CudaSlice<f32>,
    pub(super) len: usize,
    /// capacity limit for growth (KV caches); `len` for plain buffers
    pub(super) max: usize,
}

impl Clone for CudaBuf {
    fn clone(&self) -> Self {
        CudaBuf {
            data: self.data.clone(),
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
            data: ok("alloc", stream.alloc_zeros::<f32>(n.max(1))),
            len: n,
            max: n,
        }
    }

    /// An uninitialized buffer of `n` values (every value is written before it is read).
    pub(super) fn alloc(stream: &Arc<CudaStream>, n: usize) -> CudaBuf {
        // SAFETY: callers write all `n` values before reading them.
        let data = ok("alloc", unsafe { stream.alloc::<f32>(n.max(1)) });
        CudaBuf {
            data,
            len: n,
            max: n,
        }
    }

    /// Host values on the device.
    pub(super) fn from_host(stream: &Arc<CudaStream>, v: &[f32]) -> CudaBuf {
        if v.is_empty() {
            return CudaBuf::zeros(stream, 0);
        }
        CudaBuf {
            data: ok("upload", stream.clone_htod(v)),
            len: v.len(),
            max: v.len(),
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
            let cap = need
                .max(2 * self.data.len())
                .max(4096)
                .min(self.max.max(need));
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
            self.data = grown;
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
