//! An OpenAI-compatible HTTP server (axum on tokio) over the engine, with continuous
//! batching.
//!
//! Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`
//! (both streamable as server-sent events), `GET /health`, `GET /metrics`
//! (Prometheus). The handlers ([`routes`]) validate and tokenize requests, then hand
//! them to the [`scheduler`] thread, which runs every active sequence through one
//! batched forward step at a time; text comes back per request over a channel. A
//! bounded queue answers 503 when full; a client that disconnects has its sequence
//! dropped.
//!
//! [`bind`] takes the address first (so a taken port fails before a model loads), then
//! [`serve`] runs until the cancel flag is set (the CLI's Ctrl-C handler) or SIGTERM
//! arrives: it stops accepting connections, lets running requests finish for up to
//! 10 s, and returns the counters. With an API key, `/v1/*` requires
//! `Authorization: Bearer KEY`.

pub mod api;
pub mod body_deadline;
pub mod conn;
pub mod health;
pub mod metrics;
mod routes;
pub mod scheduler;
pub mod sse;

use llmq_engine::Backend;
use llmq_runtime::{render_chat, LoadedModel, RuntimeError};
use llmq_tokenizer::ChatMessage;
use llmq_tokenizer::Tokenizer;
use metrics::Metrics;
use routes::{AppState, St};
use scheduler::Msg;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The chat template given to the server does not render.
    #[error("--chat-template does not render: {0}")]
    ChatTemplate(RuntimeError),
    /// Setting up the listening socket failed.
    #[error("socket setup failed: {0}")]
    Socket(std::io::Error),
    /// The async runtime cannot start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The HTTP server stopped with an error.
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Require `Authorization: Bearer KEY` on `/v1/*` (an empty key counts as none)
    pub api_key: Option<String>,
    /// Context positions per sequence (default: the model's training context, at most 4096)
    pub ctx_size: Option<usize>,
    /// Sequences generated in parallel
    pub max_batch: usize,
    /// Requests waiting for a batch slot before new ones get 503
    pub max_queue: usize,
    /// Model id reported and required (default: the model's name)
    pub model_name: Option<String>,
    /// Jinja chat template text, replacing the model's own
    pub chat_template: Option<String>,
    /// Prompt tokens per sequence per batched step
    pub prompt_chunk: usize,
    /// Largest accepted request body in bytes
    pub max_body_bytes: usize,
    /// No notes and no per-request lines on the log (the listening line is always logged)
    pub quiet: bool,
    /// Where log lines go
    pub log: fn(&str),
    /// Set to stop the server (as SIGTERM does)
    pub cancel: &'static AtomicBool,
    /// When the server was started (for uptime, `created` and the summary's duration)
    pub started: Instant,
}

/// What a finished run served.
pub struct ServeSummary {
    /// the model id it served under
    pub model_name: String,
    /// the address it listened on
    pub address: SocketAddr,
    /// the final counters
    pub metrics: Arc<Metrics>,
    /// seconds from `started` to the end
    pub seconds: f64,
}

/// Bind `host:port` (port 0: any free one), ready for [`serve`].
pub fn bind(host: &str, port: u16) -> Result<TcpListener, ServerError> {
    let addr = format!("{host}:{port}");
    let listener = TcpListener::bind(&addr).map_err(|source| ServerError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(ServerError::Socket)?;
    Ok(listener)
}

/// Serve `model` on `listener` until cancelled, then return what was served.
pub fn serve<B: ServeBackend>(
    listener: TcpListener,
    model: LoadedModel<B>,
    cfg: ServerConfig,
) -> Result<ServeSummary, ServerError> {
    let log = cfg.log;
    let train_ctx = model.model.hp.n_ctx_train.max(2);
    let ctx = cfg.ctx_size.unwrap_or(train_ctx.min(4096));
    if ctx > train_ctx && !cfg.quiet {
        log(&format!(
            "note: --ctx-size {ctx} exceeds the model's training context of {train_ctx}; quality may drop beyond it"
        ));
    }
    let model_name = cfg.model_name.clone().unwrap_or_else(|| model.name.clone());
    check_chat_template(&model, &cfg)?;
    let engine = Arc::new(model);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let health = Arc::new(health::EngineHealth::default());
    let sched = scheduler::spawn(
        engine.clone(),
        scheduler::Config {
            ctx,
            max_batch: cfg.max_batch,
            prompt_chunk: cfg.prompt_chunk,
            log_requests: !cfg.quiet,
            log,
        },
        metrics.clone(),
        health.clone(),
        rx,
    )
    .map_err(ServerError::Runtime)?;
    let state = Arc::new(AppState {
        engine: engine as Arc<dyn ModelView>,
        model_name: model_name.clone(),
        api_key: cfg.api_key.clone().filter(|k| !k.is_empty()),
        ctx,
        chat_template: cfg.chat_template.clone(),
        max_queue: cfg.max_queue,
        max_batch: cfg.max_batch,
        tx: tx.clone(),
        metrics: metrics.clone(),
        health,
        draining: AtomicBool::new(false),
        started: cfg.started,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("llmq-http")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let address = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(ServerError::Socket)?;
        let bound = listener.local_addr().map_err(ServerError::Socket)?;
        // The one line scripts wait for: always logged, even when quiet.
        log(&format!(
            "listening on http://{bound} (model `{model_name}`, context {ctx}, batch {}, queue {}{})",
            cfg.max_batch,
            cfg.max_queue,
            if state.api_key.is_some() {
                ", API key required"
            } else {
                ""
            }
        ));
        let app = routes::router(state.clone(), cfg.max_body_bytes);
        conn::serve(
            listener,
            app,
            shutdown_signal(state.clone(), cfg.cancel, cfg.quiet, log),
        )
        .await
        .map_err(ServerError::Serve)?;
        Ok::<_, ServerError>(bound)
    })?;
    let _ = tx.send(Msg::Abort);
    let _ = sched.join();
    drop(rt);
    Ok(ServeSummary {
        model_name,
        address,
        metrics,
        seconds: cfg.started.elapsed().as_secs_f64(),
    })
}

/// A backend whose loaded models can move to the scheduler thread and be shared with
/// the handlers (the CPU and CUDA backends both are).
pub trait ServeBackend:
    Backend<Buf: Send + Sync, Weight: Send + Sync> + Send + Sync + 'static
{
}

impl<B> ServeBackend for B where
    B: Backend<Buf: Send + Sync, Weight: Send + Sync> + Send + Sync + 'static
{
}

/// What the HTTP handlers read of the loaded model, whatever device runs it (the
/// scheduler alone runs the model itself).
pub(crate) trait ModelView: Send + Sync {
    fn tokenizer(&self) -> &Tokenizer;
    fn n_vocab(&self) -> usize;
    fn n_ctx_train(&self) -> usize;
}

impl<B: ServeBackend> ModelView for LoadedModel<B> {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn n_vocab(&self) -> usize {
        self.model.n_vocab()
    }
    fn n_ctx_train(&self) -> usize {
        self.model.hp.n_ctx_train
    }
}

/// Render the chat template once now, rather than fail on every request: a template
/// given to the server must render; without one, a model lacking its own only gets a
/// note (chat requests will answer 400).
fn check_chat_template<B: Backend>(
    model: &LoadedModel<B>,
    cfg: &ServerConfig,
) -> Result<(), ServerError> {
    let probe = [ChatMessage::new("user", "hi")];
    match render_chat(&model.tokenizer, cfg.chat_template.as_deref(), &probe) {
        Ok(_) => Ok(()),
        Err(e) if cfg.chat_template.is_some() => Err(ServerError::ChatTemplate(e)),
        Err(e) => {
            if !cfg.quiet {
                (cfg.log)(&format!(
                    "note: no usable chat template ({e}): /v1/chat/completions will answer 400; pass --chat-template FILE"
                ));
            }
            Ok(())
        }
    }
}

/// Resolves when the cancel flag is set or on SIGTERM; then new requests get 503 and,
/// after a grace period, running ones are ended.
async fn shutdown_signal(st: St, cancel: &'static AtomicBool, quiet: bool, log: fn(&str)) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        if cancel.load(Relaxed) {
            break;
        }
        #[cfg(unix)]
        if let Some(t) = term.as_mut() {
            tokio::select! {
                _ = t.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    st.draining.store(true, Relaxed);
    let running = st.metrics.active_sequences.load(Relaxed) + st.metrics.queue_depth.load(Relaxed);
    if !quiet {
        log(&format!(
            "shutting down: no new requests; {running} running get up to 10 s to finish"
        ));
    }
    let tx = st.tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = tx.send(Msg::Abort);
    });
}
