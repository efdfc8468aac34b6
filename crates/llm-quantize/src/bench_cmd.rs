//! `llm-quantize bench --models A,B,…`: models and formats side by side — file size,
//! bits per weight, prompt and decode tokens/s, peak memory, and (with `--dataset`)
//! perplexity and KL-divergence against `--base`.
//!
//! Speed is measured the way llama.cpp's `llama-bench` does (`pp` and `tg` tests): a
//! prompt of `--prompt-tokens` pseudo-random tokens evaluated in batches of
//! `--batch-size` from an empty cache, and `--gen-tokens` single-token decode steps from
//! an empty cache; one warm-up run each, then `--repetitions` timed runs (mean ± sample
//! standard deviation of tokens/s). Each model runs in its own child process, so its
//! peak RSS is measured alone (`wait4`, as `/usr/bin/time -v` does). With
//! `--llama-bench`, llama.cpp's `llama-bench` runs on every GGUF model with the same
//! thread count and sizes in the same invocation, and the ratios are reported.

use crate::model_load::{choose_device, engine_error, load, load_on, with_backend, Need};
use crate::output::{Mode, Verbosity};
use crate::progress::log;
use clap::Args;
use llmq_engine::perplexity::{perplexity_across, PplOptions, PplProtocol};
use llmq_engine::{Backend, KvCache, Logits, Model, SeqStep};
use llmq_pipeline::PipelineError;
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Models to compare, comma-separated (folders, GGUF files or Hub ids)
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// Prompt tokens per prompt-processing run (llama-bench -p); 0 skips the test
    #[arg(long, short = 'p', default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens per decode run (llama-bench -n); 0 skips the test
    #[arg(long, short = 'n', default_value_t = 128)]
    pub gen_tokens: usize,
    /// Timed repetitions of each test (llama-bench -r)
    #[arg(long, short = 'r', default_value_t = 3)]
    pub repetitions: usize,
    /// Tokens per forward call while processing the prompt (llama-bench -b)
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Worker threads (default: all available cores)
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Also measure perplexity on this text file (windows protocol of `eval`)
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Windows of the dataset to score
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// Window length for perplexity
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Original model for KL-divergence and same-top-token rate (needs --dataset)
    #[arg(long)]
    pub base: Option<String>,
    /// Run llama.cpp's llama-bench on the GGUF models too: its path, or a folder holding
    /// it (default: $LLAMA_CPP_BIN/llama-bench)
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub llama_bench: Option<String>,
    /// Write the JSON results to this file as well
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Draw bits per weight against KL-divergence and against decode tokens/s, one
    /// point per model, into this SVG or PNG file (`crate::bench_chart`, `crate::bench_chart_png`)
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// Hugging Face token for gated models
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the models run: cpu, cuda, cuda:N, or auto (a GPU when one is found).
    /// On a GPU each row also gets the decode bandwidth's share of the device's copy rate
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Internal: measure one model in this process and print its JSON
    #[arg(long, hide = true)]
    pub child: bool,
}

pub fn run(a: BenchArgs, mode: Mode, verbosity: Verbosity) -> Result<(), PipelineError> {
    if a.repetitions == 0 {
        return Err(PipelineError::invalid(
            "--repetitions must be at least 1",
            "Pass -r 3 (the default) or more",
        ));
    }
    if a.batch_size == 0 {
        return Err(PipelineError::invalid(
            "--batch-size must be at least 1",
            "Pass --batch-size 512",
        ));
    }
    if a.prompt_tokens == 0 && a.gen_tokens == 0 && a.dataset.is_none() {
        return Err(PipelineError::invalid(
            "nothing to measure: -p 0 and -n 0 without --dataset",
            "Keep -p or -n above 0, or add --dataset FILE for perplexity",
        ));
    }
    if a.base.is_some() && a.dataset.is_none() {
        return Err(PipelineError::invalid(
            "--base needs --dataset (KL-divergence is measured on a text)",
            "Add --dataset FILE",
        ));
    }
    if let Some(t) = a.threads {
        if t == 0 {
            return Err(PipelineError::invalid(
                "--threads must be at least 1",
                "Omit --threads to use every core",
            ));
        }
        // The global pool may only be built once; a second build is harmless to ignore.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    if let Some(i) = a.models.iter().position(|m| m.trim().is_empty()) {
        return Err(PipelineError::invalid(
            format!("--models entry {} of {} is empty", i + 1, a.models.len()),
            "Give comma-separated model paths or Hub ids, e.g. --models a.gguf,b.gguf",
        ));
    }
    if let Some(c) = &a.chart {
        let ext = |x: &str| c.extension().is_some_and(|e| e.eq_ignore_ascii_case(x));
        if !ext("svg") && !ext("png") {
            return Err(PipelineError::invalid(
                format!(
                    "--chart {}: only SVG and PNG charts are written",
                    c.display()
                ),
                "Give a path ending in .svg or .png",
            ));
        }
    }
    if a.child {
        let model = a.models.first().cloned().unwrap_or_default();
        let v = measure_here(&a, &model, verbosity)?;
        println!("{v}");
        return Ok(());
    }
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    let peer = peer_binary(&a)?;
    let mut rows = Vec::new();
    for (i, model) in a.models.iter().enumerate() {
        if verbosity != Verbosity::Quiet {
            log(&format!("[{}/{}] {model}", i + 1, a.models.len()));
        }
        let mut row = measure_in_child(&a, model, threads, verbosity)?;
        if let Some(bin) = &peer {
            if model.ends_with(".gguf") {
                let p = run_llama_bench(bin, model, &a, threads, verbosity)?;
                add_ratios(&mut row, &p);
                row["llama_bench"] = p;
            }
        }
        rows.push(row);
    }
    let result = json!({
        "status": "success",
        "threads": threads,
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "repetitions": a.repetitions,
        "batch_size": a.batch_size,
        "dataset": a.dataset.as_ref().map(|d| d.display().to_string()),
        "base": a.base,
        "cpu": cpu_name(),
        "models": rows,
    });
    if let Some(p) = &a.output {
        std::fs::write(p, serde_json::to_string_pretty(&result).unwrap() + "\n").map_err(|e| {
            PipelineError::general(
                format!("cannot write {}: {e}", p.display()),
                "Check the path and free space",
            )
        })?;
    }
    if let Some(p) = &a.chart {
        let title = format!(
            "{} model(s): size, KL-divergence{} and decode speed",
            rows_len(&result),
            a.base
                .as_ref()
                .map(|b| format!(" vs {b}"))
                .unwrap_or_default()
        );
        let svg = crate::bench_chart::svg(&crate::bench_chart::points(&result), &title);
        let bytes = if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
            crate::bench_chart_png::png_of_svg(&svg)
                .map_err(|e| PipelineError::general(e, "Report this as a bug"))?
        } else {
            svg.into_bytes()
        };
        std::fs::write(p, bytes).map_err(|e| {
            PipelineError::general(
                format!("cannot write {}: {e}", p.display()),
                "Check the path and free space",
            )
        })?;
    }
    match mode {
        Mode::Json => println!("{}", serde_json::to_string_pretty(&result).unwrap()),
        Mode::Human => print_table(&result),
    }
    Ok(())
}

fn rows_len(r: &Value) -> usize {
    r["models"].as_array().map_or(0, |v| v.len())
}

/// The llama-bench binary asked for, if any.
fn peer_binary(a: &BenchArgs) -> Result<Option<PathBuf>, PipelineError> {
    let Some(given) = &a.llama_bench else {
        return Ok(None);
    };
    let p =
        if given.is_empty() {
            match std::env::var_os("LLAMA_CPP_BIN") {
                Some(d) => PathBuf::from(d).join("llama-bench"),
                None => return Err(PipelineError::invalid(
                    "--llama-bench without a path needs $LLAMA_CPP_BIN",
                    "Pass --llama-bench /path/to/llama-bench (scripts/peer-llama-cpp.sh builds it)",
                )),
            }
        } else if Path::new(given).is_dir() {
            Path::new(given).join("llama-bench")
        } else {
            PathBuf::from(given)
        };
    if !p.is_file() {
        return Err(PipelineError::not_found(
            format!("llama-bench not found at {}", p.display()),
            "Build it with scripts/peer-llama-cpp.sh, or pass its path",
        ));
    }
    Ok(Some(p))
}

/// Run a command to completion; its stdout, stderr tail, success and peak RSS in bytes.
/// Runs `cmd` to completion: its stdout, stderr, exit code (`None` when killed by a
/// signal) and peak RSS in bytes where the platform reports it.
fn run_measured(mut cmd: Command) -> std::io::Result<(String, String, Option<i32>, Option<u64>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err_pipe = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out)?;
    let err = err_thread.join().unwrap_or_default();
    let (code, rss) = wait_with_rusage(child)?;
    Ok((out, err, code, rss))
}

#[cfg(unix)]
fn wait_with_rusage(child: std::process::Child) -> std::io::Result<(Option<i32>, Option<u64>)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: plain FFI call with valid out-pointers; the child is ours and not yet reaped.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::mem::forget(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    // ru_maxrss is in KiB on Linux.
    Ok((code, Some(ru.ru_maxrss as u64 * 1024)))
}

#[cfg(not(unix))]
fn wait_with_rusage(mut child: std::process::Child) -> std::io::Result<(Option<i32>, Option<u64>)> {
    Ok((child.wait()?.code(), None))
}

fn measure_in_child(
    a: &BenchArgs,
    model: &str,
    threads: usize,
    verbosity: Verbosity,
) -> Result<Value, PipelineError> {
    let exe = std::env::current_exe()
        .map_err(|e| PipelineError::general(format!("cannot find our own binary: {e}"), ""))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--child", "--format", "json", "--models", model])
        .args(["-p", &a.prompt_tokens.to_string()])
        .args(["-n", &a.gen_tokens.to_string()])
        .args(["-r", &a.repetitions.to_string()])
        .args(["--batch-size", &a.batch_size.to_string()])
        .args(["-t", &threads.to_string()])
        .args(["--samples", &a.samples.to_string()])
        .args(["--max-length", &a.max_length.to_string()])
        .args(["--device", &a.device])
        .args([
            "--verbosity",
            if verbosity == Verbosity::Quiet {
                "quiet"
            } else {
                "normal"
            },
        ]);
    if let Some(d) = &a.dataset {
        cmd.arg("--dataset").arg(d);
    }
    if let Some(b) = &a.base {
        cmd.args(["--base", b]);
    }
    if let Some(t) = &a.token {
        cmd.env("HF_TOKEN", t);
    }
    let (out, err, code, rss) = run_measured(cmd)
        .map_err(|e| PipelineError::general(format!("cannot run the benchmark: {e}"), ""))?;
    if verbosity != Verbosity::Quiet {
        for l in err.lines().filter(|l| !l.contains('\r')) {
            eprintln!("{l}");
        }
    }
    if code != Some(0) {
        // Keep the child's exit code, and its message and hint (its JSON on stdout).
        let child: Option<Value> = serde_json::from_str(out.trim()).ok();
        let field = |k: &str| child.as_ref().and_then(|v| v[k].as_str().map(String::from));
        return Err(crate::exit_codes::from_exit_code(
            code.unwrap_or(1),
            match field("message") {
                Some(m) => format!("benchmarking {model} failed: {m}"),
                None => format!("benchmarking {model} failed"),
            },
            field("suggestion").unwrap_or_else(|| "See the error above".into()),
        ));
    }
    let mut v: Value = serde_json::from_str(out.trim()).map_err(|e| {
        PipelineError::general(
            format!("benchmark child gave bad JSON for {model}: {e}"),
            "",
        )
    })?;
    v["peak_rss_bytes"] = json!(rss);
    Ok(v)
}

/// Deterministic pseudo-random token ids in `[0, n_vocab)` (llama-bench uses random ids).
fn random_tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % n_vocab as u64) as u32
        })
        .collect()
}

/// Seconds for one prompt-processing run of `tokens` from an empty cache.
fn time_prompt<B: Backend>(
    m: &Model<B>,
    tokens: &[u32],
    batch: usize,
) -> Result<f64, PipelineError> {
    let mut cache = KvCache::new(m, tokens.len().max(1));
    let t0 = Instant::now();
    for chunk in tokens.chunks(batch) {
        let mut step = [SeqStep {
            tokens: chunk,
            cache: &mut cache,
            logits: Logits::Last,
        }];
        m.forward(&mut step).map_err(engine_error)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Seconds for `tokens.len()` single-token decode steps from an empty cache.
fn time_decode<B: Backend>(m: &Model<B>, tokens: &[u32]) -> Result<f64, PipelineError> {
    let mut cache = KvCache::new(m, tokens.len().max(1));
    let t0 = Instant::now();
    for t in tokens.chunks(1) {
        let mut step = [SeqStep {
            tokens: t,
            cache: &mut cache,
            logits: Logits::Last,
        }];
        m.forward(&mut step).map_err(engine_error)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Mean and sample standard deviation of tokens/s over the runs.
fn rate_stats(n_tokens: usize, secs: &[f64]) -> Value {
    let rates: Vec<f64> = secs.iter().map(|s| n_tokens as f64 / s).collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var = if rates.len() > 1 {
        rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (rates.len() - 1) as f64
    } else {
        0.0
    };
    json!({
        "tokens": n_tokens,
        "tokens_per_second": round(mean, 2),
        "stddev": round(var.sqrt(), 2),
        "runs": rates.len(),
    })
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Bytes of the model's weight files (a GGUF file, or a folder's safetensors).
fn model_bytes(model: &str) -> Option<u64> {
    let p = Path::new(model);
    if p.is_file() {
        return std::fs::metadata(p).ok().map(|m| m.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(p).ok()? {
        let e = e.ok()?;
        if e.path().extension().is_some_and(|x| x == "safetensors") {
            total += e.metadata().ok()?.len();
        }
    }
    (total > 0).then_some(total)
}

fn measure_here(a: &BenchArgs, model: &str, verbosity: Verbosity) -> Result<Value, PipelineError> {
    let quiet = verbosity == Verbosity::Quiet;
    let device = choose_device(&a.device, quiet)?;
    with_backend!(device, be => measure_on(be, a, model, verbosity))
}

fn measure_on<B: Backend + Clone>(
    be: B,
    a: &BenchArgs,
    model: &str,
    verbosity: Verbosity,
) -> Result<Value, PipelineError> {
    let quiet = verbosity == Verbosity::Quiet;
    let copy = be.copy_rate();
    let device_name = be.device_name();
    let t_load = Instant::now();
    let need = Need {
        ctx_tokens: a.prompt_tokens.max(a.gen_tokens).max(a.max_length),
        batch_tokens: a.batch_size.min(a.prompt_tokens.max(1)).max(a.max_length),
    };
    let handle = be.clone();
    let m = load_on(be, model, a.token.clone(), quiet, need)?;
    let load_secs = t_load.elapsed().as_secs_f64();
    let n_vocab = m.model.n_vocab();
    let ctx = m.model.hp.n_ctx_train;
    if a.prompt_tokens > ctx || a.gen_tokens > ctx {
        return Err(PipelineError::invalid(
            format!(
                "-p {} / -n {} exceed the model's context of {ctx} tokens",
                a.prompt_tokens, a.gen_tokens
            ),
            "Use smaller test sizes",
        ));
    }
    let info = llmq_pipeline::info::model_info(model, a.token.clone())?;
    let params = info.parameter_count.max(1);
    let bytes = model_bytes(model);
    let mut row = json!({
        "model": model,
        "name": m.name,
        "architecture": format!("{:?}", m.model.hp.arch),
        "params": params,
        "size_bytes": bytes,
        "bits_per_weight": match &info.quantization {
            Some(q) => Some(round(q.bits_per_weight, 3)),
            None => bytes.map(|b| round(b as f64 * 8.0 / params as f64, 3)),
        },
        "load_seconds": round(load_secs, 2),
        "device": device_name,
    });
    if a.prompt_tokens > 0 {
        let toks = random_tokens(a.prompt_tokens, n_vocab, 1);
        time_prompt(
            &m.model,
            &toks[..toks.len().min(a.batch_size)],
            a.batch_size,
        )?;
        let mut secs = Vec::new();
        for r in 0..a.repetitions {
            let toks = random_tokens(a.prompt_tokens, n_vocab, 10 + r as u64);
            secs.push(time_prompt(&m.model, &toks, a.batch_size)?);
        }
        row["prompt"] = rate_stats(a.prompt_tokens, &secs);
        if !quiet {
            log(&format!(
                "{}: pp{} {}",
                m.name,
                a.prompt_tokens,
                rate_text(&row["prompt"])
            ));
        }
    }
    if a.gen_tokens > 0 {
        time_decode(&m.model, &random_tokens(1, n_vocab, 2))?;
        let mut secs = Vec::new();
        for r in 0..a.repetitions {
            let toks = random_tokens(a.gen_tokens, n_vocab, 100 + r as u64);
            secs.push(time_decode(&m.model, &toks)?);
        }
        row["decode"] = rate_stats(a.gen_tokens, &secs);
        // every weight is read once per decoded token (the embedding table aside)
        if let (Some(b), Some(tps)) = (bytes, row["decode"]["tokens_per_second"].as_f64()) {
            let rate = b as f64 * tps;
            row["decode"]["weight_gb_per_second"] = json!(round(rate / 1e9, 1));
            if let Some(c) = copy {
                row["decode"]["share_of_copy_bandwidth"] = json!(round(rate / c, 3));
                row["copy_gb_per_second"] = json!(round(c / 1e9, 0));
            }
        }
        if !quiet {
            log(&format!(
                "{}: tg{} {}",
                m.name,
                a.gen_tokens,
                rate_text(&row["decode"])
            ));
        }
    }
    if let Some(d) = &a.dataset {
        // quality as `eval` measures it: no f16 tensor-core products on a GPU
        handle.set_exact_products(true);
        row["quality"] = quality(a, &m, d)?;
        handle.set_exact_products(false);
    }
    Ok(row)
}

/// `123.4 ± 5.6 t/s` from a [`rate_stats`] object, for progress lines.
fn rate_text(v: &Value) -> String {
    format!(
        "{:.1} ± {:.1} t/s",
        v["tokens_per_second"].as_f64().unwrap_or(f64::NAN),
        v["stddev"].as_f64().unwrap_or(f64::NAN)
    )
}

fn quality<B: Backend>(
    a: &BenchArgs,
    m: &crate::model_load::LoadedModel<B>,
    dataset: &Path,
) -> Result<Value, PipelineError> {
    let text = std::fs::read_to_string(dataset).map_err(|e| {
        PipelineError::not_found(
            format!("cannot read --dataset {}: {e}", dataset.display()),
            "Pass a readable text file",
        )
    })?;
    let base = match &a.base {
        Some(b) => Some(load(b, a.token.clone(), true)?),
        None => None,
    };
    let tokens = crate::eval_cmd::tokenize_dataset(m, base.as_ref(), &text, false)?;
    let o = PplOptions {
        protocol: PplProtocol::Golden,
        max_length: a.max_length,
        max_windows: Some(a.samples),
        batch_size: 1,
        bos: None,
    };
    let r = perplexity_across(
        &m.model,
        base.as_ref().map(|b| &b.model),
        &tokens,
        &o,
        &mut |_, _| {},
    )
    .map_err(engine_error)?;
    Ok(json!({
        "perplexity": r.perplexity,
        "scored_tokens": r.scored_tokens,
        "mean_kl_divergence": r.kl.as_ref().map(|k| k.mean_kl),
        "same_top_token_rate": r.kl.as_ref().map(|k| k.same_top_rate),
    }))
}

/// llama-bench's pp and tg rates for `model` with the same sizes and threads.
fn run_llama_bench(
    bin: &Path,
    model: &str,
    a: &BenchArgs,
    threads: usize,
    verbosity: Verbosity,
) -> Result<Value, PipelineError> {
    if verbosity != Verbosity::Quiet {
        log(&format!("llama-bench on {model}"));
    }
    let mut cmd = Command::new(bin);
    cmd.args(["-m", model, "-o", "json"])
        .args(["-t", &threads.to_string()])
        .args(["-p", &a.prompt_tokens.to_string()])
        .args(["-n", &a.gen_tokens.to_string()])
        .args(["-r", &a.repetitions.to_string()])
        .args(["-b", &a.batch_size.to_string()]);
    if let Some(dir) = bin.parent() {
        let mut lib = vec![dir.to_path_buf(), dir.join("../lib")];
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
            lib.extend(std::env::split_paths(&old));
        }
        if let Ok(j) = std::env::join_paths(lib) {
            cmd.env("LD_LIBRARY_PATH", j);
        }
    }
    let (out, err, code, rss) = run_measured(cmd)
        .map_err(|e| PipelineError::general(format!("cannot run llama-bench: {e}"), ""))?;
    if code != Some(0) {
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(PipelineError::general(
            format!("llama-bench failed on {model}: {}", tail.join(" | ")),
            "Check that llama.cpp can load this file",
        ));
    }
    let tests: Vec<Value> = serde_json::from_str(out.trim())
        .map_err(|e| PipelineError::general(format!("cannot parse llama-bench's JSON: {e}"), ""))?;
    let mut v = json!({ "peak_rss_bytes": rss });
    for t in &tests {
        let n_prompt = t["n_prompt"].as_u64().unwrap_or(0);
        let n_gen = t["n_gen"].as_u64().unwrap_or(0);
        let stat = json!({
            "tokens": n_prompt.max(n_gen),
            "tokens_per_second": t["avg_ts"].as_f64().map(|x| round(x, 2)),
            "stddev": t["stddev_ts"].as_f64().map(|x| round(x, 2)),
        });
        if n_prompt > 0 && n_gen == 0 {
            v["prompt"] = stat;
        } else if n_gen > 0 && n_prompt == 0 {
            v["decode"] = stat;
        }
        if v.get("build").is_none() {
            v["build"] = t["build_commit"].clone();
        }
    }
    Ok(v)
}

fn add_ratios(row: &mut Value, peer: &Value) {
    for k in ["prompt", "decode"] {
        let ours = row[k]["tokens_per_second"].as_f64();
        let theirs = peer[k]["tokens_per_second"].as_f64();
        if let (Some(o), Some(t)) = (ours, theirs) {
            if t > 0.0 {
                row[format!("{k}_ratio_vs_llama_cpp")] = json!(round(o / t, 3));
            }
        }
    }
}

fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
}

fn fmt_rate(v: &Value) -> String {
    match v["tokens_per_second"].as_f64() {
        Some(r) => format!("{r:.1} ± {:.1}", v["stddev"].as_f64().unwrap_or(0.0)),
        None => "-".into(),
    }
}

fn fmt_mib(v: &Value) -> String {
    v.as_u64()
        .map(|b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "-".into())
}

fn print_table(r: &Value) {
    let rows = r["models"].as_array().cloned().unwrap_or_default();
    println!(
        "threads {}, pp{} / tg{}, {} runs each{}",
        r["threads"],
        r["prompt_tokens"],
        r["gen_tokens"],
        r["repetitions"],
        r["cpu"]
            .as_str()
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    );
    println!(
        "{:<34} {:>9} {:>6} {:>16} {:>16} {:>9} {:>10} {:>8}",
        "model", "size", "bpw", "prompt t/s", "decode t/s", "peak RSS", "perplexity", "KL"
    );
    let mut best_decode: f64 = 0.0;
    for row in &rows {
        best_decode = best_decode.max(row["decode"]["tokens_per_second"].as_f64().unwrap_or(0.0));
    }
    for row in &rows {
        let name = row["name"].as_str().unwrap_or("?");
        let q = &row["quality"];
        println!(
            "{:<34} {:>9} {:>6} {:>16} {:>16} {:>9} {:>10} {:>8}",
            truncate(name, 34),
            fmt_mib(&row["size_bytes"]),
            row["bits_per_weight"]
                .as_f64()
                .map(|b| format!("{b:.2}"))
                .unwrap_or_else(|| "-".into()),
            fmt_rate(&row["prompt"]),
            fmt_rate(&row["decode"]),
            fmt_mib(&row["peak_rss_bytes"]),
            q["perplexity"]
                .as_f64()
                .map(|p| format!("{p:.3}"))
                .unwrap_or_else(|| "-".into()),
            q["mean_kl_divergence"]
                .as_f64()
                .map(|k| format!("{k:.4}"))
                .unwrap_or_else(|| "-".into()),
        );
        if let Some(p) = row.get("llama_bench") {
            println!(
                "{:<34} {:>9} {:>6} {:>16} {:>16} {:>9}",
                "  llama.cpp (llama-bench)",
                "",
                "",
                fmt_rate(&p["prompt"]),
                fmt_rate(&p["decode"]),
                fmt_mib(&p["peak_rss_bytes"]),
            );
            println!(
                "{:<34} {:>9} {:>6} {:>16} {:>16}",
                "  ours / llama.cpp",
                "",
                "",
                row["prompt_ratio_vs_llama_cpp"]
                    .as_f64()
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                row["decode_ratio_vs_llama_cpp"]
                    .as_f64()
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    if best_decode > 0.0 && rows.len() > 1 {
        println!("\ndecode tokens/s");
        for row in &rows {
            let v = row["decode"]["tokens_per_second"].as_f64().unwrap_or(0.0);
            let bar = "█".repeat(((v / best_decode) * 40.0).round() as usize);
            println!(
                "  {:<30} {bar} {v:.1}",
                truncate(row["name"].as_str().unwrap_or("?"), 30)
            );
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        t + "…"
    }
}
