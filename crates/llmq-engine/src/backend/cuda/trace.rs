//! `LLMQ_CUDA_TRACE=1`: every kernel launch and host transfer of the backend timed on
//! its own (the stream is synchronised before and after it), summed per kernel name
//! over the process and printed to stderr when it exits. It shows where a decode step's time
//! goes on machines without a system profiler; the synchronisation makes the traced run
//! itself slower, so read the shares, not the total.
//!
//! `LLMQ_CUDA_TRACE=host`: nothing is synchronised; each operation's *host* time (argument
//! packing, allocation, the driver's launch call) is summed instead, and `download` is the
//! time the host waits for the GPU to finish. A decode step whose host time is close to
//! its wall time and whose `download` wait is near zero is bound by the host, not the GPU.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

extern "C" {
    /// The C library's exit hook: runs on `std::process::exit` and on return from `main`.
    fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
}

static GLOBAL: OnceLock<Trace> = OnceLock::new();

/// The process's trace (read from the environment once).
pub(super) fn global() -> &'static Trace {
    GLOBAL.get_or_init(|| {
        let t = Trace::from_env();
        if t.on {
            // SAFETY: registers a function that only reads `GLOBAL` and writes stderr.
            unsafe { atexit(print_at_exit) };
        }
        t
    })
}

extern "C" fn print_at_exit() {
    if let Some(r) = GLOBAL.get().and_then(Trace::report) {
        eprint!("{r}");
    }
}

/// Per-name launch counts and seconds, when tracing is on.
pub(super) struct Trace {
    on: bool,
    /// host time only (no synchronisation)
    host: bool,
    totals: Mutex<BTreeMap<String, (u64, f64)>>,
}

impl Trace {
    /// On when `LLMQ_CUDA_TRACE` is set to anything but `0` or empty.
    fn from_env() -> Trace {
        let v = std::env::var("LLMQ_CUDA_TRACE").unwrap_or_default();
        let on = !v.is_empty() && v != "0";
        Trace {
            on,
            host: v == "host",
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    pub(super) fn on(&self) -> bool {
        self.on
    }

    /// Whether operations are synchronised around their timing (not in host mode).
    pub(super) fn synchronised(&self) -> bool {
        self.on && !self.host
    }

    /// Add one timed operation.
    pub(super) fn record(&self, name: &str, since: Instant) {
        let dt = since.elapsed().as_secs_f64();
        let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.entry(name.to_string()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += dt;
    }

    /// The table, most time first; `None` when tracing is off or nothing ran.
    pub(super) fn report(&self) -> Option<String> {
        if !self.on {
            return None;
        }
        let t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            return None;
        }
        let total: f64 = t.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = t.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut s = format!(
            "CUDA trace ({}): {:.3} s in {} operations\n{:<24} {:>9} {:>10} {:>8} {:>6}\n",
            if self.host {
                "host time of each operation, not synchronised"
            } else {
                "each operation synchronised alone"
            },
            total,
            t.values().map(|v| v.0).sum::<u64>(),
            "operation",
            "count",
            "total ms",
            "mean us",
            "share"
        );
        for (name, (n, secs)) in rows {
            s.push_str(&format!(
                "{:<24} {:>9} {:>10.2} {:>8.2} {:>5.1}%\n",
                name,
                n,
                secs * 1e3,
                secs * 1e6 / *n as f64,
                100.0 * secs / total.max(1e-12)
            ));
        }
        Some(s)
    }
}
