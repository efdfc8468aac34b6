//! Continuous batching on a dedicated thread. Between two forward steps the scheduler
//! takes new requests from the channel, drops those whose client went away, admits
//! waiting ones into free batch slots (FIFO, at most `max_batch` running), and retires
//! finished ones. Each step runs one [`Model::forward`] over every running sequence:
//! one token for sequences that are decoding, a chunk of prompt for new ones — at most
//! `prompt_chunk` tokens per sequence, and while any sequence is decoding at most
//! `2 × prompt_chunk` prompt tokens in the whole step, so a long new prompt delays the
//! running streams by a bounded amount. Sampling and detokenization of the batch run
//! in parallel. Text goes back to the HTTP handler through the request's own channel;
//! a closed channel (client disconnected) cancels the sequence and frees its slot.
//!
//! [`Model::forward`]: llmq_engine::Model::forward

use crate::api::{ApiError, Usage};
use crate::health::{panic_message, EngineHealth, FailHook, RunningGuard};
use crate::metrics::Metrics;
use crate::ServeBackend;
use llmq_engine::Backend;
use llmq_engine::{Logits, SeqStep};
use llmq_runtime::{FinishReason, GenRequest, LoadedModel, Session};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{self, error::TryRecvError};

/// What the scheduler tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// text ready to send
    Text(String),
    /// generation ended
    Done { finish: FinishReason, usage: Usage },
    /// generation failed (or the server is going down)
    Error(ApiError),
}

/// A request handed to the scheduler.
pub struct Job {
    /// for log lines
    pub label: String,
    pub req: GenRequest,
    pub events: mpsc::UnboundedSender<Event>,
    pub arrived: Instant,
}

pub enum Msg {
    Job(Box<Job>),
    /// end every request now and stop the thread
    Abort,
}

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// context positions per sequence
    pub ctx: usize,
    pub max_batch: usize,
    pub prompt_chunk: usize,
    /// one log line per finished request
    pub log_requests: bool,
    /// where log lines go (stderr, with the front end's prefix)
    pub log: fn(&str),
}

struct Active<'t, B: Backend> {
    s: Session<'t, B>,
    job: Job,
    first_token: Option<Instant>,
    /// tokens to run this step
    input: Vec<u32>,
    /// text produced this step
    out: String,
}

/// Start the scheduler thread.
pub fn spawn<B: ServeBackend>(
    engine: Arc<LoadedModel<B>>,
    cfg: Config,
    metrics: Arc<Metrics>,
    health: Arc<EngineHealth>,
    rx: mpsc::UnboundedReceiver<Msg>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let hook = FailHook::from_env();
    std::thread::Builder::new()
        .name("llmq-scheduler".into())
        .spawn(move || {
            let _running = RunningGuard(&health);
            run(&engine, cfg, &metrics, &health, hook, rx)
        })
}

fn usage<B: Backend>(s: &Session<B>) -> Usage {
    Usage {
        prompt_tokens: s.n_prompt,
        completion_tokens: s.generated.len(),
    }
}

fn run<B: ServeBackend>(
    engine: &LoadedModel<B>,
    cfg: Config,
    m: &Metrics,
    health: &EngineHealth,
    hook: Option<FailHook>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Active<B>> = Vec::new();
    let mut window = (Instant::now(), 0u64);
    loop {
        if active.is_empty() && waiting.is_empty() {
            m.set_tokens_per_second(0.0);
            m.active_sequences.store(0, Relaxed);
            match rx.blocking_recv() {
                Some(Msg::Job(j)) => waiting.push_back(*j),
                Some(Msg::Abort) | None => return,
            }
            window = (Instant::now(), 0);
        }
        loop {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => waiting.push_back(*j),
                Ok(Msg::Abort) | Err(TryRecvError::Disconnected) => {
                    let e = ApiError::overloaded("the server is shutting down");
                    for j in waiting.iter().chain(active.iter().map(|a| &a.job)) {
                        let _ = j.events.send(Event::Error(e.clone()));
                    }
                    m.queue_depth.fetch_sub(waiting.len(), Relaxed);
                    m.active_sequences.store(0, Relaxed);
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        // Requests whose client went away, waiting or running.
        waiting.retain(|j| {
            let gone = j.events.is_closed();
            if gone {
                m.queue_depth.fetch_sub(1, Relaxed);
                m.requests_cancelled.fetch_add(1, Relaxed);
            }
            !gone
        });
        active.retain(|a| {
            let gone = a.job.events.is_closed();
            if gone {
                m.requests_cancelled.fetch_add(1, Relaxed);
                if cfg.log_requests {
                    (cfg.log)(&format!(
                        "{}: client disconnected after {} tokens; slot freed",
                        a.job.label,
                        a.s.generated.len()
                    ));
                }
            }
            !gone
        });
        // Admit into free slots, oldest first.
        while active.len() < cfg.max_batch {
            let Some(job) = waiting.pop_front() else {
                break;
            };
            m.queue_depth.fetch_sub(1, Relaxed);
            let req = job.req.clone();
            match Session::new(&engine.model, &engine.tokenizer, req, cfg.ctx) {
                Ok(s) => {
                    m.prompt_tokens.fetch_add(s.n_prompt as u64, Relaxed);
                    if let Some(finish) = s.finish {
                        let _ = job.events.send(Event::Done {
                            finish,
                            usage: usage(&s),
                        });
                        m.requests_completed.fetch_add(1, Relaxed);
                        continue;
                    }
                    active.push(Active {
                        s,
                        job,
                        first_token: None,
                        input: Vec::new(),
                        out: String::new(),
                    });
                }
                Err(e) => {
                    m.requests_failed.fetch_add(1, Relaxed);
                    let _ = job.events.send(Event::Error(
                        ApiError::invalid(Some("messages"), e.to_string())
                            .with_code("context_length_exceeded"),
                    ));
                }
            }
        }
        m.active_sequences.store(active.len(), Relaxed);
        if active.is_empty() {
            continue;
        }
        step(engine, cfg, m, health, hook, &mut active, &mut window);
    }
}

/// One forward step over the running batch, then sampling, streaming and retiring.
fn step<B: ServeBackend>(
    engine: &LoadedModel<B>,
    cfg: Config,
    m: &Metrics,
    health: &EngineHealth,
    hook: Option<FailHook>,
    active: &mut Vec<Active<B>>,
    window: &mut (Instant, u64),
) {
    let decoding = active.iter().any(|a| !a.s.in_prompt());
    let mut budget = if decoding {
        2 * cfg.prompt_chunk
    } else {
        cfg.prompt_chunk * active.len()
    };
    for a in active.iter_mut() {
        a.input.clear();
        if a.s.in_prompt() {
            let n = cfg.prompt_chunk.min(budget).min(a.s.prompt_left());
            if n > 0 {
                budget -= n;
                a.input.extend_from_slice(a.s.next_input(n));
            }
        } else {
            a.input.extend_from_slice(a.s.next_input(1));
        }
    }
    let mut steps: Vec<SeqStep<B>> = Vec::with_capacity(active.len());
    for a in active.iter_mut().filter(|a| !a.input.is_empty()) {
        let done_prompt = !a.s.in_prompt() || a.input.len() == a.s.prompt_left();
        steps.push(SeqStep {
            tokens: &a.input,
            cache: &mut a.s.cache,
            logits: if done_prompt {
                Logits::Last
            } else {
                Logits::None
            },
        });
    }
    let n_step = m.forward_steps.fetch_add(1, Relaxed) + 1;
    // the engine's errors and, as the last line of defence, its panics end this batch
    // with 500; the scheduler goes on with the next requests
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(h) = hook.filter(|h| h.step == n_step) {
            if h.panic {
                panic!("injected engine panic (test hook)");
            }
            return Err("injected engine failure (test hook)".to_string());
        }
        engine.model.forward(&mut steps).map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|p| Err(format!("internal error: {}", panic_message(p.as_ref()))));
    drop(steps);
    let logits = match result {
        Ok(l) => {
            health.ok();
            l
        }
        Err(e) => {
            health.failed(&e);
            let err =
                ApiError::internal(format!("the engine failed: {e}")).with_code("engine_error");
            (cfg.log)(&format!("forward step failed: {e}"));
            for a in active.drain(..) {
                let _ = a.job.events.send(Event::Error(err.clone()));
                m.requests_failed.fetch_add(1, Relaxed);
            }
            return;
        }
    };
    // Sample and detokenize every sequence of the step (in parallel).
    let mut work: Vec<(&mut Active<B>, Option<&[f32]>)> = Vec::with_capacity(logits.len());
    let mut li = logits.iter();
    for a in active.iter_mut().filter(|a| !a.input.is_empty()) {
        let l = li.next().filter(|l| !l.is_empty()).map(|l| l.as_slice());
        work.push((a, l));
    }
    let before: usize = work.iter().map(|(a, _)| a.s.generated.len()).sum();
    let run_accept = |(a, l): &mut (&mut Active<B>, Option<&[f32]>)| {
        let n = a.input.len();
        a.out = a.s.accept(n, *l);
    };
    let sampled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if work.len() > 1 {
            work.par_iter_mut().for_each(run_accept);
        } else {
            work.iter_mut().for_each(run_accept);
        }
    }));
    if let Err(p) = sampled {
        drop(work);
        let e = format!(
            "internal error while sampling: {}",
            panic_message(p.as_ref())
        );
        health.failed(&e);
        (cfg.log)(&e);
        let err = ApiError::internal(e).with_code("engine_error");
        for a in active.drain(..) {
            let _ = a.job.events.send(Event::Error(err.clone()));
            m.requests_failed.fetch_add(1, Relaxed);
        }
        return;
    }
    let after: usize = work.iter().map(|(a, _)| a.s.generated.len()).sum();
    drop(work);
    let new_tokens = (after - before) as u64;
    m.generated_tokens.fetch_add(new_tokens, Relaxed);
    window.1 += new_tokens;
    let el = window.0.elapsed().as_secs_f64();
    if el >= 1.0 {
        m.set_tokens_per_second(window.1 as f64 / el);
        *window = (Instant::now(), 0);
    }
    let now = Instant::now();
    active.retain_mut(|a| {
        if a.first_token.is_none() && !a.s.generated.is_empty() {
            a.first_token = Some(now);
            m.observe_ttft((now - a.job.arrived).as_secs_f64());
        }
        if !a.out.is_empty() {
            let _ = a.job.events.send(Event::Text(std::mem::take(&mut a.out)));
        }
        let Some(finish) = a.s.finish else {
            return true;
        };
        let u = usage(&a.s);
        let _ = a.job.events.send(Event::Done { finish, usage: u });
        m.requests_completed.fetch_add(1, Relaxed);
        if cfg.log_requests {
            let ttft = a
                .first_token
                .map(|t| (t - a.job.arrived).as_secs_f64())
                .unwrap_or(0.0);
            let decode = a.first_token.map(|t| (now - t).as_secs_f64()).unwrap_or(0.0);
            let tps = u.completion_tokens.saturating_sub(1) as f64 / decode.max(1e-9);
            (cfg.log)(&format!(
                "{}: prompt {} tokens, generated {} tokens, first token after {:.2} s, {:.1} tokens/s, finish: {}",
                a.job.label,
                u.prompt_tokens,
                u.completion_tokens,
                ttft,
                tps,
                finish.as_str()
            ));
        }
        false
    });
    m.active_sequences.store(active.len(), Relaxed);
}
