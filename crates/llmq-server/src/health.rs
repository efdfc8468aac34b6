//! The engine's health as `/health` reports it: whether the scheduler thread is running
//! and whether the last forward step failed (an engine error or a panic caught at the
//! step; the batch that was running gets 500, the server keeps serving, and the next
//! successful step clears the failure). Also the test hook that injects such a failure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Shared between the scheduler (writer) and the HTTP handlers (readers).
#[derive(Debug)]
pub struct EngineHealth {
    scheduler_running: AtomicBool,
    last_failure: Mutex<Option<String>>,
    /// failed forward steps since the start
    pub failures: AtomicU64,
}

impl Default for EngineHealth {
    fn default() -> Self {
        EngineHealth {
            scheduler_running: AtomicBool::new(true),
            last_failure: Mutex::new(None),
            failures: AtomicU64::new(0),
        }
    }
}

impl EngineHealth {
    /// A forward step failed with `why`.
    pub fn failed(&self, why: &str) {
        self.failures.fetch_add(1, Relaxed);
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
    }

    /// A forward step succeeded.
    pub fn ok(&self) {
        let mut f = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_some() {
            *f = None;
        }
    }

    /// The scheduler thread ended (normally at shutdown, or by a panic outside a step).
    pub fn scheduler_stopped(&self) {
        self.scheduler_running.store(false, Relaxed);
    }

    pub fn scheduler_running(&self) -> bool {
        self.scheduler_running.load(Relaxed)
    }

    /// Why the engine is not healthy, if it is not.
    pub fn problem(&self) -> Option<String> {
        if !self.scheduler_running() {
            return Some("the scheduler thread has stopped: no request can be served".into());
        }
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(|f| format!("the last forward step failed: {f}"))
    }
}

/// Marks the scheduler stopped when dropped (also when its thread unwinds).
pub struct RunningGuard<'a>(pub &'a EngineHealth);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.scheduler_stopped();
    }
}

/// Test hook (`LLMQ_TEST_ENGINE_FAIL=N` or `N:panic`, read once when the scheduler
/// starts): forward step N (counting from 1) fails with an error, or panics. Never set
/// in production; the `serve` test uses it to check the failure path end to end.
#[derive(Debug, Clone, Copy)]
pub struct FailHook {
    pub step: u64,
    pub panic: bool,
}

impl FailHook {
    pub fn from_env() -> Option<FailHook> {
        let v = std::env::var("LLMQ_TEST_ENGINE_FAIL").ok()?;
        let (n, panic) = match v.strip_suffix(":panic") {
            Some(n) => (n, true),
            None => (v.as_str(), false),
        };
        Some(FailHook {
            step: n.parse().ok()?,
            panic,
        })
    }
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
