//! Server counters and gauges, shared by the HTTP handlers and the scheduler thread
//! (atomics only), rendered as Prometheus text for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Upper bounds (seconds) of the time-to-first-token histogram buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0,
];

#[derive(Default)]
pub struct Metrics {
    /// requests accepted into the queue
    pub requests_total: AtomicU64,
    /// finished normally (stop or length)
    pub requests_completed: AtomicU64,
    /// answered 4xx before generation (validation, auth, unknown model)
    pub requests_invalid: AtomicU64,
    /// answered 503 (queue full or shutting down)
    pub requests_rejected: AtomicU64,
    /// client went away before the end
    pub requests_cancelled: AtomicU64,
    /// failed inside the engine
    pub requests_failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// waiting for a batch slot
    pub queue_depth: AtomicUsize,
    /// in the running batch
    pub active_sequences: AtomicUsize,
    pub forward_steps: AtomicU64,
    /// generated tokens per second over the last window (f64 bits)
    pub tokens_per_second: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_sum_us: AtomicU64,
}

impl Metrics {
    pub fn observe_ttft(&self, secs: f64) {
        for (b, le) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Relaxed);
        self.ttft_sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    pub fn set_tokens_per_second(&self, v: f64) {
        self.tokens_per_second.store(v.to_bits(), Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self, model: &str) -> String {
        let mut s = String::new();
        let label = format!(
            "model=\"{}\"",
            model.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let mut counter = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {v}"
            );
        };
        let c = |a: &AtomicU64| a.load(Relaxed).to_string();
        counter(
            "llmq_requests_total",
            "Requests accepted for generation.",
            "counter",
            c(&self.requests_total),
        );
        counter(
            "llmq_requests_completed_total",
            "Requests that finished (stop or length).",
            "counter",
            c(&self.requests_completed),
        );
        counter(
            "llmq_requests_invalid_total",
            "Requests refused with a 4xx error.",
            "counter",
            c(&self.requests_invalid),
        );
        counter(
            "llmq_requests_rejected_total",
            "Requests refused with 503 (queue full or shutting down).",
            "counter",
            c(&self.requests_rejected),
        );
        counter(
            "llmq_requests_cancelled_total",
            "Requests dropped because the client disconnected.",
            "counter",
            c(&self.requests_cancelled),
        );
        counter(
            "llmq_requests_failed_total",
            "Requests that failed in the engine.",
            "counter",
            c(&self.requests_failed),
        );
        counter(
            "llmq_prompt_tokens_total",
            "Prompt tokens processed.",
            "counter",
            c(&self.prompt_tokens),
        );
        counter(
            "llmq_generation_tokens_total",
            "Tokens generated.",
            "counter",
            c(&self.generated_tokens),
        );
        counter(
            "llmq_forward_steps_total",
            "Batched forward steps run.",
            "counter",
            c(&self.forward_steps),
        );
        counter(
            "llmq_queue_depth",
            "Requests waiting for a batch slot.",
            "gauge",
            self.queue_depth.load(Relaxed).to_string(),
        );
        counter(
            "llmq_active_sequences",
            "Sequences in the running batch.",
            "gauge",
            self.active_sequences.load(Relaxed).to_string(),
        );
        counter(
            "llmq_tokens_per_second",
            "Generated tokens per second, all sequences together, over the last second of work.",
            "gauge",
            format!(
                "{:.3}",
                f64::from_bits(self.tokens_per_second.load(Relaxed))
            ),
        );
        let name = "llmq_time_to_first_token_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} Time from request arrival to its first generated token.\n# TYPE {name} histogram"
        );
        for (b, le) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            let _ = writeln!(
                s,
                "{name}_bucket{{{label},le=\"{le}\"}} {}",
                b.load(Relaxed)
            );
        }
        let n = self.ttft_count.load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{{label},le=\"+Inf\"}} {n}");
        let _ = writeln!(
            s,
            "{name}_sum{{{label}}} {:.6}",
            self.ttft_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "{name}_count{{{label}}} {n}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.observe_ttft(0.3);
        m.generated_tokens.fetch_add(5, Relaxed);
        let t = m.render("tiny");
        assert!(t.contains("llmq_generation_tokens_total{model=\"tiny\"} 5"));
        assert!(t.contains("llmq_time_to_first_token_seconds_bucket{model=\"tiny\",le=\"0.25\"} 0"));
        assert!(t.contains("llmq_time_to_first_token_seconds_bucket{model=\"tiny\",le=\"0.5\"} 1"));
        assert!(t.contains("llmq_time_to_first_token_seconds_count{model=\"tiny\"} 1"));
    }
}
