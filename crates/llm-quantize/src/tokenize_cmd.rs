//! `llm-quantize tokenize MODEL`: the token ids of a text, as `generate` and `eval` see
//! them (the counterpart of llama.cpp's `llama-tokenize`). Ids on stdout, one JSON
//! array with `--format json` or `--ids`, else one `id -> 'piece'` line per token.

use crate::model_load::load_tokenizer;
use crate::output::Mode;
use clap::Args;
use llmq_pipeline::PipelineError;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Model: hub id, local folder or GGUF file
    pub model: String,
    /// The text to tokenize
    #[arg(
        long,
        short = 'p',
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    pub prompt: Option<String>,
    /// Read the text from this file
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Print only the ids, as one array `[1, 2, 3]`
    #[arg(long)]
    pub ids: bool,
    /// Do not add BOS/EOS even where the vocabulary asks for them
    #[arg(long)]
    pub no_bos: bool,
    /// Treat special-token text such as `<|im_start|>` as plain text
    #[arg(long)]
    pub no_parse_special: bool,
    /// Hugging Face token for gated models [env: HF_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
}

pub fn run(a: TokenizeArgs, mode: Mode) -> Result<(), PipelineError> {
    let text = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            let bytes = std::fs::read(f).map_err(|e| {
                PipelineError::invalid(
                    format!("cannot read {}: {e}", f.display()),
                    "Check the --file path",
                )
            })?;
            String::from_utf8(bytes).map_err(|_| {
                PipelineError::invalid(
                    format!("{} is not UTF-8 text", f.display()),
                    "Pass a UTF-8 text file",
                )
            })?
        }
        (None, None) => unreachable!("clap requires --prompt or --file"),
    };
    let tok = load_tokenizer(&a.model, a.token.or_else(|| std::env::var("HF_TOKEN").ok()))?;
    let ids = tok
        .encode(&text, !a.no_bos, !a.no_parse_special)
        .map_err(|e| {
            PipelineError::invalid(
                format!("cannot tokenize the text: {e}"),
                "Check the input text",
            )
        })?;
    if mode == Mode::Json {
        let pieces: Vec<String> = ids.iter().map(|&id| tok.decode(&[id])).collect();
        let v = serde_json::json!({ "model": a.model, "n_tokens": ids.len(), "ids": ids, "pieces": pieces });
        println!("{v}");
    } else if a.ids {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("[{}]", list.join(", "));
    } else {
        for &id in &ids {
            let piece = String::from_utf8_lossy(&tok.token_to_bytes(id)).into_owned();
            println!("{id:>6} -> '{piece}'");
        }
    }
    Ok(())
}
