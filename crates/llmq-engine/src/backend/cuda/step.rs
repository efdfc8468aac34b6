//! Where an operation's launches, buffers and host arrays go: issued and allocated at
//! once, or — while a decode step is recorded (`record`) — written to the step's tape,
//! taken from its arena and staged for its one host-to-device copy. Every operation of
//! the backend goes through these methods, so the model code does not know which.

use super::buffers::{ok, CudaBuf, Dev};
use super::record::{launch_now, Args, GraphStats, Recorder};
use super::uploads::Cacheable;
use super::Cuda;
use cudarc::driver::{DeviceRepr, LaunchConfig};
use std::mem::ManuallyDrop;
use std::sync::MutexGuard;

impl Cuda {
    fn rec(&self) -> MutexGuard<'_, Recorder> {
        self.inner.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Launch kernel `name` (or record the launch).
    pub(super) fn launch_args(&self, name: &str, cfg: LaunchConfig, a: &Args) {
        let f = self.func(name).cu_function();
        let t = self.trace_start();
        let recorded = {
            let mut r = self.rec();
            r.active() && {
                r.push_launch(f, cfg, a.as_slice());
                true
            }
        };
        if !recorded {
            ok("context", self.inner.ctx.bind_to_thread());
            // SAFETY: the arguments match the kernel's signature in `kernels/` and every
            // index the kernel forms stays inside the buffers passed (checked by callers).
            ok(name, unsafe {
                launch_now(f, cfg, a.as_slice(), self.stream())
            });
        }
        self.trace_end(name, t);
    }

    /// `n` uninitialised values of `T` (every value is written before it is read).
    pub(super) fn dev<T: DeviceRepr>(&self, n: usize) -> Dev<T> {
        let n = n.max(1);
        let s = self.stream();
        let mut r = self.rec();
        if r.active() {
            if let Some(p) = r.alloc(s, n * std::mem::size_of::<T>()) {
                // SAFETY: `p` is arena memory of `n` values, alive while the step's
                // work runs; the view does not free it.
                return Dev::View(ManuallyDrop::new(unsafe { s.upgrade_device_ptr(p, n) }));
            }
        }
        drop(r);
        // SAFETY: as documented, callers write before reading.
        Dev::Owned(ok("alloc", unsafe { s.alloc::<T>(n) }))
    }

    /// An uninitialised buffer of `n` f32 values.
    pub(super) fn buf(&self, n: usize) -> CudaBuf {
        CudaBuf {
            data: self.dev(n),
            len: n,
            max: n,
        }
    }

    /// A zeroed buffer of `n` f32 values.
    pub(super) fn buf_zeroed(&self, n: usize) -> CudaBuf {
        let b = self.buf(n);
        let mut r = self.rec();
        if r.active() {
            r.push_zero(b.ptr_at(self.stream(), 0), n.max(1) * 4);
        } else {
            drop(r);
            let p = b.ptr_at(self.stream(), 0);
            ok("context", self.inner.ctx.bind_to_thread());
            // SAFETY: `p` holds `n` (at least one) values.
            ok("memset", unsafe {
                cudarc::driver::result::memset_d8_async(
                    p,
                    0,
                    n.max(1) * 4,
                    self.stream().cu_stream(),
                )
            });
        }
        b
    }

    /// Host values on the device (staged while a step is recorded).
    pub(super) fn put<T: DeviceRepr + Copy + Unpin>(&self, v: &[T]) -> Dev<T> {
        let s = self.stream();
        let mut r = self.rec();
        if r.active() && !v.is_empty() {
            // SAFETY: `T` is plain device data; its bytes are what the device reads.
            let bytes = unsafe {
                std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v))
            };
            if let Some(p) = r.stage(&self.inner.ctx, s, bytes) {
                // SAFETY: `p` is staging memory holding `v` once the step's copy has run,
                // before any recorded kernel reads it; the view does not free it.
                return Dev::View(ManuallyDrop::new(unsafe {
                    s.upgrade_device_ptr(p, v.len())
                }));
            }
        }
        drop(r);
        let t = self.trace_start();
        let d = if v.is_empty() {
            // SAFETY: a placeholder never read.
            Dev::Owned(ok("alloc", unsafe { s.alloc::<T>(1) }))
        } else {
            Dev::Owned(ok("upload", s.clone_htod(v)))
        };
        self.trace_end("upload", t);
        d
    }

    /// Host integers (indices, positions) on the device.
    pub(super) fn upload_i32(&self, v: impl IntoIterator<Item = usize>) -> Dev<i32> {
        let v: Vec<i32> = v.into_iter().map(|x| x as i32).collect();
        self.put(&v)
    }

    /// `v` on the device, reusing the copy of an earlier upload of the same values
    /// (positions, RoPE factors, cache addresses; see `uploads`); staged while a step is
    /// recorded, where the values must reach the kernels through the step's copy.
    pub(super) fn cached<T: Cacheable>(&self, v: &[T]) -> Dev<T> {
        if self.rec().active() {
            return self.put(v);
        }
        let t = self.trace_start();
        let s = self.inner.uploads.get(self.stream(), v);
        self.trace_end("upload (cached)", t);
        Dev::Shared(s)
    }

    /// Append `src`'s values `from..from + n` to cache `dst`: a copy, or while recording
    /// a `copy_at` launch whose offset is staged (so the tape does not change as the
    /// cache fills), after growing `dst` into a new allocation when it is full.
    pub(super) fn append_values(&self, dst: &mut CudaBuf, src: &CudaBuf, from: usize, n: usize) {
        if !self.rec().active() {
            dst.append(self.stream(), src, from, n);
            return;
        }
        let s = self.stream();
        let need = dst.len + n;
        if need > dst.data.len() {
            let cap = dst.grown_capacity(need);
            // SAFETY: the first `len` values are copied in below, the rest written by
            // later appends before any read.
            let grown = ok("alloc", unsafe { s.alloc::<f32>(cap) });
            let old = std::mem::replace(&mut dst.data, Dev::Owned(grown));
            let mut r = self.rec();
            if dst.len > 0 {
                let (new_ptr, old_ptr) = (dst.ptr_at(s, 0), old.device_ptr_of(s));
                r.push_copy(new_ptr, old_ptr, dst.len * 4);
            }
            r.keep(Box::new(old));
        }
        if n > 0 {
            let off = self.put(&[dst.len as i64]);
            let src_ptr = src.ptr_at(s, from);
            let count = n as u64;
            super::ops::launch!(
                self,
                "copy_at",
                super::ops::flat(n),
                &src_ptr,
                &mut dst.data,
                &off,
                &count
            );
        }
        dst.len = need;
    }

    /// Start recording a decode step of `tokens` tokens over `seqs` sequences, when it
    /// is one token per sequence and too few for the tensor-core products.
    pub(super) fn begin_recorded_step(&self, tokens: usize, seqs: usize) {
        if tokens == 0 || tokens != seqs || tokens >= super::tensor_core::MIN_TOKENS {
            return;
        }
        self.rec().begin(&self.inner.ctx, self.stream());
    }

    /// Issue the recorded work before the host reads a result; `midway`: the step goes
    /// on after this read (recording stops for it and later steps).
    pub(super) fn flush_recorded(&self, midway: bool) {
        let mut r = self.rec();
        if r.active() {
            r.flush(self.stream(), midway);
        }
    }

    /// The step ended.
    pub(super) fn end_recorded_step(&self) {
        self.rec().end(self.stream());
    }

    /// The stream was waited for (the staging copy has run).
    pub(super) fn stream_synced(&self) {
        self.rec().synced();
    }

    /// How recorded steps were issued so far.
    pub fn graph_stats(&self) -> GraphStats {
        self.rec().stats
    }
}

impl<T> Dev<T> {
    fn device_ptr_of(&self, s: &std::sync::Arc<cudarc::driver::CudaStream>) -> u64 {
        use cudarc::driver::DevicePtr;
        self.device_ptr(s).0
    }
}
