//! RAM awareness: available memory from `/proc/meminfo`, peak RSS from
//! `/proc/self/status` (VmHWM), and the number of layers to process at once:
//! `workers = floor(budget × 0.8 / per_layer_bytes)`, capped by CPUs and
//! `--max-workers` (the formula of the Metal Marlin memory manager).

/// Bytes of memory the kernel reports as available (`MemAvailable`), if readable.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_field(&text, "MemAvailable:")
}

/// Peak resident set size of this process so far (`VmHWM`), if readable.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    meminfo_field(&text, "VmHWM:")
}

fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// How many layers may be in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerPlan {
    pub workers: usize,
    pub budget_bytes: u64,
    pub per_layer_bytes: u64,
}

/// Size the worker pool. `None` when even one layer does not fit in the budget.
pub fn plan_workers(
    per_layer_bytes: u64,
    budget_bytes: u64,
    cpus: usize,
    max_workers: Option<usize>,
) -> Option<WorkerPlan> {
    let usable = (budget_bytes as f64 * 0.8) as u64;
    if per_layer_bytes > usable {
        return None;
    }
    let by_ram = (usable / per_layer_bytes.max(1)) as usize;
    let cap = max_workers.unwrap_or(cpus).max(1);
    Some(WorkerPlan {
        workers: by_ram.clamp(1, cap),
        budget_bytes,
        per_layer_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_follow_budget_and_caps() {
        let gb = 1u64 << 30;
        assert_eq!(plan_workers(gb, 10 * gb, 64, None).unwrap().workers, 8);
        assert_eq!(plan_workers(gb, 10 * gb, 4, None).unwrap().workers, 4);
        assert_eq!(plan_workers(gb, 10 * gb, 64, Some(2)).unwrap().workers, 2);
        assert_eq!(plan_workers(gb, gb, 64, None), None);
        assert!(peak_rss_bytes().unwrap() > 0);
        assert!(available_bytes().unwrap() > 0);
        assert_eq!(
            meminfo_field("MemAvailable:   1024 kB\n", "MemAvailable:"),
            Some(1 << 20)
        );
    }
}
