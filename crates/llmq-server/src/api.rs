//! The OpenAI wire format: request parsing and validation for `/v1/chat/completions`
//! and `/v1/completions` (from raw JSON, so every mistake gets a 400 that names the
//! field), response and streaming-chunk bodies, and OpenAI-shaped errors
//! (`{"error": {"message", "type", "param", "code"}}`).
//!
//! Decisions on fields OpenAI's API has but this server treats its own way: `model` may
//! be left out (the server serves one model; a named one must match it); a message
//! `role` must be one of [`ROLES`] (anything else is 400, as the chat template would
//! render it unpredictably); `top_k` of 0 or -1 means no top-k limit, below -1 is 400;
//! `logit_bias` must be an object of token ids to numbers in [-100, 100] and, as it is
//! not implemented, a non-empty one is 400 rather than silently ignored.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use llmq_engine::sampling::SamplingParams;
use llmq_tokenizer::ChatMessage;
use serde_json::{json, Map, Value};

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or invalid API key: send `Authorization: Bearer <key>`".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn model_not_found(asked: &str, served: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("the model `{asked}` does not exist; this server runs `{served}`"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("server_overloaded"),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body `{"error": {...}}`.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// The prompt of a request, before tokenization.
#[derive(Debug, Clone)]
pub enum PromptInput {
    Messages(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    pub model: Option<String>,
    pub prompt: PromptInput,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// keep generating after end-of-sequence tokens (an extension, as in llama.cpp's
    /// server: fixed-length outputs for benchmarks)
    pub ignore_eos: bool,
}

/// The message roles accepted in chat requests.
pub const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
    "ipython",
];

/// Largest accepted `max_tokens` (before the context caps it).
const MAX_TOKENS_LIMIT: u64 = 1 << 24;

/// Parse and validate a request body.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<ParsedRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            None,
            "the request body is empty: send a JSON object",
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    };
    let model = opt_string(&o, "model")?;
    let prompt = match endpoint {
        Endpoint::Chat => PromptInput::Messages(parse_messages(&o)?),
        Endpoint::Completion => parse_prompt(&o)?,
    };
    match get(&o, "n") {
        None => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                Some("n"),
                "only n = 1 is supported: send one request per completion",
            ))
        }
    }
    if endpoint == Endpoint::Completion {
        if let Some(b) = get(&o, "best_of") {
            if b.as_u64() != Some(1) {
                return Err(ApiError::invalid(
                    Some("best_of"),
                    "only best_of = 1 is supported",
                ));
            }
        }
    }
    for key in ["logprobs", "top_logprobs", "tools", "functions"] {
        if let Some(val) = get(&o, key) {
            let off = matches!(val, Value::Bool(false))
                || (key == "tools" || key == "functions")
                    && val.as_array().is_some_and(|a| a.is_empty());
            if !off {
                return Err(ApiError::invalid(
                    Some(key),
                    format!("`{key}` is not supported by this server"),
                ));
            }
        }
    }
    let max_tokens = match (
        opt_int(&o, "max_completion_tokens")?,
        opt_int(&o, "max_tokens")?,
    ) {
        (Some(n), _) | (None, Some(n)) => {
            let param = if get(&o, "max_completion_tokens").is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            if n < 1 {
                return Err(ApiError::invalid(
                    Some(param),
                    format!("`{param}` must be at least 1 (got {n})"),
                ));
            }
            Some((n as u64).min(MAX_TOKENS_LIMIT) as usize)
        }
        (None, None) => None,
    };
    let defaults = SamplingParams::default();
    let temperature = opt_float(&o, "temperature", 0.0, 2.0)?.unwrap_or(defaults.temperature);
    let top_p = opt_float(&o, "top_p", 0.0, 1.0)?.unwrap_or(defaults.top_p);
    if top_p <= 0.0 {
        return Err(ApiError::invalid(
            Some("top_p"),
            "`top_p` must be greater than 0",
        ));
    }
    let top_k = match opt_int(&o, "top_k")? {
        None => defaults.top_k,
        Some(k) if k < -1 => {
            return Err(ApiError::invalid(
                Some("top_k"),
                format!("`top_k` must be a positive integer, or 0 / -1 for no limit (got {k})"),
            ))
        }
        Some(k) if k <= 0 => 0,
        Some(k) => k.min(u32::MAX as i64) as usize,
    };
    check_logit_bias(get(&o, "logit_bias"))?;
    let min_p = opt_float(&o, "min_p", 0.0, 1.0)?.unwrap_or(defaults.min_p);
    let presence_penalty = opt_float(&o, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    let frequency_penalty = opt_float(&o, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    let repeat_penalty = opt_float(&o, "repeat_penalty", 0.0, 10.0)?.unwrap_or(1.0);
    if repeat_penalty <= 0.0 {
        return Err(ApiError::invalid(
            Some("repeat_penalty"),
            "`repeat_penalty` must be greater than 0",
        ));
    }
    let seed = match get(&o, "seed") {
        None => llmq_runtime::random_seed(),
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap(),
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap() as u64,
        Some(v) => return Err(type_error("seed", "an integer", v)),
    };
    let stop = match get(&o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > 16 {
                return Err(ApiError::invalid(
                    Some("stop"),
                    "`stop` holds at most 16 sequences",
                ));
            }
            a.iter()
                .map(|s| match s {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(type_error("stop", "a string or a list of strings", v)),
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => return Err(type_error("stop", "a string or a list of strings", v)),
    };
    let stream = opt_bool(&o, "stream")?.unwrap_or(false);
    let ignore_eos = opt_bool(&o, "ignore_eos")?.unwrap_or(false);
    let include_usage = match get(&o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                ..e
            })?
            .unwrap_or(false),
        Some(v) => return Err(type_error("stream_options", "an object", v)),
    };
    Ok(ParsedRequest {
        model,
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            ..defaults
        },
        stop,
        stream,
        include_usage,
        ignore_eos,
    })
}

/// `logit_bias`: absent or empty, else 400 (malformed, or not implemented).
fn check_logit_bias(v: Option<&Value>) -> Result<(), ApiError> {
    let Some(v) = v else { return Ok(()) };
    let Value::Object(m) = v else {
        return Err(type_error(
            "logit_bias",
            "an object of token ids to numbers",
            v,
        ));
    };
    for (k, b) in m {
        let ok_key = k.parse::<u32>().is_ok();
        let ok_val = b.as_f64().is_some_and(|x| (-100.0..=100.0).contains(&x));
        if !ok_key || !ok_val {
            return Err(ApiError::invalid(
                Some("logit_bias"),
                format!("`logit_bias` maps token ids to numbers in [-100, 100]; entry {k:?}: {b} is not one"),
            ));
        }
    }
    if m.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            Some("logit_bias"),
            "`logit_bias` is not supported by this server (send an empty object or leave it out)",
        ))
    }
}

/// A field, with JSON `null` read as absent.
fn get<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn type_error(param: &str, want: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        Some(param),
        format!("`{param}` must be {want}, not {}", type_name(got)),
    )
}

fn opt_string(o: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match get(o, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(type_error(key, "a string", v)),
    }
}

fn opt_bool(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match get(o, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(type_error(key, "a boolean", v)),
    }
}

fn opt_int(o: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match get(o, key) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if n.as_u64().is_some() {
                Ok(Some(i64::MAX))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(Some(f as i64)),
                    _ => Err(ApiError::invalid(
                        Some(key),
                        format!("`{key}` must be an integer, not {n}"),
                    )),
                }
            }
        }
        Some(v) => Err(type_error(key, "an integer", v)),
    }
}

fn opt_float(o: &Map<String, Value>, key: &str, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
    match get(o, key) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if !(f >= lo as f64 && f <= hi as f64) {
                return Err(ApiError::invalid(
                    Some(key),
                    format!("`{key}` must be between {lo} and {hi} (got {n})"),
                ));
            }
            Ok(Some(f as f32))
        }
        Some(v) => Err(type_error(key, "a number", v)),
    }
}

fn parse_messages(o: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let msgs = match o.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                Some("messages"),
                "`messages` is required",
            ))
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(type_error("messages", "an array of messages", v)),
    };
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must hold at least one message",
        ));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let p = format!("messages[{i}]");
            let Value::Object(m) = m else {
                return Err(type_error(&p, "an object with `role` and `content`", m));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
                Some(Value::String(r)) => {
                    return Err(ApiError::invalid(
                        Some(&format!("{p}.role")),
                        format!("unknown role {r:?} (one of: {})", ROLES.join(", ")),
                    ))
                }
                Some(v) if !v.is_null() => {
                    return Err(type_error(&format!("{p}.role"), "a non-empty string", v))
                }
                _ => {
                    return Err(ApiError::invalid(
                        Some(&format!("{p}.role")),
                        format!("`{p}.role` is required"),
                    ))
                }
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        let pp = format!("{p}.content[{j}]");
                        match part {
                            Value::String(s) => text.push_str(s),
                            Value::Object(po) => match (po.get("type"), po.get("text")) {
                                (Some(Value::String(t)), Some(Value::String(s))) if t == "text" => {
                                    text.push_str(s)
                                }
                                (Some(Value::String(t)), _) if t != "text" => {
                                    return Err(ApiError::invalid(
                                        Some(&pp),
                                        format!("content parts of type `{t}` are not supported (text only)"),
                                    ))
                                }
                                _ => {
                                    return Err(ApiError::invalid(
                                        Some(&pp),
                                        format!("`{pp}` must be {{\"type\": \"text\", \"text\": \"...\"}}"),
                                    ))
                                }
                            },
                            v => return Err(type_error(&pp, "a text part", v)),
                        }
                    }
                    text
                }
                Some(v) => {
                    return Err(type_error(
                        &format!("{p}.content"),
                        "a string or an array of text parts",
                        v,
                    ))
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn parse_prompt(o: &Map<String, Value>) -> Result<PromptInput, ApiError> {
    const WANT: &str = "a string, a list of one string, or a list of token ids";
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&t| t <= u32::MAX as u64)
                    .map(|t| t as u32)
            })
            .collect()
    };
    match o.get("prompt") {
        None | Some(Value::Null) => Err(ApiError::invalid(Some("prompt"), "`prompt` is required")),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(a)) if a.is_empty() => Err(ApiError::invalid(
            Some("prompt"),
            "`prompt` must not be an empty list",
        )),
        Some(Value::Array(a)) => match &a[0] {
            Value::String(_) | Value::Array(_) if a.len() > 1 => Err(ApiError::invalid(
                Some("prompt"),
                "only one prompt per request is supported",
            )),
            Value::String(s) => Ok(PromptInput::Text(s.clone())),
            Value::Array(inner) => ids(inner)
                .filter(|v| !v.is_empty())
                .map(PromptInput::Tokens)
                .ok_or_else(|| type_error("prompt", WANT, &a[0])),
            Value::Number(_) => ids(a).map(PromptInput::Tokens).ok_or_else(|| {
                ApiError::invalid(Some("prompt"), format!("`prompt` must be {WANT}"))
            }),
            v => Err(type_error("prompt", WANT, v)),
        },
        Some(v) => Err(type_error("prompt", WANT, v)),
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Identity of one response: id, creation time, model name, endpoint.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
}

impl ResponseMeta {
    pub fn new(endpoint: Endpoint, model: &str) -> ResponseMeta {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        ResponseMeta {
            id: format!(
                "{prefix}-{:x}{:06x}",
                now.as_micros(),
                N.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
            ),
            created: now.as_secs(),
            model: model.to_string(),
            endpoint,
        }
    }

    /// The complete (non-streamed) response.
    pub fn full(&self, text: &str, finish: &str, usage: Usage) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Chat => "chat.completion",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.json(),
            "system_fingerprint": null,
        })
    }

    /// One streamed chunk: `role` (chat's first chunk), `text` and/or `finish`;
    /// with `include_usage` every chunk carries `"usage": null`.
    pub fn chunk(
        &self,
        first: bool,
        text: Option<&str>,
        finish: Option<&str>,
        include_usage: bool,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completion => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        let mut v = self.chunk_shell();
        v["choices"] = json!([choice]);
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The last chunk under `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut v = self.chunk_shell();
        v["choices"] = json!([]);
        v["usage"] = usage.json();
        v
    }

    fn chunk_shell(&self) -> Value {
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Chat => "chat.completion.chunk",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
        })
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
