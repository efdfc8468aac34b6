//! Progress on stderr: `[llm-quantize] ...` log lines and one bar per run that
//! advances per layer, as the CLI contract's "Progress Output" shows.

use crate::output::Verbosity;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use llmq_pipeline::Progress;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

pub struct BarProgress {
    verbosity: Verbosity,
    bar: Mutex<Option<ProgressBar>>,
    /// stderr is not a terminal: print a plain line per layer instead of a bar
    plain: Option<Mutex<(usize, usize, Instant)>>,
}

impl BarProgress {
    pub fn new(verbosity: Verbosity) -> BarProgress {
        let plain = (!std::io::stderr().is_terminal()).then(|| Mutex::new((0, 0, Instant::now())));
        BarProgress {
            verbosity,
            bar: Mutex::new(None),
            plain,
        }
    }
}

impl Progress for BarProgress {
    fn message(&self, msg: &str) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        match &*self.bar.lock().unwrap() {
            Some(b) if !b.is_finished() => b.println(format!("[llm-quantize] {msg}")),
            _ => eprintln!("[llm-quantize] {msg}"),
        }
    }

    fn start(&self, total_units: usize, already_done: usize) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        if let Some(p) = &self.plain {
            *p.lock().unwrap() = (already_done, total_units, Instant::now());
            return;
        }
        let bar =
            ProgressBar::with_draw_target(Some(total_units as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "Quantizing {bar:20} {percent:>3}% {pos}/{len} layers [{elapsed} elapsed] {msg}",
            )
            .unwrap()
            .progress_chars("━━ "),
        );
        bar.set_position(already_done as u64);
        *self.bar.lock().unwrap() = Some(bar);
    }

    fn unit_done(&self, label: &str) {
        if let (Some(p), true) = (&self.plain, self.verbosity > Verbosity::Quiet) {
            let mut g = p.lock().unwrap();
            g.0 += 1;
            let (done, total, t0) = *g;
            let s = t0.elapsed().as_secs();
            eprintln!(
                "Quantizing {:>3}% {done}/{total} layers [{:02}:{:02} elapsed] {label}",
                done * 100 / total.max(1),
                s / 60,
                s % 60
            );
            return;
        }
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.inc(1);
            if self.verbosity >= Verbosity::Debug {
                b.println(format!("[llm-quantize] done {label}"));
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.finish();
        }
    }
}

/// One `[llm-quantize] …` log line on stderr.
pub fn log(msg: &str) {
    eprintln!("[llm-quantize] {msg}");
}

/// A bar over `total` items of work (`eval` windows): an indicatif bar on a terminal,
/// a plain line every few percent otherwise, nothing when quiet.
pub struct CountBar {
    bar: Option<ProgressBar>,
    plain: bool,
    label: &'static str,
    unit: &'static str,
    last_pct: usize,
    t0: Instant,
}

impl CountBar {
    pub fn new(
        total: usize,
        label: &'static str,
        unit: &'static str,
        verbosity: Verbosity,
    ) -> CountBar {
        let quiet = verbosity == Verbosity::Quiet;
        let plain = !quiet && !std::io::stderr().is_terminal();
        let bar = (!quiet && !plain).then(|| {
            let b = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{label} {{bar:20}} {{percent:>3}}% {{pos}}/{{len}} {unit} [{{elapsed}} elapsed, {{eta}} left]"
                ))
                .unwrap()
                .progress_chars("━━ "),
            );
            b
        });
        CountBar {
            bar,
            plain,
            label,
            unit,
            last_pct: usize::MAX,
            t0: Instant::now(),
        }
    }

    pub fn set(&mut self, done: usize, total: usize) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
        } else if self.plain {
            let pct = done * 100 / total.max(1);
            if pct / 10 != self.last_pct / 10 || done == total {
                self.last_pct = pct;
                let s = self.t0.elapsed().as_secs();
                eprintln!(
                    "{} {pct:>3}% {done}/{total} {} [{:02}:{:02} elapsed]",
                    self.label,
                    self.unit,
                    s / 60,
                    s % 60
                );
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
