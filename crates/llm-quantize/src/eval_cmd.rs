//! `llm-quantize eval MODEL`: perplexity on a text (built-in or `--dataset`), with the
//! window protocol of the shared goldens or llama.cpp's (`--ppl-protocol`), and with
//! `--base MODEL` the KL-divergence and same-top-token rate against the original.

use crate::model_load::{
    choose_device_exact, engine_error, load_on, with_backend, LoadedModel, Need,
};
use crate::output::{thousands, Mode, Verbosity};
use crate::progress::{log, CountBar};
use clap::{Args, ValueEnum};
use llmq_engine::perplexity::{perplexity_across, PplOptions, PplProtocol};
use llmq_engine::Backend;
use llmq_pipeline::PipelineError;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The built-in evaluation text (public domain; see data/eval/README.md).
const BUILTIN_TEXT: &str = include_str!("../../../data/eval/gutenberg-test.txt");

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolArg {
    /// Non-overlapping windows, no BOS, every token but each window's first scored
    /// (transformers-style; the shared goldens' protocol)
    #[value(alias = "golden")]
    Windows,
    /// llama-perplexity's: BOS-prefixed chunks of --max-length, second half scored
    #[value(name = "llama-cpp")]
    LlamaCpp,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model: hub id, local folder or GGUF file
    pub model: String,
    /// Text file to evaluate (plain text, or JSONL with a "text" field); default: the
    /// built-in public-domain test text
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Evaluate at most this many windows
    #[arg(long)]
    pub samples: Option<usize>,
    /// Window length in tokens (llama.cpp protocol: the context size)
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Windows evaluated together in one forward pass
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// How windows are cut and scored
    #[arg(long, value_enum, default_value_t = ProtocolArg::Windows)]
    pub ppl_protocol: ProtocolArg,
    /// Original model to compare against: adds KL-divergence and same-top-token rate
    #[arg(long)]
    pub base: Option<String>,
    /// Hugging Face token for gated models [env: HF_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
    /// Where the model (and --base) runs: cpu, cuda, cuda:N, or auto (a GPU when one
    /// is found)
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Where --base runs (default: the same device as the model); `--device cuda
    /// --base-device cpu` with the same file as both compares the GPU with the CPU
    #[arg(long, requires = "base")]
    pub base_device: Option<String>,
}

/// Read a dataset: plain text, or the `text` fields of a JSONL file joined by blank lines.
pub fn read_dataset(path: &PathBuf) -> Result<String, PipelineError> {
    let raw = std::fs::read(path).map_err(|e| {
        PipelineError::not_found(
            format!("cannot read dataset {}: {e}", path.display()),
            "Check the --dataset path",
        )
    })?;
    let text = String::from_utf8(raw).map_err(|_| {
        PipelineError::invalid(
            format!("dataset {} is not UTF-8 text", path.display()),
            "Convert the file to UTF-8",
        )
    })?;
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    if !is_jsonl {
        return Ok(text);
    }
    let mut parts = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            PipelineError::invalid(
                format!("{} line {}: not JSON: {e}", path.display(), i + 1),
                "Each JSONL line must be an object with a \"text\" field",
            )
        })?;
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => parts.push(t.to_string()),
            None => {
                return Err(PipelineError::invalid(
                    format!(
                        "{} line {}: no string \"text\" field",
                        path.display(),
                        i + 1
                    ),
                    "Each JSONL line must be an object with a \"text\" field",
                ))
            }
        }
    }
    Ok(parts.join("\n\n"))
}

/// The dataset's tokens under `m`'s tokenizer, checked to be the same under `base`'s
/// (a KL-divergence compares the two models token by token): the setup `eval` and
/// `bench` share.
pub fn tokenize_dataset<B: Backend, C: Backend>(
    m: &LoadedModel<B>,
    base: Option<&LoadedModel<C>>,
    text: &str,
    add_special: bool,
) -> Result<Vec<u32>, PipelineError> {
    let encode = |t: &llmq_tokenizer::Tokenizer| {
        t.encode(text, add_special, false)
            .map_err(|e| PipelineError::general(format!("tokenizing the dataset failed: {e}"), ""))
    };
    let tokens = encode(&m.tokenizer)?;
    if let Some(b) = base {
        if encode(&b.tokenizer)? != tokens {
            return Err(PipelineError::invalid(
                "the base model tokenizes the dataset differently from the model",
                "Compare a quantized model with the original it was made from",
            ));
        }
    }
    Ok(tokens)
}

pub fn run(a: EvalArgs, mode: Mode, verbosity: Verbosity) -> Result<(), PipelineError> {
    if a.max_length < 2 {
        return Err(PipelineError::invalid(
            "--max-length must be at least 2",
            "e.g. --max-length 512",
        ));
    }
    if a.batch_size == 0 || a.samples == Some(0) {
        return Err(PipelineError::invalid(
            "--batch-size and --samples must be at least 1",
            "e.g. --batch-size 4 --samples 100",
        ));
    }
    let (text, dataset_name) = match &a.dataset {
        Some(p) => (read_dataset(p)?, p.display().to_string()),
        None => (
            BUILTIN_TEXT.to_string(),
            "builtin:gutenberg-test".to_string(),
        ),
    };
    if text.trim().is_empty() {
        return Err(PipelineError::invalid(
            format!("dataset {dataset_name} is empty"),
            "Pass a text file with content",
        ));
    }
    let quiet = verbosity == Verbosity::Quiet;
    let device = choose_device_exact(&a.device, quiet)?;
    match &a.base_device {
        None => {
            with_backend!(device, be => {
                let (be, base_be) = twice(be);
                eval_on(be, base_be, &a, &text, &dataset_name, mode, verbosity)
            })
        }
        Some(bd) => {
            let base_device = choose_device_exact(bd, quiet)?;
            with_backend!(device, be => with_backend!(base_device, bb =>
                eval_on(be, bb, &a, &text, &dataset_name, mode, verbosity)))
        }
    }
}

/// A backend handle for the model and one for `--base`.
fn twice<T: Clone>(t: T) -> (T, T) {
    (t.clone(), t)
}

/// `eval` once the text is read: the model on backend `be`, `--base` on `base_be`.
fn eval_on<B: Backend, C: Backend>(
    be: B,
    base_be: C,
    a: &EvalArgs,
    text: &str,
    dataset_name: &str,
    mode: Mode,
    verbosity: Verbosity,
) -> Result<(), PipelineError> {
    let quiet = verbosity == Verbosity::Quiet;
    let need = Need {
        ctx_tokens: a.max_length * a.batch_size.max(1),
        batch_tokens: a.max_length * a.batch_size.max(1),
    };
    let m = load_on(be, &a.model, a.token.clone(), quiet, need)?;
    let base = match &a.base {
        Some(b) => Some(load_on(base_be, b, a.token.clone(), quiet, need)?),
        None => None,
    };
    let ctx = m.model.hp.n_ctx_train;
    check_window_fits(&m.model.hp, a.max_length, a.batch_size)?;
    if a.max_length > ctx && !quiet {
        log(&format!(
            "warning: --max-length {} exceeds the model's training context {ctx}",
            a.max_length
        ));
    }
    let protocol = match a.ppl_protocol {
        ProtocolArg::Windows => PplProtocol::Golden,
        ProtocolArg::LlamaCpp => PplProtocol::LlamaCpp,
    };
    let add_special = protocol == PplProtocol::LlamaCpp;
    let tokens = tokenize_dataset(&m, base.as_ref(), text, add_special)?;
    let o = PplOptions {
        protocol,
        max_length: a.max_length,
        max_windows: a.samples,
        batch_size: a.batch_size,
        bos: if m.tokenizer.add_bos() {
            m.tokenizer.bos_id()
        } else {
            None
        },
    };
    let started = Instant::now();
    let total = llmq_engine::perplexity::count_windows(&tokens, &o).map_err(|e| {
        PipelineError::invalid(
            e.to_string(),
            "Use a longer dataset or a smaller --max-length",
        )
    })?;
    if protocol == PplProtocol::Golden
        && tokens.len() < a.max_length
        && verbosity != Verbosity::Quiet
    {
        log(&format!(
            "note: the dataset has {} tokens, fewer than one window of --max-length {}: it is scored as one shorter window",
            tokens.len(),
            a.max_length
        ));
    }
    let mut bar = CountBar::new(total, "Evaluating", "windows", verbosity);
    let r = perplexity_across(
        &m.model,
        base.as_ref().map(|b| &b.model),
        &tokens,
        &o,
        &mut |done, total| bar.set(done, total),
    )
    .map_err(engine_error)?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    let evaluated: usize = (r.windows.min(total) * a.max_length).min(tokens.len());
    let proto_name = match protocol {
        PplProtocol::Golden => "windows",
        PplProtocol::LlamaCpp => "llama-cpp",
    };
    match mode {
        Mode::Json => {
            let kl = r.kl.as_ref().map(|k| {
                json!({
                    "base_model": a.base,
                    "mean_kl_divergence": k.mean_kl,
                    "max_kl_divergence": k.max_kl,
                    "same_top_token_rate": k.same_top_rate,
                    "base_perplexity": k.base_perplexity,
                })
            });
            let v = json!({
                "status": "success",
                "model": m.name,
                "dataset": dataset_name,
                "protocol": proto_name,
                "max_length": a.max_length,
                "perplexity": r.perplexity,
                "nll": r.nll,
                "nll_std_err": r.nll_std_err,
                "scored_tokens": r.scored_tokens,
                "dataset_tokens": tokens.len(),
                "windows": r.windows,
                "kl": kl,
                "duration_seconds": (secs * 100.0).round() / 100.0,
                "tokens_per_second": (evaluated as f64 / secs * 10.0).round() / 10.0,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
        Mode::Human => {
            println!("Model:        {}", m.name);
            println!(
                "Dataset:      {dataset_name} ({} tokens)",
                thousands(tokens.len() as u64)
            );
            println!(
                "Protocol:     {proto_name}, {} windows of {}",
                r.windows, a.max_length
            );
            println!(
                "Perplexity:   {:.4} (NLL {:.5} ± {:.5}, {} tokens scored)",
                r.perplexity,
                r.nll,
                r.nll_std_err,
                thousands(r.scored_tokens as u64)
            );
            if let Some(k) = &r.kl {
                println!("Base PPL:     {:.4}", k.base_perplexity);
                println!("Mean KL:      {:.6} (max {:.4})", k.mean_kl, k.max_kl);
                println!("Same top-1:   {:.2}%", k.same_top_rate * 100.0);
            }
            println!("Duration:     {secs:.1} s");
        }
    }
    Ok(())
}

/// `--max-length` within what the model can mean (at most 4 × its training context)
/// and `--max-length × --batch-size` within what its KV caches can hold in RAM: a clear
/// error instead of a run that never ends or an abort on allocation.
fn check_window_fits(
    hp: &llmq_engine::Hparams,
    max_length: usize,
    batch: usize,
) -> Result<(), PipelineError> {
    let limit = hp.n_ctx_train.saturating_mul(4).max(2);
    if max_length > limit {
        return Err(PipelineError::invalid(
            format!(
                "--max-length {max_length} is more than 4 x the model's training context of {}",
                hp.n_ctx_train
            ),
            format!("Use --max-length {} or less", hp.n_ctx_train),
        ));
    }
    // f32 keys and values of every layer for every window of the batch
    let per_pos = (hp.n_head_kv * (hp.head_dim_k + hp.head_dim_v)) as u64 * 4 * hp.n_layer as u64;
    let need = per_pos
        .saturating_mul(max_length as u64)
        .saturating_mul(batch as u64);
    if let Some(avail) = llmq_pipeline::memory::available_bytes() {
        if need > avail {
            return Err(PipelineError::oom(
                format!(
                    "--max-length {max_length} with --batch-size {batch} needs {} MB of KV cache, {} MB are available",
                    need >> 20,
                    avail >> 20
                ),
                "Lower --max-length or --batch-size",
            ));
        }
    }
    Ok(())
}
