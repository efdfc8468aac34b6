//! The HTTP side of the server: the routes, their handlers and the state they share.
//! A completion request is authenticated, parsed ([`crate::api`]), tokenized as
//! `generate` would ([`llmq_runtime::prompt`]), checked against the context and the
//! queue, and handed to the [`crate::scheduler`]; its text comes back as one JSON
//! response or as server-sent events ([`crate::sse`]).

use crate::api::{self, ApiError, Endpoint, ParsedRequest, PromptInput, ResponseMeta};
use crate::metrics::Metrics;
use crate::scheduler::{Event, Job, Msg};
use crate::sse;
use crate::ModelView;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use llmq_runtime::{prompt_tokens, render_chat, GenRequest, RuntimeError};
use llmq_tokenizer::TokenizerError;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// What the handlers share.
pub(crate) struct AppState {
    pub engine: Arc<dyn ModelView>,
    pub model_name: String,
    pub api_key: Option<String>,
    pub ctx: usize,
    pub chat_template: Option<String>,
    pub max_queue: usize,
    pub max_batch: usize,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<crate::health::EngineHealth>,
    pub draining: AtomicBool,
    pub started: Instant,
}

pub(crate) type St = Arc<AppState>;

pub(crate) fn router(st: St, max_body: usize) -> Router {
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
        .layer(axum::middleware::from_fn(crate::body_deadline::limit))
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
                "n_ctx_train": self.engine.n_ctx_train(),
                "n_vocab": self.engine.n_vocab(),
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
    let problem = st.health.problem().filter(|_| !draining);
    let mut body = json!({
        "status": if draining { "shutting_down" } else if problem.is_some() { "error" } else { "ok" },
        "model": st.model_name,
        "active_sequences": st.metrics.active_sequences.load(Relaxed),
        "queued_requests": st.metrics.queue_depth.load(Relaxed),
        "max_batch": st.max_batch,
        "max_queue": st.max_queue,
    });
    if let Some(p) = &problem {
        body["error"] = json!({"message": p, "type": "server_error"});
        body["engine_failures"] = json!(st.health.failures.load(Relaxed));
    }
    let code = if draining || problem.is_some() {
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
            if e.code == Some("engine_error") {
                // counted by the scheduler, which failed it
                return e.into_response();
            }
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
    if crate::body_deadline::is_deadline(&r) {
        ApiError::invalid(None, crate::body_deadline::BodyDeadline.to_string())
            .with_status(StatusCode::REQUEST_TIMEOUT)
            .with_code("request_timeout")
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
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
    let vocab = st.engine.n_vocab();
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
        if !st.draining.load(Relaxed) && !st.health.scheduler_running() {
            return Err(ApiError::internal(
                "the engine has stopped (see the server log); restart the server",
            ));
        }
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

impl AppState {
    /// Prompt tokens exactly as `generate` makes them (with and without `--chat`).
    fn tokenize(&self, prompt: PromptInput) -> Result<Vec<u32>, ApiError> {
        let tok = self.engine.tokenizer();
        match prompt {
            PromptInput::Tokens(t) => Ok(t),
            PromptInput::Text(text) => prompt_tokens(tok, &text, false).map_err(|e| {
                ApiError::invalid(Some("prompt"), format!("cannot tokenize the prompt: {e}"))
            }),
            PromptInput::Messages(msgs) => {
                let text = render_chat(tok, self.chat_template.as_deref(), &msgs).map_err(|e| {
                    let msg = match e {
                        RuntimeError::Tokenizer(TokenizerError::NoChatTemplate) => "the model has no chat template: start the server with --chat-template FILE, or use /v1/completions".to_string(),
                        e => format!("the chat template rejected the messages: {e}"),
                    };
                    ApiError::invalid(Some("messages"), msg)
                })?;
                prompt_tokens(tok, &text, true).map_err(|e| {
                    ApiError::invalid(
                        Some("messages"),
                        format!("cannot tokenize the messages: {e}"),
                    )
                })
            }
        }
    }
}
