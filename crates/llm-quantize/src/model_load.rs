//! Loading a model and its tokenizer for `eval`, `generate` and `serve`: the MODEL
//! argument is resolved like `quantize`'s (folder, GGUF file or Hub id), the weights go
//! to the engine, the tokenizer comes from `tokenizer.json` or the GGUF vocabulary.

use crate::progress::log;
use llmq_engine::{EngineError, Model, WeightSource};
use llmq_pipeline::source::{resolve, ResolvedModel};
use llmq_pipeline::{NoProgress, PipelineError};
use llmq_tokenizer::Tokenizer;
use std::time::Instant;

pub use llmq_runtime::LoadedModel;

/// Map an engine error to the CLI contract's exit codes.
pub fn engine_error(e: EngineError) -> PipelineError {
    match &e {
        EngineError::UnsupportedArch(_) => PipelineError::unsupported(
            e.to_string(),
            "Run a model of a supported architecture, or check `llm-quantize info MODEL`",
        ),
        EngineError::UnsupportedValue { .. } => PipelineError::unsupported(
            e.to_string(),
            "This model uses a setting llm-quantize does not compute yet; run it with transformers or llama.cpp",
        ),
        EngineError::UnsupportedType { .. } => PipelineError::unsupported(
            e.to_string(),
            "Re-quantize the model to a type llm-quantize runs (e.g. `quantize MODEL gguf -q Q4_K_M`), or run it with llama.cpp",
        ),
        EngineError::ContextOverflow { .. } => PipelineError::invalid(
            e.to_string(),
            "Shorten the input or lower --max-tokens / --max-length",
        ),
        EngineError::Source(_) => PipelineError::validation(
            e.to_string(),
            "Check that the model files are complete and readable",
        ),
        _ => PipelineError::validation(
            e.to_string(),
            "The model files are inconsistent; re-download or re-convert the model",
        ),
    }
}

/// Resolve and load `model` (tokenizer included).
pub fn load(model: &str, token: Option<String>, quiet: bool) -> Result<LoadedModel, PipelineError> {
    let t0 = Instant::now();
    let resolved = resolve(model, token, &NoProgress)?;
    let src = match &resolved {
        ResolvedModel::HfDir(d) => WeightSource::open_hf(d),
        ResolvedModel::GgufFile(f) => WeightSource::open_gguf(f),
    };
    let src = src.map_err(engine_error)?;
    let tokenizer = match (&resolved, &src) {
        (ResolvedModel::HfDir(d), _) => Tokenizer::from_hf_dir(d),
        (_, WeightSource::Gguf(f)) => Tokenizer::from_gguf(f),
        _ => unreachable!("a GGUF path gives a GGUF source"),
    }
    .map_err(|e| tokenizer_error(model, e))?;
    let m = Model::load(&src).map_err(engine_error)?;
    let name = llmq_pipeline::source::display_name(model);
    if !quiet {
        log(&format!(
            "loaded {name}: {:?}, {} layers, hidden {}, vocab {} in {:.1} s",
            m.hp.arch,
            m.hp.n_layer,
            m.hp.n_embd,
            m.n_vocab(),
            t0.elapsed().as_secs_f64()
        ));
    }
    Ok(LoadedModel {
        name,
        model: m,
        tokenizer,
    })
}

fn tokenizer_error(model: &str, e: llmq_tokenizer::TokenizerError) -> PipelineError {
    PipelineError::validation(
        format!("cannot load the tokenizer of {model}: {e}"),
        "A model folder needs tokenizer.json; a GGUF file needs its tokenizer.ggml.* metadata",
    )
}

/// Resolve `model` and load only its tokenizer (no weights).
pub fn load_tokenizer(model: &str, token: Option<String>) -> Result<Tokenizer, PipelineError> {
    match resolve(model, token, &NoProgress)? {
        ResolvedModel::HfDir(d) => Tokenizer::from_hf_dir(&d),
        ResolvedModel::GgufFile(f) => {
            let file = llmq_formats::gguf::GgufFile::open(&f).map_err(|e| {
                PipelineError::validation(
                    format!("cannot read {}: {e}", f.display()),
                    "Check that the GGUF file is complete",
                )
            })?;
            Tokenizer::from_gguf(&file)
        }
    }
    .map_err(|e| tokenizer_error(model, e))
}
