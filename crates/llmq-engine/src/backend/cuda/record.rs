//! Decode steps replayed as CUDA graphs. A decode step of a 1B model is some 400 small
//! kernels; launched one by one, the host's ~3 µs per launch, not the GPU, sets the
//! pace (`NOTES.md`, fourth session). llama.cpp runs such steps from a CUDA graph; so do
//! we, without changing the model code:
//!
//! - while a step is *recorded* ([`Recorder::begin`], from `Backend::begin_step` for
//!   steps of one token per sequence), every kernel launch, copy and memset is written
//!   to a tape instead of being issued; buffers come from an arena that restarts at each
//!   step, and host arrays (positions, cache addresses, offsets) go to a staging area
//!   that is copied to the device in one transfer — so a step that repeats the previous
//!   one's work produces the same tape, argument bytes included;
//! - when a result is needed on the host (the logits), the tape is *flushed*: replayed
//!   from the graph captured for an identical tape, or else issued once under stream
//!   capture, instantiated, kept (a few per model: one per batch size, one after each
//!   cache growth) and launched.
//!
//! Anything whose values change between steps must therefore reach the kernels through
//! device memory written by the staging copy, never as a launch argument (the KV append
//! writes at an offset read from there, `copy_at` in `kernels/elementwise.cu`).
//! A step that needs the host midway (MoE routing) is flushed there and not recorded
//! further; such models are then not recorded again. `LLMQ_CUDA_GRAPHS=0`, or the
//! kernel trace, turns recording off.

use cudarc::driver::sys::{self, CUstreamCaptureMode};
use cudarc::driver::{
    result, CudaContext, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PinnedHostSlice,
};
use std::sync::Arc;

/// Graphs kept per backend (least recently used dropped).
const GRAPHS: usize = 16;
/// First arena and staging chunk sizes.
const ARENA_BYTES: usize = 32 << 20;
const STAGING_BYTES: usize = 1 << 20;
/// Alignment of arena and staging allocations.
const ALIGN: usize = 256;

/// A kernel argument as the 8 bytes the kernel's parameter is read from (scalars in
/// the low bytes; the driver reads each parameter's own size).
pub(in crate::backend::cuda) trait KArg {
    fn bits(self) -> u64;
}

macro_rules! scalar_arg {
    ($($t:ty => |$x:ident| $e:expr),+ $(,)?) => {$(
        impl KArg for &$t {
            fn bits(self) -> u64 {
                let $x = *self;
                $e
            }
        }
        impl KArg for &mut $t {
            fn bits(self) -> u64 {
                let $x = *self;
                $e
            }
        }
    )+};
}
scalar_arg!(
    i32 => |x| x as u32 as u64,
    u32 => |x| x as u64,
    i64 => |x| x as u64,
    u64 => |x| x,
    f32 => |x| x.to_bits() as u64,
    f64 => |x| x.to_bits(),
);

impl<T> KArg for &CudaSlice<T> {
    fn bits(self) -> u64 {
        self.device_ptr(self.stream()).0
    }
}

impl<T> KArg for &mut CudaSlice<T> {
    fn bits(self) -> u64 {
        self.device_ptr(self.stream()).0
    }
}

/// A launch's arguments, at most [`Args::MAX`].
pub(in crate::backend::cuda) struct Args {
    v: [u64; Args::MAX],
    n: usize,
}

impl Args {
    const MAX: usize = 24;

    pub(in crate::backend::cuda) fn new() -> Args {
        Args {
            v: [0; Args::MAX],
            n: 0,
        }
    }

    pub(in crate::backend::cuda) fn push(&mut self, a: impl KArg) {
        assert!(
            self.n < Args::MAX,
            "a kernel with more than {} arguments",
            Args::MAX
        );
        self.v[self.n] = a.bits();
        self.n += 1;
    }

    pub(in crate::backend::cuda) fn as_slice(&self) -> &[u64] {
        &self.v[..self.n]
    }
}

/// Issue one kernel launch now.
///
/// # Safety
/// `args` match `f`'s parameters and every address in them is valid for what the
/// kernel reads and writes.
pub(in crate::backend::cuda) unsafe fn launch_now(
    f: sys::CUfunction,
    cfg: LaunchConfig,
    args: &[u64],
    stream: &CudaStream,
) -> Result<(), result::DriverError> {
    let mut vals: [u64; Args::MAX] = [0; Args::MAX];
    vals[..args.len()].copy_from_slice(args);
    let mut ptrs: [*mut std::ffi::c_void; Args::MAX] = [std::ptr::null_mut(); Args::MAX];
    for (p, v) in ptrs.iter_mut().zip(vals.iter_mut()) {
        *p = v as *mut u64 as *mut _;
    }
    result::launch_kernel(
        f,
        cfg.grid_dim,
        cfg.block_dim,
        cfg.shared_mem_bytes,
        stream.cu_stream(),
        &mut ptrs[..args.len()],
    )
}

/// Tape entry tags.
const LAUNCH: u64 = 0;
const COPY: u64 = 1;
const ZERO: u64 = 2;

/// Device memory handed out by bumping an offset; restarts at each step, so a step
/// that allocates the same sizes in the same order gets the same addresses.
#[derive(Default)]
struct Arena {
    chunks: Vec<CudaSlice<u8>>,
    used: usize,
}

impl Arena {
    fn alloc(
        &mut self,
        stream: &Arc<CudaStream>,
        bytes: usize,
    ) -> Result<u64, result::DriverError> {
        let bytes = bytes.max(1).next_multiple_of(ALIGN);
        let room = self.chunks.last().map_or(0, |c| c.len() - self.used);
        if bytes > room {
            let size = (2 * self.chunks.last().map_or(0, |c| c.len()))
                .max(ARENA_BYTES)
                .max(bytes);
            // SAFETY: arena memory is written by the kernels before it is read.
            self.chunks.push(unsafe { stream.alloc::<u8>(size) }?);
            self.used = 0;
        }
        let c = self.chunks.last().expect("a chunk with room");
        let p = c.device_ptr(stream).0 + self.used as u64;
        self.used += bytes;
        Ok(p)
    }

    /// Restart; several chunks (one step outgrew the first) become one of their total
    /// size. Returns whether addresses changed.
    fn restart(&mut self, stream: &Arc<CudaStream>) -> Result<bool, result::DriverError> {
        self.used = 0;
        if self.chunks.len() <= 1 {
            return Ok(false);
        }
        let total: usize = self.chunks.iter().map(|c| c.len()).sum();
        stream.synchronize()?;
        self.chunks.clear();
        // SAFETY: as in `alloc`.
        self.chunks.push(unsafe { stream.alloc::<u8>(total) }?);
        Ok(true)
    }
}

/// Pinned host memory and its device twin: host arrays are written to the first and
/// copied to the second in one transfer at each flush.
struct Staging {
    host: PinnedHostSlice<u8>,
    host_ptr: *mut u8,
    dev: CudaSlice<u8>,
    used: usize,
    sent: usize,
}

// SAFETY: the host pointer is only used under the recorder's lock.
unsafe impl Send for Staging {}

impl Staging {
    fn new(
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        bytes: usize,
    ) -> Result<Staging, result::DriverError> {
        // SAFETY: the bytes are written before they are copied.
        let mut host = unsafe { ctx.alloc_pinned::<u8>(bytes) }?;
        let host_ptr = host.as_mut_ptr()?;
        // SAFETY: the device copy is written by the staging transfer before use.
        let dev = unsafe { stream.alloc::<u8>(bytes) }?;
        Ok(Staging {
            host,
            host_ptr,
            dev,
            used: 0,
            sent: 0,
        })
    }

    fn room(&self) -> usize {
        self.host.len() - self.used
    }

    /// Copy the part written since the last send to the device.
    fn send(&mut self, stream: &Arc<CudaStream>) -> Result<(), result::DriverError> {
        if self.used > self.sent {
            let base = self.dev.device_ptr(stream).0;
            // SAFETY: `sent..used` lies inside both buffers; the host memory is pinned
            // and is not rewritten before the copy has run (`Recorder::begin` waits).
            unsafe {
                let src =
                    std::slice::from_raw_parts(self.host_ptr.add(self.sent), self.used - self.sent);
                result::memcpy_htod_async(base + self.sent as u64, src, stream.cu_stream())?;
            }
            self.sent = self.used;
        }
        Ok(())
    }
}

/// A captured graph and the tape it was captured from.
struct Cached {
    tape: Vec<u64>,
    graph: CudaGraph,
    used: u64,
}

// SAFETY: CUDA graph objects may be used from any thread as long as calls on one graph
// are serialised (driver API "Graph object thread safety"); a `Cached` is only reached
// through the recorder's lock.
unsafe impl Send for Cached {}

/// Counters for `LLMQ_CUDA_TRACE` and the benchmarks' notes.
#[derive(Debug, Default, Clone, Copy)]
pub struct GraphStats {
    /// flushes replayed from a kept graph
    pub replays: u64,
    /// graphs captured
    pub captures: u64,
    /// flushes issued without a graph (capture failed)
    pub eager: u64,
    /// recorded steps
    pub steps: u64,
    /// host seconds from each recorded step's start to its first flush (the model code
    /// and the recording)
    pub record_s: f64,
    /// host seconds spent flushing (staging copy, tape comparison, capture, launch)
    pub flush_s: f64,
}

/// The recording state of one backend (under its lock).
pub(in crate::backend::cuda) struct Recorder {
    /// recording allowed at all (`LLMQ_CUDA_GRAPHS`, trace off, no failure so far)
    allowed: bool,
    /// the current step is being recorded
    active: bool,
    /// a recorded step needed the host midway: do not record further steps
    host_midway: bool,
    tape: Vec<u64>,
    arena: Arena,
    staging: Vec<Staging>,
    /// buffers a recorded step replaced (grown caches): freed after the flush
    keep: Vec<Box<dyn std::any::Any + Send>>,
    graphs: Vec<Cached>,
    clock: u64,
    /// the last flush's staging copy may still be running
    copy_in_flight: bool,
    /// when the step being recorded began (until its first flush)
    started: Option<std::time::Instant>,
    pub(in crate::backend::cuda) stats: GraphStats,
}

impl Recorder {
    pub(in crate::backend::cuda) fn new(allowed: bool) -> Recorder {
        Recorder {
            allowed,
            active: false,
            host_midway: false,
            tape: Vec::new(),
            arena: Arena::default(),
            staging: Vec::new(),
            keep: Vec::new(),
            graphs: Vec::new(),
            clock: 0,
            copy_in_flight: false,
            started: None,
            stats: GraphStats::default(),
        }
    }

    pub(in crate::backend::cuda) fn active(&self) -> bool {
        self.active
    }

    /// Start recording a step (when allowed and the model needs no host midway).
    pub(in crate::backend::cuda) fn begin(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
    ) {
        if !self.allowed || self.host_midway {
            return;
        }
        let r = (|| -> Result<(), result::DriverError> {
            if self.copy_in_flight {
                // the staging host memory is about to be rewritten
                stream.synchronize()?;
                self.copy_in_flight = false;
            }
            if self.arena.restart(stream)? {
                self.graphs.clear();
            }
            if self.staging.len() > 1 {
                let total: usize = self.staging.iter().map(|s| s.host.len()).sum();
                stream.synchronize()?;
                self.staging.clear();
                self.staging.push(Staging::new(ctx, stream, total)?);
                self.graphs.clear();
            }
            if self.staging.is_empty() {
                self.staging.push(Staging::new(ctx, stream, STAGING_BYTES)?);
            }
            let s = &mut self.staging[0];
            s.used = 0;
            s.sent = 0;
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.active = true;
                self.stats.steps += 1;
                self.started = Some(std::time::Instant::now());
            }
            Err(e) => self.give_up(&format!("preparing a recorded step: {e}")),
        }
    }

    /// Stop recording for good after a driver failure (the eager path still works).
    fn give_up(&mut self, why: &str) {
        eprintln!(
            "note: CUDA graphs are off for this run ({why}); kernels are launched one by one"
        );
        self.allowed = false;
        self.active = false;
    }

    /// `bytes` of arena memory for the step being recorded.
    pub(in crate::backend::cuda) fn alloc(
        &mut self,
        stream: &Arc<CudaStream>,
        bytes: usize,
    ) -> Option<u64> {
        match self.arena.alloc(stream, bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                self.give_up(&format!("arena allocation: {e}"));
                None
            }
        }
    }

    /// `v` staged for the device; its device address (valid after the next flush's copy).
    pub(in crate::backend::cuda) fn stage(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        v: &[u8],
    ) -> Option<u64> {
        let bytes = v.len().max(1).next_multiple_of(16);
        if self.staging.last().is_none_or(|s| s.room() < bytes) {
            let size = (2 * self.staging.last().map_or(0, |s| s.host.len()))
                .max(STAGING_BYTES)
                .max(bytes);
            match Staging::new(ctx, stream, size) {
                Ok(s) => self.staging.push(s),
                Err(e) => {
                    self.give_up(&format!("staging allocation: {e}"));
                    return None;
                }
            }
        }
        let s = self.staging.last_mut().expect("a staging chunk with room");
        // SAFETY: `used..used + len` lies inside the pinned chunk, which no copy is
        // reading (a chunk is only rewritten after `begin` waited for the last copy).
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), s.host_ptr.add(s.used), v.len());
        }
        let p = s.dev.device_ptr(stream).0 + s.used as u64;
        s.used += bytes;
        Some(p)
    }

    pub(in crate::backend::cuda) fn push_launch(
        &mut self,
        f: sys::CUfunction,
        cfg: LaunchConfig,
        args: &[u64],
    ) {
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        self.tape.extend_from_slice(&[
            LAUNCH,
            f as u64,
            g.0 as u64,
            g.1 as u64,
            g.2 as u64,
            b.0 as u64,
            b.1 as u64,
            b.2 as u64,
            cfg.shared_mem_bytes as u64,
            args.len() as u64,
        ]);
        self.tape.extend_from_slice(args);
    }

    pub(in crate::backend::cuda) fn push_copy(&mut self, dst: u64, src: u64, bytes: usize) {
        self.tape.extend_from_slice(&[COPY, dst, src, bytes as u64]);
    }

    pub(in crate::backend::cuda) fn push_zero(&mut self, dst: u64, bytes: usize) {
        self.tape.extend_from_slice(&[ZERO, dst, bytes as u64]);
    }

    /// Keep `b` alive until the recorded work that reads it has been issued.
    pub(in crate::backend::cuda) fn keep(&mut self, b: Box<dyn std::any::Any + Send>) {
        self.keep.push(b);
    }

    /// Issue everything recorded so far: the staging copy, then the kept graph of an
    /// identical tape, or a newly captured one. `midway`: the host needs a result
    /// before the step ends, so recording stops here (and for later steps).
    pub(in crate::backend::cuda) fn flush(&mut self, stream: &Arc<CudaStream>, midway: bool) {
        if !self.active {
            return;
        }
        if midway {
            self.host_midway = true;
            self.active = false;
        }
        let t = std::time::Instant::now();
        if let Some(s) = self.started.take() {
            self.stats.record_s += (t - s).as_secs_f64();
        }
        let r = self.flush_inner(stream);
        self.stats.flush_s += t.elapsed().as_secs_f64();
        if let Err(e) = r {
            // the tape was issued eagerly if capture failed; a failure here is the
            // driver's, which the eager path reports on its next call
            self.give_up(&format!("replaying a step: {e}"));
        }
        self.tape.clear();
        // freed in stream order, after the work just issued
        self.keep.clear();
    }

    fn flush_inner(&mut self, stream: &Arc<CudaStream>) -> Result<(), result::DriverError> {
        for s in &mut self.staging {
            s.send(stream)?;
            self.copy_in_flight = true;
        }
        if self.tape.is_empty() {
            return Ok(());
        }
        self.clock += 1;
        if let Some(c) = self.graphs.iter_mut().find(|c| c.tape == self.tape) {
            c.used = self.clock;
            self.stats.replays += 1;
            return c.graph.launch();
        }
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let issued = issue(&self.tape, stream);
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        let graph = match (issued, graph) {
            (Ok(()), Ok(Some(g))) => g,
            (issued, graph) => {
                // capture failed: issue the tape as plain launches
                let why = issued.err().or(graph.err());
                issue(&self.tape, stream)?;
                self.stats.eager += 1;
                self.give_up(&format!(
                    "capture failed{}",
                    why.map_or(String::new(), |e| format!(": {e}"))
                ));
                return Ok(());
            }
        };
        graph.launch()?;
        self.stats.captures += 1;
        if self.graphs.len() >= GRAPHS {
            if let Some(i) = (0..self.graphs.len()).min_by_key(|&i| self.graphs[i].used) {
                self.graphs.swap_remove(i);
            }
        }
        self.graphs.push(Cached {
            tape: self.tape.clone(),
            graph,
            used: self.clock,
        });
        Ok(())
    }

    /// The step ended: issue what is left and stop recording.
    pub(in crate::backend::cuda) fn end(&mut self, stream: &Arc<CudaStream>) {
        self.flush(stream, false);
        self.active = false;
    }

    /// A download waits for the stream, so the staging copy has run.
    pub(in crate::backend::cuda) fn synced(&mut self) {
        self.copy_in_flight = false;
    }
}

/// Issue a tape's operations on `stream`, in order.
fn issue(tape: &[u64], stream: &Arc<CudaStream>) -> Result<(), result::DriverError> {
    let mut i = 0;
    while i < tape.len() {
        match tape[i] {
            LAUNCH => {
                let h = &tape[i..i + 10];
                let cfg = LaunchConfig {
                    grid_dim: (h[2] as u32, h[3] as u32, h[4] as u32),
                    block_dim: (h[5] as u32, h[6] as u32, h[7] as u32),
                    shared_mem_bytes: h[8] as u32,
                };
                let n = h[9] as usize;
                let args = &tape[i + 10..i + 10 + n];
                // SAFETY: recorded from a launch whose arguments were checked by its
                // caller; the addresses are the arena's, the staging area's, weights' and
                // caches', all alive until this step's work has run.
                unsafe { launch_now(h[1] as sys::CUfunction, cfg, args, stream)? };
                i += 10 + n;
            }
            COPY => {
                // SAFETY: as above, both ranges were valid when recorded.
                unsafe {
                    result::memcpy_dtod_async(
                        tape[i + 1],
                        tape[i + 2],
                        tape[i + 3] as usize,
                        stream.cu_stream(),
                    )?
                };
                i += 4;
            }
            ZERO => {
                // SAFETY: as above.
                unsafe {
                    result::memset_d8_async(
                        tape[i + 1],
                        0,
                        tape[i + 2] as usize,
                        stream.cu_stream(),
                    )?
                };
                i += 3;
            }
            t => unreachable!("tape tag {t}"),
        }
    }
    Ok(())
}
