//! `llm-quantize`: the command line. Implements the contract in
//! `shared/docs/cli-contract.md`: global `--format human|json`, `--verbosity`,
//! `--version`; results alone on stdout, progress and logs on stderr; exit codes 0–9.

mod bench_chart;
mod bench_chart_png;
mod bench_cmd;
mod cli;
mod convert_cmd;
mod eval_cmd;
mod exit_codes;
mod generate_cmd;
mod model_load;
mod output;
mod progress;
mod quantize_cmd;
mod quantize_output;
mod serve_cmd;
mod tokenize_cmd;

use clap::Parser;

/// Whether the raw arguments ask for JSON output (known before parsing succeeds).
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--format=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--format" && w[1] == "json")
}

/// Print the contract's error object (JSON mode) or a message (human mode).
fn report(json: bool, code: i32, error_type: &str, message: &str, suggestion: &str) {
    if json {
        let v = serde_json::json!({
            "status": "error",
            "error_code": code,
            "error_type": error_type,
            "message": message,
            "suggestion": suggestion,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        eprintln!("[llm-quantize] error: {message}");
        eprintln!("[llm-quantize] hint: {suggestion}");
    }
}

/// The last panic's message and place, for the error report of [`main`].
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A panic is a bug, never an answer: the hook only records it (a library that catches
/// its dependency's panic turns it into an error); one that reaches [`main`] is
/// reported as the contract's general error (exit 1, `error_type` "InternalError"), in
/// JSON under `--format json`.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if std::thread::current().name() != Some("main") {
            eprintln!("[llm-quantize] internal error on a worker thread: {what}{at}");
        }
        if let Ok(mut p) = LAST_PANIC.lock() {
            *p = Some(format!("{what}{at}"));
        }
    }));
}

fn parse_args(json: bool) -> cli::Cli {
    match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind as K;
            let informational = matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if json && !informational {
                // clap's text without its usage and help lines, on one line
                let msg = e.render().to_string();
                let first = msg
                    .lines()
                    .map(str::trim)
                    .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
                    .trim_start_matches("error: ")
                    .to_string();
                report(
                    true,
                    2,
                    "InvalidArgumentError",
                    &first,
                    "Run `llm-quantize --help` (or COMMAND --help) for the arguments",
                );
                std::process::exit(2);
            }
            e.exit()
        }
    }
}

fn main() {
    let json = json_requested();
    install_panic_hook();
    let args = parse_args(json);
    // First Ctrl-C: finish the layers in flight, keep the checkpoint, exit 9.
    // A second one exits at once (the checkpoint still allows --resume).
    let _ = ctrlc::set_handler(|| {
        if llmq_pipeline::CANCEL.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(9);
        }
        eprintln!(
            "\n[llm-quantize] cancelling after the layers in flight (Ctrl-C again to stop now)"
        );
    });
    let code = std::panic::catch_unwind(move || cli::dispatch(args)).unwrap_or_else(|_| {
        let what = LAST_PANIC
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .unwrap_or_else(|| "unknown panic".into());
        report(
            json,
            1,
            "InternalError",
            &format!("internal error: {what}"),
            "This is a bug in llm-quantize; please report it with the command and the model",
        );
        1
    });
    std::process::exit(code);
}
