//! `llm-quantize serve MODEL`: the arguments of the OpenAI-compatible server and the
//! glue around [`llmq_server`]: check the flags, bind before loading (a taken port fails
//! fast), load the model, serve until Ctrl-C or SIGTERM, then print a summary on
//! stdout. Binds 127.0.0.1 unless `--host` says otherwise; `--api-key` (or
//! `LLM_QUANTIZE_API_KEY`) requires `Authorization: Bearer KEY` on `/v1/*`.
//!
//! `--device` as for `generate`. On a GPU the server keeps every product on the kernels
//! that compute what the CPU computes (no tensor-core prompts), so a sequence's tokens do
//! not depend on which other requests share its batch.

use crate::model_load::{choose_device_exact, load_on, with_backend, Need};
use crate::output::{Mode, Verbosity};
use crate::progress::log;
use clap::Args;
use llmq_pipeline::PipelineError;
use llmq_server::{ServeSummary, ServerConfig, ServerError};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

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
    /// Where the model runs: cpu, cuda, cuda:N, or auto (a GPU when one is found)
    #[arg(long, default_value = "auto")]
    pub device: String,
}

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
    let listener = llmq_server::bind(&a.host, a.port).map_err(server_error)?;
    let quiet = verbosity == Verbosity::Quiet;
    let device = choose_device_exact(&a.device, quiet)?;
    with_backend!(device, be => serve_on(be, a, listener, template, started, mode, quiet))
}

/// Load the model on `be` and serve it until stopped.
fn serve_on<B: llmq_server::ServeBackend>(
    be: B,
    a: ServeArgs,
    listener: std::net::TcpListener,
    template: Option<String>,
    started: Instant,
    mode: Mode,
    quiet: bool,
) -> Result<(), PipelineError> {
    // every batch slot may fill its context; a step runs at most one prompt chunk per slot
    let need = Need {
        ctx_tokens: a.ctx_size.unwrap_or(4096) * a.max_batch,
        batch_tokens: a.prompt_chunk * a.max_batch,
    };
    let m = load_on(be, &a.model, a.token.clone(), quiet, need)?;
    let cfg = ServerConfig {
        api_key: a.api_key,
        ctx_size: a.ctx_size,
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        model_name: a.model_name,
        chat_template: template,
        prompt_chunk: a.prompt_chunk,
        max_body_bytes: a.max_body_bytes,
        quiet,
        log,
        cancel: &llmq_pipeline::CANCEL,
        started,
    };
    let summary = llmq_server::serve(listener, m, cfg).map_err(server_error)?;
    print_summary(mode, &summary);
    Ok(())
}

/// Map a server error to the CLI contract's exit codes.
fn server_error(e: ServerError) -> PipelineError {
    match e {
        ServerError::Bind { .. } => PipelineError::invalid(
            e.to_string(),
            "Choose another --port (or --port 0 for any free one) or a local --host",
        ),
        ServerError::ChatTemplate(_) => PipelineError::invalid(
            e.to_string(),
            "Fix the template (Hugging Face Jinja chat template syntax)",
        ),
        ServerError::Socket(_) | ServerError::Runtime(_) | ServerError::Serve(_) => {
            PipelineError::general(e.to_string(), "")
        }
    }
}

fn print_summary(mode: Mode, s: &ServeSummary) {
    let m = &s.metrics;
    let c = |x: &std::sync::atomic::AtomicU64| x.load(Relaxed);
    let bound = s.address;
    match mode {
        Mode::Json => {
            let v = json!({
                "status": "success",
                "model": s.model_name,
                "address": format!("http://{bound}"),
                "requests": c(&m.requests_total),
                "completed": c(&m.requests_completed),
                "cancelled": c(&m.requests_cancelled),
                "rejected": c(&m.requests_rejected),
                "invalid": c(&m.requests_invalid),
                "failed": c(&m.requests_failed),
                "prompt_tokens": c(&m.prompt_tokens),
                "generated_tokens": c(&m.generated_tokens),
                "duration_seconds": (s.seconds * 100.0).round() / 100.0,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
        Mode::Human => println!(
            "Served {} requests ({} completed, {} cancelled, {} rejected, {} invalid) on http://{bound}: {} prompt tokens, {} generated tokens in {:.0} s",
            c(&m.requests_total),
            c(&m.requests_completed),
            c(&m.requests_cancelled),
            c(&m.requests_rejected),
            c(&m.requests_invalid),
            c(&m.prompt_tokens),
            c(&m.generated_tokens),
            s.seconds
        ),
    }
}
