//! `llm-quantize`: the command line. Implements the contract in
//! `shared/docs/cli-contract.md`: global `--format human|json`, `--verbosity`,
//! `--version`; results alone on stdout, progress and logs on stderr; exit codes 0–9.

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

fn main() {
    let args = cli::Cli::parse();
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
    let code = cli::dispatch(args);
    std::process::exit(code);
}
