//! `llm-quantize generate MODEL --prompt …`: sampled or greedy generation, streamed to
//! stdout as tokens arrive, with the model's chat template under `--chat`; prompt and
//! decode speeds on stderr.

use crate::model_load::{choose_device, engine_error, load_on, with_backend, Need};
use crate::output::{Mode, Verbosity};
use crate::progress::log;
use clap::Args;
use llmq_engine::sampling::SamplingParams;
use llmq_engine::Backend;
use llmq_pipeline::PipelineError;
use llmq_runtime::{FinishReason, GenRequest, RuntimeError, Session};
use llmq_tokenizer::ChatMessage;
use serde_json::json;
use std::io::Write;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: hub id, local folder or GGUF file
    pub model: String,
    /// The prompt (with --chat: the user message)
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Maximum tokens to generate
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 = greedy
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens with this total probability (1 = off)
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Drop tokens less likely than this fraction of the best one (0 = off)
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize tokens seen in the last 64 (1 = off)
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: random, printed on stderr)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text is generated (repeatable)
    #[arg(long)]
    pub stop: Vec<String>,
    /// Stream tokens to stdout as they are generated (default)
    #[arg(long, overrides_with = "no_stream")]
    pub stream: bool,
    /// Print the text only when generation is done
    #[arg(long)]
    pub no_stream: bool,
    /// Apply the model's chat template to the prompt (as a user message)
    #[arg(long)]
    pub chat: bool,
    /// Jinja chat template file for --chat, replacing the model's own (or supplying one)
    #[arg(long, requires = "chat")]
    pub chat_template: Option<std::path::PathBuf>,
    /// System message for --chat
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Keep generating after end-of-sequence tokens
    #[arg(long)]
    pub ignore_eos: bool,
    /// Context size in tokens (default: the model's training context)
    #[arg(long)]
    pub ctx_size: Option<usize>,
    /// Hugging Face token for gated models [env: HF_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
    /// Where the model runs: cpu, cuda, cuda:N, or auto (a GPU when one is found)
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(a: GenerateArgs, mode: Mode, verbosity: Verbosity) -> Result<(), PipelineError> {
    for (name, v, ok) in [
        (
            "--temperature",
            a.temperature,
            a.temperature >= 0.0 && a.temperature.is_finite(),
        ),
        (
            "--top-p",
            a.top_p,
            (0.0..=1.0).contains(&a.top_p) && a.top_p > 0.0,
        ),
        ("--min-p", a.min_p, (0.0..=1.0).contains(&a.min_p)),
        (
            "--repeat-penalty",
            a.repeat_penalty,
            a.repeat_penalty > 0.0 && a.repeat_penalty.is_finite(),
        ),
    ] {
        if !ok {
            return Err(PipelineError::invalid(
                format!("{name} {v} is out of range"),
                "temperature >= 0, 0 < top-p <= 1, 0 <= min-p <= 1, repeat-penalty > 0",
            ));
        }
    }
    let quiet = verbosity == Verbosity::Quiet;
    let device = choose_device(&a.device, quiet)?;
    with_backend!(device, be => generate_on(be, &a, mode, verbosity))
}

/// `generate` once the options are checked, on backend `be`.
fn generate_on<B: Backend>(
    be: B,
    a: &GenerateArgs,
    mode: Mode,
    verbosity: Verbosity,
) -> Result<(), PipelineError> {
    let quiet = verbosity == Verbosity::Quiet;
    // prompt tokens are at most its bytes, plus a chat template's
    let prompt = a.prompt.len() + a.system.as_ref().map_or(0, String::len) + 512;
    let need = Need {
        ctx_tokens: prompt + a.max_tokens,
        batch_tokens: prompt,
    };
    let m = load_on(be, &a.model, a.token.clone(), quiet, need)?;
    let text = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &a.prompt));
        let template = match &a.chat_template {
            Some(path) => {
                let template = std::fs::read_to_string(path).map_err(|e| {
                    PipelineError::invalid(
                        format!("cannot read --chat-template {}: {e}", path.display()),
                        "Pass a readable Jinja template file",
                    )
                })?;
                if template.trim().is_empty() {
                    return Err(PipelineError::invalid(
                        format!("--chat-template {} is empty", path.display()),
                        "Pass a Jinja chat template file (for example one copied from a model's tokenizer_config.json)",
                    ));
                }
                Some(template)
            }
            None => None,
        };
        llmq_runtime::render_chat(&m.tokenizer, template.as_deref(), &msgs).map_err(|e| {
            PipelineError::invalid(
                format!("--chat: {e}"),
                "Pass --chat-template FILE, or drop --chat and write the prompt in the format the model expects",
            )
        })?
    } else {
        a.prompt.clone()
    };
    let prompt_tokens = llmq_runtime::prompt_tokens(&m.tokenizer, &text, a.chat)
        .map_err(|e| PipelineError::general(format!("tokenizing the prompt failed: {e}"), ""))?;
    let ctx = a.ctx_size.unwrap_or(m.model.hp.n_ctx_train).max(1);
    let seed = a.seed.unwrap_or_else(llmq_runtime::random_seed);
    if a.seed.is_none() && !quiet {
        log(&format!("seed {seed}"));
    }
    let req = GenRequest {
        prompt_tokens,
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            seed,
            ..Default::default()
        },
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    if req.prompt_tokens.is_empty() {
        return Err(PipelineError::invalid(
            "the prompt is empty (no tokens)",
            "Pass a non-empty --prompt",
        ));
    }
    if req.prompt_tokens.len() < ctx && req.prompt_tokens.len() + req.max_tokens > ctx && !quiet {
        log(&format!(
            "note: {} prompt tokens + --max-tokens {} exceed the context of {ctx}; output stops when the context is full",
            req.prompt_tokens.len(),
            req.max_tokens
        ));
    }
    let mut s = Session::new(&m.model, &m.tokenizer, req, ctx).map_err(|e| {
        PipelineError::invalid(e.to_string(), "Shorten the prompt or raise --ctx-size")
    })?;
    let stream = mode == Mode::Human && !a.no_stream;
    let mut out = String::new();
    let stdout = std::io::stdout();
    const PROMPT_CHUNK: usize = 512;
    let stats = llmq_runtime::generate(&m.model, &mut s, PROMPT_CHUNK, |piece| {
        if stream {
            let mut h = stdout.lock();
            let _ = h.write_all(piece.as_bytes());
            let _ = h.flush();
        }
        out.push_str(piece);
    })
    .map_err(|e| match e {
        RuntimeError::Engine(e) => engine_error(e),
        e => PipelineError::general(e.to_string(), ""),
    })?;
    let n_gen = s.generated.len();
    let decode_secs = (stats.total_secs - stats.prompt_secs).max(1e-9);
    let prompt_tps = s.n_prompt as f64 / stats.prompt_secs.max(1e-9);
    // the first generated token comes from the prompt pass
    let decode_tps = n_gen.saturating_sub(1) as f64 / decode_secs;
    let finish = s.finish.unwrap_or(FinishReason::Length);
    match mode {
        Mode::Json => {
            let v = json!({
                "status": "success",
                "model": m.name,
                "text": out,
                "finish_reason": finish.as_str(),
                "prompt_tokens": s.n_prompt,
                "completion_tokens": n_gen,
                "prompt_tokens_per_second": (prompt_tps * 10.0).round() / 10.0,
                "decode_tokens_per_second": (decode_tps * 10.0).round() / 10.0,
                "seed": seed,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
        Mode::Human => {
            if !stream {
                print!("{out}");
            }
            println!();
        }
    }
    if !quiet {
        log(&format!(
            "prompt: {} tokens, {:.1} tokens/s | generated: {n_gen} tokens, {:.1} tokens/s | finish: {}",
            s.n_prompt,
            prompt_tps,
            decode_tps,
            finish.as_str()
        ));
    }
    Ok(())
}
