//! `llm-quantize serve MODEL`: an OpenAI-compatible HTTP server (axum on tokio) over
//! the engine, with continuous batching.
//!
//! Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`
//! (both streamable as server-sent events), `GET /health`, `GET /metrics`
//! (Prometheus). The handlers validate and tokenize requests, then hand them to the
//! [`scheduler`] thread, which runs every active sequence through one batched forward
//! step at a time; text comes back per request over a channel. A bounded queue answers
//! 503 when full; a client that disconnects has its sequence dropped.
//!
//! Binds 127.0.0.1 unless `--host` says otherwise; `--api-key` (or
//! `LLM_QUANTIZE_API_KEY`) requires `Authorization: Bearer KEY` on `/v1/*`. Ctrl-C (or
//! SIGTERM) stops accepting connections, lets running requests finish for up to 10 s,
//! and prints a summary on stdout.

pub mod api;
pub mod metrics;
pub mod scheduler;
pub mod sse;

use crate::generation::GenRequest;
use crate::model_load::{load, LoadedModel};
use crate::output::{Mode, Verbosity};
use crate::progress::log;
use api::{ApiError, Endpoint, ParsedRequest, PromptInput, ResponseMeta};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use llmq_pipeline::PipelineError;
use llmq_tokenizer::{ChatMessage, Tokenizer};
use metrics::Metrics;
use scheduler::{Event, Job, Msg};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model: hub id, local folder (safetensors) or GGUF file
    pub model: String,
    /// Address to bind (0.0.0.0 exposes the server to the network)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed on stderr)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* [env: LLM_QUANTIZE_API_KEY]
    #[arg(
        long,
        env = "LLM_QUANTIZE_API_KEY",
        hide_env = true,
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Context size per sequence in tokens (default: the model's training context, at most 4096)
    #[arg(long)]
    pub ctx_size: Option<usize>,
    /// Sequences generated in parallel (continuous batching)
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Requests waiting for a batch slot before new ones get 503
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Model id reported by /v1/models and required in requests (default: the model's name)
    #[arg(long)]
    pub model_name: Option<String>,
    /// Jinja chat template file, replacing the model's own (or supplying one)
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Prompt tokens per sequence per batched step (prompts are processed in chunks)
    #[arg(long, default_value_t = 64)]
    pub prompt_chunk: usize,
    /// Largest accepted request body in bytes
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Hugging Face token for gated models [env: HF_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
}

/// What the handlers share.
struct AppState {
    engine: Arc<LoadedModel>,
    model_name: String,
    api_key: Option<String>,
    ctx: usize,
    chat_template: Option<String>,
    max_queue: usize,
    max_batch: usize,
    tx: mpsc::UnboundedSender<Msg>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    started: Instant,
}

type St = Arc<AppState>;

pub fn run(a: ServeArgs, mode: Mode, verbosity: Verbosity) -> Result<(), PipelineError> {
    let started = Instant::now();
    for (name, v) in [
        ("--max-batch", a.max_batch),
        ("--prompt-chunk", a.prompt_chunk),
        ("--max-body-bytes", a.max_body_bytes),
    ] {
        if v == 0 {
            return Err(PipelineError::invalid(
                format!("{name} must be at least 1"),
                format!("e.g. {name} 8"),
            ));
        }
    }
    if a.ctx_size.is_some_and(|c| c < 2) {
        return Err(PipelineError::invalid(
            "--ctx-size must be at least 2",
            "e.g. --ctx-size 4096",
        ));
    }
    let template = a
        .chat_template
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p).map_err(|e| {
                PipelineError::invalid(
                    format!("cannot read --chat-template {}: {e}", p.display()),
                    "Pass a readable Jinja template file",
                )
            })
        })
        .transpose()?;
    let addr = format!("{}:{}", a.host, a.port);
    // Bind before loading so a taken port fails fast.
    let std_listener = std::net::TcpListener::bind(&addr).map_err(|e| {
        PipelineError::invalid(
            format!("cannot listen on {addr}: {e}"),
            "Choose another --port (or --port 0 for any free one) or a local --host",
        )
    })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| PipelineError::general(format!("socket setup failed: {e}"), ""))?;
    let quiet = verbosity == Verbosity::Quiet;
    let m = load(&a.model, a.token.clone(), quiet)?;
    let train_ctx = m.model.hp.n_ctx_train.max(2);
    let ctx = a.ctx_size.unwrap_or(train_ctx.min(4096));
    if ctx > train_ctx && !quiet {
        log(&format!(
            "note: --ctx-size {ctx} exceeds the model's training context of {train_ctx}; quality may drop beyond it"
        ));
    }
    let model_name = a.model_name.clone().unwrap_or_else(|| m.name.clone());
    // Check the chat template once now, rather than on every request.
    let probe = [ChatMessage::new("user", "hi")];
    match render_chat(&m.tokenizer, template.as_deref(), &probe) {
        Ok(_) => {}
        Err(e) if template.is_some() => {
            return Err(PipelineError::invalid(
                format!("--chat-template does not render: {e}"),
                "Fix the template (Hugging Face Jinja chat template syntax)",
            ))
        }
        Err(e) => {
            if !quiet {
                log(&format!(
                    "note: no usable chat template ({e}): /v1/chat/completions will answer 400; pass --chat-template FILE"
                ));
            }
        }
    }
    let engine = Arc::new(m);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let sched = scheduler::spawn(
        engine.clone(),
        scheduler::Config {
            ctx,
            max_batch: a.max_batch,
            prompt_chunk: a.prompt_chunk,
            log_requests: verbosity >= Verbosity::Normal,
        },
        metrics.clone(),
        rx,
    );
    let state = Arc::new(AppState {
        engine,
        model_name: model_name.clone(),
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        ctx,
        chat_template: template,
        max_queue: a.max_queue,
        max_batch: a.max_batch,
        tx: tx.clone(),
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
        started,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("llmq-http")
        .enable_all()
        .build()
        .map_err(|e| PipelineError::general(format!("cannot start the runtime: {e}"), ""))?;
    let bound = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|e| PipelineError::general(format!("socket setup failed: {e}"), ""))?;
        let bound = listener
            .local_addr()
            .map_err(|e| PipelineError::general(format!("socket setup failed: {e}"), ""))?;
        // The one line scripts wait for: always printed, even with --verbosity quiet.
        log(&format!(
            "listening on http://{bound} (model `{model_name}`, context {ctx}, batch {}, queue {}{})",
            a.max_batch,
            a.max_queue,
            if state.api_key.is_some() {
                ", API key required"
            } else {
                ""
            }
        ));
        let app = router(state.clone(), a.max_body_bytes);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal(state.clone(), quiet))
            .await
            .map_err(|e| PipelineError::general(format!("the server failed: {e}"), ""))?;
        Ok::<_, PipelineError>(bound)
    })?;
    let _ = tx.send(Msg::Abort);
    let _ = sched.join();
    drop(rt);
    let secs = started.elapsed().as_secs_f64();
    let c = |x: &std::sync::atomic::AtomicU64| x.load(Relaxed);
    match mode {
        Mode::Json => {
            let v = json!({
                "status": "success",
                "model": model_name,
                "address": format!("http://{bound}"),
                "requests": c(&metrics.requests_total),
                "completed": c(&metrics.requests_completed),
                "cancelled": c(&metrics.requests_cancelled),
                "rejected": c(&metrics.requests_rejected),
                "invalid": c(&metrics.requests_invalid),
                "failed": c(&metrics.requests_failed),
                "prompt_tokens": c(&metrics.prompt_tokens),
                "generated_tokens": c(&metrics.generated_tokens),
                "duration_seconds": (secs * 100.0).round() / 100.0,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
        Mode::Human => println!(
            "Served {} requests ({} completed, {} cancelled, {} rejected, {} invalid) on http://{bound}: {} prompt tokens, {} generated tokens in {:.0} s",
            c(&metrics.requests_total),
            c(&metrics.requests_completed),
            c(&metrics.requests_cancelled),
            c(&metrics.requests_rejected),
            c(&metrics.requests_invalid),
            c(&metrics.prompt_tokens),
            c(&metrics.generated_tokens),
            secs
        ),
    }
    Ok(())
}

/// Resolves on Ctrl-C (the CLI's handler sets `CANCEL`) or SIGTERM; then new requests
/// get 503 and, after a grace period, running ones are ended.
async fn shutdown_signal(st: St, quiet: bool) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        if llmq_pipeline::CANCEL.load(Relaxed) {
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

fn router(st: St, max_body: usize) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::invalid(None, format!("unknown path {}", uri.path()))
        .with_status(StatusCode::NOT_FOUND)
        .with_code("not_found")
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::invalid(None, format!("{method} is not allowed on {}", uri.path()))
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .with_code("method_not_allowed")
}

impl AppState {
    fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        // constant-time comparison
        let (a, b) = (given.as_bytes(), key.as_bytes());
        let diff = a
            .iter()
            .zip(b)
            .fold(a.len() ^ b.len(), |d, (x, y)| d | (x ^ y) as usize);
        if diff == 0 {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }

    fn model_json(&self) -> serde_json::Value {
        json!({
            "id": self.model_name,
            "object": "model",
            "created": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                - self.started.elapsed().as_secs(),
            "owned_by": "llm-quantize",
            "meta": {
                "n_ctx": self.ctx,
                "n_ctx_train": self.engine.model.hp.n_ctx_train,
                "n_vocab": self.engine.model.n_vocab(),
                "max_batch": self.max_batch,
            },
        })
    }
}

async fn models(State(st): State<St>, headers: HeaderMap) -> Result<Response, ApiError> {
    st.check_auth(&headers)?;
    Ok(Json(json!({"object": "list", "data": [st.model_json()]})).into_response())
}

async fn model_by_id(
    State(st): State<St>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    st.check_auth(&headers)?;
    if id != st.model_name {
        return Err(ApiError::model_not_found(&id, &st.model_name));
    }
    Ok(Json(st.model_json()).into_response())
}

async fn health(State(st): State<St>) -> Response {
    let draining = st.draining.load(Relaxed);
    let body = json!({
        "status": if draining { "shutting_down" } else { "ok" },
        "model": st.model_name,
        "active_sequences": st.metrics.active_sequences.load(Relaxed),
        "queued_requests": st.metrics.queue_depth.load(Relaxed),
        "max_batch": st.max_batch,
        "max_queue": st.max_queue,
    });
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

async fn metrics_text(State(st): State<St>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(&st.model_name),
    )
        .into_response()
}

async fn chat(
    State(st): State<St>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    completion(st, headers, body, Endpoint::Chat).await
}

async fn completions(
    State(st): State<St>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    completion(st, headers, body, Endpoint::Completion).await
}

async fn completion(
    st: St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    match handle(&st, &headers, body, endpoint).await {
        Ok(r) => r,
        Err(e) => {
            let counter = match e.status.as_u16() {
                503 => &st.metrics.requests_rejected,
                400..=499 => &st.metrics.requests_invalid,
                _ => &st.metrics.requests_failed,
            };
            counter.fetch_add(1, Relaxed);
            e.into_response()
        }
    }
}

fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::invalid(
            None,
            "the request body is too large (see --max-body-bytes)".to_string(),
        )
        .with_status(status)
        .with_code("request_too_large")
    } else {
        ApiError::invalid(
            None,
            format!("cannot read the request body: {}", r.body_text()),
        )
        .with_status(status)
    }
}

async fn handle(
    st: &St,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    st.check_auth(headers)?;
    let body = body.map_err(body_error)?;
    let req = parse_request_blocking(endpoint, body).await?;
    if let Some(m) = &req.model {
        if m != &st.model_name {
            return Err(ApiError::model_not_found(m, &st.model_name));
        }
    }
    let st2 = st.clone();
    let prompt = req.prompt.clone();
    let tokens = tokio::task::spawn_blocking(move || st2.tokenize(prompt))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??;
    let n = tokens.len();
    let param = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completion => "prompt",
    };
    if n == 0 {
        return Err(ApiError::invalid(
            Some(param),
            "the prompt is empty (no tokens)",
        ));
    }
    if n >= st.ctx {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt has {n} tokens but the context holds {} (the server's --ctx-size); shorten the prompt",
                st.ctx
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let vocab = st.engine.model.n_vocab();
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            Some(param),
            format!("token id {t} is outside the vocabulary of {vocab}"),
        ));
    }
    if st.draining.load(Relaxed) {
        return Err(ApiError::overloaded("the server is shutting down"));
    }
    let q = st.metrics.queue_depth.fetch_add(1, Relaxed);
    if q >= st.max_queue {
        st.metrics.queue_depth.fetch_sub(1, Relaxed);
        return Err(ApiError::overloaded(format!(
            "the server is busy: {q} requests are already waiting (--max-queue {}); retry later",
            st.max_queue
        )));
    }
    let meta = ResponseMeta::new(endpoint, &st.model_name);
    let (etx, mut erx) = mpsc::unbounded_channel();
    let job = Job {
        label: meta.id.clone(),
        req: GenRequest {
            prompt_tokens: tokens,
            max_tokens: req.max_tokens.unwrap_or(st.ctx),
            sampling: req.sampling.clone(),
            stop: req.stop.clone(),
            ignore_eos: req.ignore_eos,
        },
        events: etx,
        arrived: Instant::now(),
    };
    if st.tx.send(Msg::Job(Box::new(job))).is_err() {
        st.metrics.queue_depth.fetch_sub(1, Relaxed);
        return Err(ApiError::overloaded("the server is shutting down"));
    }
    st.metrics.requests_total.fetch_add(1, Relaxed);
    if req.stream {
        return Ok(sse::response(meta, erx, req.include_usage));
    }
    let mut text = String::new();
    loop {
        match erx.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done { finish, usage }) => {
                return Ok(Json(meta.full(&text, finish.as_str(), usage)).into_response())
            }
            Some(Event::Error(e)) => return Err(e),
            None => return Err(ApiError::internal("generation ended unexpectedly")),
        }
    }
}

/// JSON parsing of a large body is CPU work: off the async threads when big.
async fn parse_request_blocking(
    endpoint: Endpoint,
    body: Bytes,
) -> Result<ParsedRequest, ApiError> {
    if body.len() < 64 << 10 {
        return api::parse_request(endpoint, &body);
    }
    tokio::task::spawn_blocking(move || api::parse_request(endpoint, &body))
        .await
        .map_err(|e| ApiError::internal(format!("parsing failed: {e}")))?
}

fn render_chat(
    tok: &Tokenizer,
    template: Option<&str>,
    msgs: &[ChatMessage],
) -> Result<String, llmq_tokenizer::TokenizerError> {
    match template {
        Some(t) => llmq_tokenizer::render_chat(t, msgs, true, &tok.bos_token(), &tok.eos_token()),
        None => tok.apply_chat_template(msgs, true),
    }
}

impl AppState {
    /// Prompt tokens exactly as `generate` makes them (with and without `--chat`).
    fn tokenize(&self, prompt: PromptInput) -> Result<Vec<u32>, ApiError> {
        let tok = &self.engine.tokenizer;
        match prompt {
            PromptInput::Tokens(t) => Ok(t),
            PromptInput::Text(text) => tok.encode(&text, true, false).map_err(|e| {
                ApiError::invalid(Some("prompt"), format!("cannot tokenize the prompt: {e}"))
            }),
            PromptInput::Messages(msgs) => {
                let text = render_chat(tok, self.chat_template.as_deref(), &msgs).map_err(|e| {
                    let msg = match e {
                        llmq_tokenizer::TokenizerError::NoChatTemplate => "the model has no chat template: start the server with --chat-template FILE, or use /v1/completions".to_string(),
                        e => format!("the chat template rejected the messages: {e}"),
                    };
                    ApiError::invalid(Some("messages"), msg)
                })?;
                // A rendered template holds its special tokens as text.
                tok.encode(&text, !starts_with_bos(tok, &text), true)
                    .map_err(|e| {
                        ApiError::invalid(
                            Some("messages"),
                            format!("cannot tokenize the messages: {e}"),
                        )
                    })
            }
        }
    }
}

/// Whether a rendered chat text already begins with the BOS token's text.
fn starts_with_bos(tok: &Tokenizer, text: &str) -> bool {
    tok.bos_id()
        .map(|b| {
            let s = String::from_utf8_lossy(&tok.token_to_bytes(b)).to_string();
            !s.is_empty() && text.starts_with(&s)
        })
        .unwrap_or(false)
}
