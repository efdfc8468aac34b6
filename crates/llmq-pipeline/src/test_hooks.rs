//! Test hooks, kept out of the production request types: the command line's tests
//! stand in for a kill (stop after N units, leaving the checkpoint as a crash would)
//! or slow each unit down so that a real kill lands partway through. The hooks are
//! fixed once per process — installed by the front end at start, else read from the
//! environment on first use — and every driver reads them from here.

use std::sync::OnceLock;

/// Environment variable: milliseconds to sleep after each finished unit.
pub const UNIT_DELAY_ENV: &str = "LLM_QUANTIZE_TEST_UNIT_DELAY_MS";
/// Environment variable: `1` makes calibrated quantization load the whole model at
/// once instead of block by block (the reference the streamed output is compared
/// with).
pub const WHOLE_MODEL_ENV: &str = "LLM_QUANTIZE_TEST_WHOLE_MODEL";
/// Environment variable: `1` makes calibrated quantization spill its activations to
/// disk whatever the RAM budget (a budget small enough to force it cannot hold a
/// block, which is exit 5).
pub const SPILL_ENV: &str = "LLM_QUANTIZE_TEST_SPILL_ACTIVATIONS";

/// What the hooks ask of a run; the default asks nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestHooks {
    /// stop (as if killed) after this many units were written and checkpointed
    pub stop_after_units: Option<usize>,
    /// sleep this long after each unit
    pub unit_delay_ms: Option<u64>,
    /// calibrate on the whole model loaded at once, not layer-streamed
    pub whole_model: bool,
    /// spill calibration activations to disk whatever the budget
    pub spill_activations: bool,
}

impl TestHooks {
    /// The hooks the environment asks for ([`UNIT_DELAY_ENV`]).
    pub fn from_env() -> TestHooks {
        TestHooks {
            stop_after_units: None,
            unit_delay_ms: std::env::var(UNIT_DELAY_ENV)
                .ok()
                .and_then(|v| v.parse().ok()),
            whole_model: std::env::var(WHOLE_MODEL_ENV).is_ok_and(|v| v == "1"),
            spill_activations: std::env::var(SPILL_ENV).is_ok_and(|v| v == "1"),
        }
    }
}

static HOOKS: OnceLock<TestHooks> = OnceLock::new();

/// Fixes the hooks for this process; a no-op once they were installed or read.
pub fn install(hooks: TestHooks) {
    let _ = HOOKS.set(hooks);
}

/// The hooks in force.
pub fn get() -> TestHooks {
    *HOOKS.get_or_init(TestHooks::from_env)
}

/// Sleeps for the unit delay, if one is set.
pub(crate) fn after_unit() {
    if let Some(ms) = get().unit_delay_ms {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
