//! Small host arrays that repeat (token positions, RoPE frequency factors, the KV-cache
//! addresses of a layer) uploaded once and reused while their content repeats: every
//! layer of a decode step asks for the same positions and factors, and a layer's cache
//! addresses stay the same until its cache grows. Each upload of pageable host memory
//! costs microseconds of host time and a copy on the stream; a step of a 16-layer model
//! made 80 of them.
//!
//! Entries are keyed by their bytes, so a reused copy always holds exactly what was
//! asked for; the least recently used entry is dropped beyond [`CAPACITY`]. A dropped
//! copy is freed in stream order, after the kernels queued before it.
//! `LLMQ_CUDA_UPLOAD_CACHE=0` uploads every time (to measure what the cache saves).

use super::buffers::ok;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Entries kept: two address lists per layer of the deepest models, plus positions.
const CAPACITY: usize = 512;
/// Arrays longer than this are uploaded every time (prompt-length lists rarely repeat).
const MAX_LEN: usize = 4096;

/// A device copy of one host array.
#[derive(Clone)]
pub(super) enum Uploaded {
    I32(Arc<CudaSlice<i32>>),
    U64(Arc<CudaSlice<u64>>),
    F32(Arc<CudaSlice<f32>>),
}

/// Host arrays already on the device, by content.
pub(super) struct UploadCache {
    enabled: bool,
    entries: Mutex<Entries>,
}

impl Default for UploadCache {
    fn default() -> Self {
        UploadCache {
            enabled: std::env::var("LLMQ_CUDA_UPLOAD_CACHE").map_or(true, |v| v != "0"),
            entries: Mutex::default(),
        }
    }
}

#[derive(Default)]
struct Entries {
    map: HashMap<Vec<u8>, (Uploaded, u64)>,
    clock: u64,
}

/// The element types the cache holds, with a tag that keeps equal bytes of different
/// types apart.
pub(super) trait Cacheable: DeviceRepr + ValidAsZeroBits + Copy + Unpin + 'static {
    const TAG: u8;
    fn wrap(s: Arc<CudaSlice<Self>>) -> Uploaded;
    fn unwrap(u: &Uploaded) -> Option<Arc<CudaSlice<Self>>>;
    fn bytes(v: &[Self]) -> Vec<u8>;
}

macro_rules! cacheable {
    ($t:ty, $tag:expr, $variant:ident) => {
        impl Cacheable for $t {
            const TAG: u8 = $tag;
            fn wrap(s: Arc<CudaSlice<Self>>) -> Uploaded {
                Uploaded::$variant(s)
            }
            fn unwrap(u: &Uploaded) -> Option<Arc<CudaSlice<Self>>> {
                match u {
                    Uploaded::$variant(s) => Some(s.clone()),
                    _ => None,
                }
            }
            fn bytes(v: &[Self]) -> Vec<u8> {
                let mut k = Vec::with_capacity(1 + v.len() * std::mem::size_of::<$t>());
                k.push(Self::TAG);
                for x in v {
                    k.extend_from_slice(&x.to_le_bytes());
                }
                k
            }
        }
    };
}
cacheable!(i32, 1, I32);
cacheable!(u64, 2, U64);
cacheable!(f32, 3, F32);

impl UploadCache {
    /// `v` on the device: the cached copy when the same values were uploaded before.
    pub(super) fn get<T: Cacheable>(&self, stream: &Arc<CudaStream>, v: &[T]) -> Arc<CudaSlice<T>> {
        if v.is_empty() {
            return Arc::new(ok("alloc", stream.alloc_zeros::<T>(1)));
        }
        if v.len() > MAX_LEN || !self.enabled {
            return Arc::new(ok("upload", stream.clone_htod(v)));
        }
        let key = T::bytes(v);
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.clock += 1;
        let now = e.clock;
        if let Some((u, used)) = e.map.get_mut(&key) {
            if let Some(s) = T::unwrap(u) {
                *used = now;
                return s;
            }
        }
        let s = Arc::new(ok("upload", stream.clone_htod(v)));
        if e.map.len() >= CAPACITY {
            if let Some(oldest) = e
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                e.map.remove(&oldest);
            }
        }
        e.map.insert(key, (T::wrap(s.clone()), now));
        s
    }
}
